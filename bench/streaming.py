"""Benchmark 1: text tokens per second of one 2,000-token answer after a tool call, five ways, same run.

Cases are measured round-robin (one run of each, then the next round), so a burst of load from elsewhere on
the machine hits every case alike; the first round is a warm-up and is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import clients
from bench.baseline import STREAM_PROMPT, STREAM_TOKENS
from bench.cpu import CpuMeter
from bench.servers import Server, ServerPool
from bench.stats import median, ratio

RUN_TIMEOUT = 60.0

CASES: dict[str, tuple[str, str | None]] = {
    "a": ("Strands stream_async in process (ceiling)", None),
    "b": ("FastAPI StreamingResponse on uvicorn, HTTP body", "fastapi"),
    "c": ("bare Channels consumer on daphne, WebSocket", "bare"),
    "d": ("agentapp on daphne, SQLite + in-memory layer", "agentapp"),
    "e": ("agentapp on daphne, SQLite + Redis layer", "agentapp-redis"),
}


@dataclass
class CaseResult:
    """All counted runs of one case."""

    case: str
    label: str
    server: str | None
    tokens_per_second: list[float] = field(default_factory=list)
    server_cpu_ms: list[float] = field(default_factory=list)
    client_cpu_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "label": self.label,
            "server": self.server,
            "runs": len(self.tokens_per_second),
            "tokens_per_second_median": median(self.tokens_per_second),
            "tokens_per_second_all": [round(value, 1) for value in self.tokens_per_second],
            "server_cpu_ms_median": median(self.server_cpu_ms),
            "client_cpu_ms_median": median(self.client_cpu_ms),
            "errors": self.errors,
        }


async def _one(case: str, servers: dict[str, Server], cookies: dict[str, str], http: Any) -> clients.Timing:
    """One answer of one case; connection setup (and, for agentapp, the conversation frame) is not timed."""
    if case == "a":
        return await clients.in_process(STREAM_PROMPT, RUN_TIMEOUT)
    if case == "b":
        return await clients.http_stream(http, servers["b"].url + "/stream", STREAM_PROMPT, RUN_TIMEOUT)
    if case == "c":
        socket = await clients.open_socket(servers["c"].url.replace("http://", "ws://") + "/")
        try:
            return await clients.bare_stream(socket, STREAM_PROMPT, RUN_TIMEOUT)
        finally:
            await socket.close()
    socket = await clients.open_conversation(servers[case].url, cookies[case])
    try:
        return await clients.agentapp_stream(socket, STREAM_PROMPT, RUN_TIMEOUT)
    finally:
        await socket.close()


def _check(case: str, timing: clients.Timing, expected_chars: int | None) -> str:
    """What is wrong with an answer, or an empty string."""
    if timing.status != "completed":
        return f"status {timing.status!r} {timing.error}".strip()
    if case != "b" and timing.tokens != STREAM_TOKENS:
        return f"{timing.tokens} tokens, expected {STREAM_TOKENS}"
    if expected_chars is not None and timing.chars != expected_chars:
        return f"{timing.chars} characters, expected {expected_chars}"
    return ""


async def measure(pool: ServerPool, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Warm up, then ``runs`` rounds over the five cases; returns per-case summaries and ratios."""
    named = {case: server for case, (_, server) in CASES.items() if server}
    servers = dict(zip(named, pool.get(*named.values()), strict=True))
    cookies = {case: await clients.session_cookie(servers[case].url) for case in ("d", "e")}
    results = {case: CaseResult(case, label, server) for case, (label, server) in CASES.items()}
    meters = {case: CpuMeter(servers[case].pid) for case in CASES if case != "a"}
    client_meter = CpuMeter()
    expected_chars: int | None = None
    async with clients.http_client() as http:
        for round_index in range(runs + 1):
            for case in CASES:
                server_meter = meters.get(case, client_meter)
                cpu_before, client_before = server_meter.read(), client_meter.read()
                try:
                    timing = await _one(case, servers, cookies, http)
                except Exception as exc:
                    results[case].errors.append(f"round {round_index}: {type(exc).__name__}: {exc}")
                    continue
                cpu = server_meter.read() - cpu_before
                client_cpu = client_meter.read() - client_before
                if case == "a" and expected_chars is None:
                    expected_chars = timing.chars
                if case == "b":
                    timing.tokens = STREAM_TOKENS if timing.chars == expected_chars else 0
                problem = _check(case, timing, expected_chars)
                if problem:
                    results[case].errors.append(f"round {round_index}: {problem}")
                    continue
                if round_index == 0:
                    continue  # warm-up
                results[case].tokens_per_second.append(timing.tokens_per_second)
                results[case].server_cpu_ms.append(cpu * 1000)
                results[case].client_cpu_ms.append(client_cpu * 1000)
            log(f"streaming: round {round_index}/{runs} done at {time.strftime('%H:%M:%S')}")
    summaries = {case: result.summary() for case, result in results.items()}
    a = summaries["a"]["tokens_per_second_median"]
    b = summaries["b"]["tokens_per_second_median"]
    for summary in summaries.values():
        summary["ratio_to_a"] = ratio(summary["tokens_per_second_median"], a)
        summary["ratio_to_b"] = ratio(summary["tokens_per_second_median"], b)
    d, c = summaries["d"]["tokens_per_second_median"], summaries["c"]["tokens_per_second_median"]
    return {
        "prompt": STREAM_PROMPT,
        "tokens": STREAM_TOKENS,
        "answer_chars": expected_chars,
        "runs": runs,
        "cases": summaries,
        "d_over_c": ratio(d, c),
        "d_over_b": ratio(d, b),
    }
