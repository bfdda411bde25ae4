"""Benchmark 3b: time to first token after 1, 100, 1,000 and 10,000 stored messages in the conversation.

The messages are written straight into the server's database (``bench/seed.py``), one fresh conversation per
prompt, for the anonymous session the client then uses; the client opens ``ws/agent/<id>/`` on a live agentapp
server, reads the ``conversation`` frame (not timed, reported apart) and sends ``Hello``; the clock runs from
sending the prompt to the first ``data`` frame. Sizes are interleaved prompt by prompt, after one warm-up prompt
on a new conversation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench import clients, seed
from bench.baseline import HELLO_PROMPT
from bench.fanout import open_on
from bench.servers import ServerPool
from bench.stats import percentile, ratio

RUN_TIMEOUT = 30.0
SIZES = (1, 100, 1_000, 10_000)


def _summary(firsts: list[float], opens: list[float]) -> dict[str, Any]:
    return {
        "runs": len(firsts),
        "p50_ms": percentile(firsts, 50) * 1000,
        "p99_ms": percentile(firsts, 99) * 1000,
        "open_p50_ms": percentile(opens, 50) * 1000,
    }


async def measure(
    pool: ServerPool, runs: int, log: Callable[[str], None], sizes: tuple[int, ...] = SIZES
) -> dict[str, Any]:
    """Seed ``runs`` conversations per size, warm up on a new conversation, then prompt each stored one once,
    sizes interleaved."""
    (server,) = pool.get("agentapp-history")
    cookie = await clients.session_cookie(server.url)
    started = time.perf_counter()
    stored = seed.conversations(server.env["DATABASE_URL"], cookie, list(sizes), runs)
    seed_s = time.perf_counter() - started
    log(f"history: seeded {sum(size * runs for size in sizes):,} messages in {seed_s:.1f} s")
    warm = await clients.open_conversation(server.url, cookie)
    try:
        await clients.agentapp_stream(warm, HELLO_PROMPT, RUN_TIMEOUT)
    finally:
        await warm.close()
    firsts: dict[int, list[float]] = {size: [] for size in sizes}
    opens: dict[int, list[float]] = {size: [] for size in sizes}
    errors: list[str] = []
    for index in range(runs):
        for size in sizes:
            conversation_id = stored[size][index]
            try:
                before = time.perf_counter()
                socket, frame = await open_on(server.url, f"/ws/agent/{conversation_id}/", cookie)
                opened = time.perf_counter() - before
                try:
                    timing = await clients.agentapp_stream(socket, HELLO_PROMPT, RUN_TIMEOUT)
                finally:
                    await socket.close()
            except Exception as exc:
                errors.append(f"{size} messages, run {index}: {type(exc).__name__}: {exc}")
                continue
            if frame.get("conversation_id") != conversation_id:
                errors.append(f"{size} messages, run {index}: opened {frame.get('conversation_id')}")
            elif timing.first_token is None or timing.status != "completed":
                errors.append(f"{size} messages, run {index}: status {timing.status!r} {timing.error}".strip())
            else:
                firsts[size].append(timing.first_token)
                opens[size].append(opened)
    summaries = {str(size): _summary(firsts[size], opens[size]) for size in sizes}
    smallest, largest = str(min(sizes)), str(max(sizes))
    return {
        "prompt": HELLO_PROMPT,
        "sizes": list(sizes),
        "seed_s": seed_s,
        "results": summaries,
        "errors": errors,
        "largest_over_smallest_p50": ratio(summaries[largest]["p50_ms"], summaries[smallest]["p50_ms"]),
    }
