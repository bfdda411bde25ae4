"""Benchmark 1: text tokens per second of one 2,000-token answer after a tool call, eight ways, same run.

Cases are measured round-robin (one run of each, then the next round), so a burst of load from elsewhere on
the machine hits every case alike; the first round is a warm-up and is not counted. Each case sends either one
frame per text delta or merges the deltas that queue behind its writer (agentapp's rule); the client counts the
frames it receives, and the server's CPU per token is reported beside tokens/s.
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

# case -> (label, server); the server of a case ending in "m" is asked to merge with ``?merge=1``.
CASES: dict[str, tuple[str, str | None]] = {
    "a": ("Strands stream_async in process (ceiling)", None),
    "b": ("FastAPI StreamingResponse on uvicorn, HTTP body, one chunk per delta (the seed)", "fastapi"),
    "bm": ("FastAPI StreamingResponse on uvicorn, HTTP body, merged", "fastapi"),
    "c": ("bare Channels consumer on daphne, WebSocket, one frame per delta", "bare"),
    "cm": ("bare Channels consumer on daphne, WebSocket, merged", "bare"),
    "d": ("agentapp on daphne, SQLite + in-memory layer, merged (as shipped)", "agentapp"),
    "dp": ("agentapp on daphne, SQLite + in-memory layer, one frame per delta", "agentapp-unmerged"),
    "e": ("agentapp on daphne, SQLite + Redis layer, merged (as shipped)", "agentapp-redis"),
}
AGENTAPP_CASES = ("d", "dp", "e")
# Targets compare agentapp with each anchor under the same merge policy: (agentapp case, bare, FastAPI).
SAME_POLICY = {"merged": ("d", "cm", "bm"), "one frame per delta": ("dp", "c", "b")}


@dataclass
class CaseResult:
    """All counted runs of one case."""

    case: str
    label: str
    server: str | None
    tokens_per_second: list[float] = field(default_factory=list)
    frames_per_second: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    data_frames: list[int] = field(default_factory=list)
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
            "frames_per_second_median": median(self.frames_per_second),
            "frames_median": median(self.frames),
            "data_frames_median": median(self.data_frames),
            "server_cpu_ms_median": median(self.server_cpu_ms),
            # Summed over every counted answer: the CPU clock ticks in 10 ms steps, too coarse for one answer.
            "server_cpu_us_per_token": ratio(sum(self.server_cpu_ms) * 1000, len(self.server_cpu_ms) * STREAM_TOKENS),
            "client_cpu_ms_median": median(self.client_cpu_ms),
            "errors": self.errors,
        }


async def _one(case: str, servers: dict[str, Server], cookies: dict[str, str], http: Any) -> clients.Timing:
    """One answer of one case; connection setup (and, for agentapp, the conversation frame) is not timed."""
    if case == "a":
        return await clients.in_process(STREAM_PROMPT, RUN_TIMEOUT)
    merged = case.endswith("m")
    if case in ("b", "bm"):
        url = servers[case].url + ("/stream?merge=1" if merged else "/stream")
        return await clients.http_stream(http, url, STREAM_PROMPT, RUN_TIMEOUT)
    if case in ("c", "cm"):
        socket = await clients.open_socket(
            servers[case].url.replace("http://", "ws://") + ("/?merge=1" if merged else "/")
        )
        try:
            return await clients.bare_stream(socket, STREAM_PROMPT, RUN_TIMEOUT, merged=merged)
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
    if case not in ("b", "bm") and timing.tokens != STREAM_TOKENS:
        return f"{timing.tokens} tokens, expected {STREAM_TOKENS}"
    if expected_chars is not None and timing.chars != expected_chars:
        return f"{timing.chars} characters, expected {expected_chars}"
    return ""


async def measure(pool: ServerPool, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Warm up, then ``runs`` rounds over the cases; returns per-case summaries and same-policy ratios."""
    named = {case: server for case, (_, server) in CASES.items() if server}
    started = dict(zip(dict.fromkeys(named.values()), pool.get(*dict.fromkeys(named.values())), strict=True))
    servers = {case: started[server] for case, server in named.items()}
    cookies = {case: await clients.session_cookie(servers[case].url) for case in AGENTAPP_CASES}
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
                if case in ("b", "bm"):
                    timing.tokens = STREAM_TOKENS if timing.chars == expected_chars else 0
                problem = _check(case, timing, expected_chars)
                if problem:
                    results[case].errors.append(f"round {round_index}: {problem}")
                    continue
                if round_index == 0:
                    continue  # warm-up
                results[case].tokens_per_second.append(timing.tokens_per_second)
                results[case].frames_per_second.append(timing.frames_per_second)
                results[case].frames.append(timing.frames)
                results[case].data_frames.append(timing.data_frames)
                results[case].server_cpu_ms.append(cpu * 1000)
                results[case].client_cpu_ms.append(client_cpu * 1000)
            log(f"streaming: round {round_index}/{runs} done at {time.strftime('%H:%M:%S')}")
    summaries = {case: result.summary() for case, result in results.items()}
    a = summaries["a"]["tokens_per_second_median"]
    b = summaries["b"]["tokens_per_second_median"]
    for summary in summaries.values():
        summary["ratio_to_a"] = ratio(summary["tokens_per_second_median"], a)
        summary["ratio_to_b"] = ratio(summary["tokens_per_second_median"], b)
    return {
        "prompt": STREAM_PROMPT,
        "tokens": STREAM_TOKENS,
        "answer_chars": expected_chars,
        "runs": runs,
        "cases": summaries,
        "same_policy": {policy: _compare(summaries, *cases) for policy, cases in SAME_POLICY.items()},
    }


def _compare(summaries: dict[str, dict[str, Any]], ours: str, bare: str, fastapi: str) -> dict[str, Any]:
    """agentapp's case against the bare consumer and FastAPI under one merge policy: tokens/s and CPU per token."""

    def figure(case: str, key: str) -> float:
        return summaries[case][key]

    return {
        "cases": [ours, bare, fastapi],
        "tokens_per_second_over_bare": ratio(
            figure(ours, "tokens_per_second_median"), figure(bare, "tokens_per_second_median")
        ),
        "cpu_per_token_over_bare": ratio(
            figure(ours, "server_cpu_us_per_token"), figure(bare, "server_cpu_us_per_token")
        ),
        "tokens_per_second_over_fastapi": ratio(
            figure(ours, "tokens_per_second_median"), figure(fastapi, "tokens_per_second_median")
        ),
    }
