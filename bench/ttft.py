"""Benchmark 3: time to first token of a direct answer, agentapp over a WebSocket vs ``stream_async`` in process.

agentapp's clock runs from sending the prompt frame to the first ``data`` frame (a new conversation each
run; connecting is not timed); the baseline's from calling ``stream_async`` to its first ``data`` event.
The two are interleaved run by run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench import clients
from bench.baseline import HELLO_PROMPT
from bench.servers import ServerPool
from bench.stats import percentile

RUN_TIMEOUT = 30.0


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "runs": len(values),
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": max(values) * 1000 if values else float("nan"),
    }


async def measure(pool: ServerPool, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One warm-up, then ``runs`` interleaved pairs; returns p50/p99 of each and the p50 overhead."""
    (server,) = pool.get("agentapp")
    cookie = await clients.session_cookie(server.url)
    baseline: list[float] = []
    agentapp: list[float] = []
    errors: list[str] = []
    for index in range(runs + 1):
        inline = await clients.in_process(HELLO_PROMPT, RUN_TIMEOUT)
        socket = await clients.open_conversation(server.url, cookie)
        try:
            remote = await clients.agentapp_stream(socket, HELLO_PROMPT, RUN_TIMEOUT)
        finally:
            await socket.close()
        if inline.first_token is None or remote.first_token is None or remote.status != "completed":
            errors.append(f"run {index}: no first token or status {remote.status!r} {remote.error}")
            continue
        if index:  # run 0 is a warm-up
            baseline.append(inline.first_token)
            agentapp.append(remote.first_token)
        if index % 50 == 0:
            log(f"ttft: {index}/{runs} at {time.strftime('%H:%M:%S')}")
    result = {"prompt": HELLO_PROMPT, "a": _summary(baseline), "agentapp": _summary(agentapp), "errors": errors}
    result["overhead_p50_ms"] = result["agentapp"]["p50_ms"] - result["a"]["p50_ms"]
    result["overhead_p99_ms"] = result["agentapp"]["p99_ms"] - result["a"]["p99_ms"]
    return result
