"""Benchmark 8: the same prompts run in the web process (a) and on a worker process (b), on PostgreSQL and Redis.

(a) one daphne process on the Redis core layer, no ``WORKER_CHANNEL``: it runs the agents of its sockets' prompts.
(b) the same daphne process with ``WORKER_CHANNEL`` set, plus one ``manage.py agentapp_worker``: the web process
stores each prompt as a queued run and rings the channel, the worker runs it and streams its frames to the
conversation's group, so the asker first gets ``run_queued`` and then every frame through the group (the design
being measured). Measured: runs started per second (N prompts at once, each on its own conversation), first-token
latency of sequential single prompts, and the server CPU (web process apart from worker) while N sockets each stream
a paced run; each figure of (b) beside (a)'s of the same harness run, with their ratio.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import clients, concurrency
from bench.baseline import HELLO_PROMPT
from bench.cpu import CpuMeter
from bench.fanout import raise_open_files, wait_quiet
from bench.servers import Server, ServerPool
from bench.stats import percentile, ratio

ARRANGEMENTS = ("inprocess", "workers")
RUN_TIMEOUT = 30.0
# Slowest rate of run starts (1) and (3) wait for, in runs/s: their deadlines grow by N / this, so that the streaming
# CPU of both arrangements covers the same N completed answers (one worker starts runs more slowly than a web process).
SLOWEST_STARTS_PER_SECOND = 5.0


def _names(arrangement: str, tokens_per_second: int) -> list[str]:
    """The pool's names of an arrangement's processes: the web process first, then the worker (if any)."""
    if arrangement == "inprocess":
        return [f"agentapp-workers-inprocess-{tokens_per_second}"]
    return [f"agentapp-workers-web-{tokens_per_second}", f"agentapp-workers-worker-{tokens_per_second}"]


def _stop(pool: ServerPool, names: list[str]) -> None:
    for name in names:
        if name in pool.servers:
            pool.stop(name)


### One run, as its asker sees it ###


@dataclass
class Started:
    """One prompt's run: when ``run_queued`` and ``run_started`` came (seconds after ``t0``), run ids, answer."""

    queued: float | None = None
    started: float | None = None
    queued_run_id: str = ""
    run_id: str = ""
    tokens: int = 0
    chars: int = 0
    status: str = ""
    error: str = ""


async def read_run(socket: Any, prompt: str, t0: float, timeout: float) -> Started:
    """Send the prompt, note when its run was queued and started, and read the answer until ``run_finished``."""
    seen = Started()
    async with asyncio.timeout(timeout):
        await socket.send(json.dumps({"type": "prompt", "prompt": prompt}))
        for _ in range(clients.MAX_FRAMES):
            frame: dict[str, Any] = json.loads(await socket.recv())
            now = time.perf_counter() - t0
            kind = frame.get("type")
            if kind == "run_queued":
                seen.queued, seen.queued_run_id = now, str(frame.get("run_id"))
            elif kind == "run_started":
                seen.started, seen.run_id = now, str(frame.get("run_id"))
            elif kind == "data":
                seen.tokens += clients.carried(frame)
                seen.chars += len(frame["data"])
            elif kind == "error":
                seen.error = f"{frame.get('code')}: {frame.get('message')}"
                if not frame.get("run_id"):
                    seen.status = "refused"
                    break
            elif kind == "run_finished":
                seen.status = str(frame.get("status"))
                break
    return seen


def check_started(arrangement: str, seen: Started, expected: clients.Timing) -> str:
    """What is wrong with one run (empty when nothing): its end, its answer, its frames in the arrangement's order."""
    if seen.status != "completed" or seen.error:
        return f"status {seen.status!r} {seen.error}".strip()
    if (seen.tokens, seen.chars) != (expected.tokens, expected.chars):
        return (
            f"{seen.tokens} tokens, {seen.chars} chars; Strands in process answers {expected.tokens}, {expected.chars}"
        )
    if seen.started is None:
        return "no run_started"
    if arrangement == "workers":
        if seen.queued is None or seen.queued > seen.started or seen.queued_run_id != seen.run_id:
            return f"run_queued {seen.queued_run_id or 'missing'} not before run_started {seen.run_id}"
    elif seen.queued is not None:
        return "run_queued without workers"
    return ""


### (1) runs started per second ###


async def measure_starts(server: Server, arrangement: str, n: int, expected: clients.Timing) -> dict[str, Any]:
    """N sockets, each on a new conversation, send a prompt at once; time from the first send to each run_started."""
    cookie = await clients.session_cookie(server.url)
    sockets, errors = await concurrency._open_all(server.url, cookie, n)
    timeout = RUN_TIMEOUT + n / SLOWEST_STARTS_PER_SECOND
    try:
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(
            *(read_run(socket, HELLO_PROMPT, t0, timeout) for socket in sockets), return_exceptions=True
        )
    finally:
        await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    runs = [item for item in outcomes if isinstance(item, Started)]
    errors += [f"run: {type(item).__name__}: {item}" for item in outcomes if isinstance(item, BaseException)]
    errors += [
        f"run: {problem}" for problem in (check_started(arrangement, seen, expected) for seen in runs) if problem
    ]
    started = [seen.started for seen in runs if seen.started is not None]
    queued = [seen.queued for seen in runs if seen.queued is not None]
    last = max(started, default=float("nan"))
    return {
        "n": n,
        "started": len(started),
        "errors": len(errors),
        "error_samples": errors[:5],
        "runs_per_s": len(started) / last if started and last > 0 else float("nan"),
        "last_started_s": last,
        "started_p50_ms": percentile(started, 50) * 1000,
        "started_p99_ms": percentile(started, 99) * 1000,
        "queued_p50_ms": percentile(queued, 50) * 1000,
        "queued_p99_ms": percentile(queued, 99) * 1000,
    }


### (2) first-token latency ###


async def first_token(server: Server, cookie: str) -> clients.Timing:
    """One prompt on a new conversation (connecting is not timed): the clock runs from the send to the first text."""
    socket = await clients.open_conversation(server.url, cookie)
    try:
        return await clients.agentapp_stream(socket, HELLO_PROMPT, RUN_TIMEOUT)
    finally:
        await socket.close()


async def measure_first_tokens(webs: dict[str, Server], runs: int, expected: clients.Timing) -> dict[str, Any]:
    """One warm-up, then ``runs`` prompts on each arrangement, interleaved run by run."""
    cookies = {name: await clients.session_cookie(server.url) for name, server in webs.items()}
    values: dict[str, list[float]] = {name: [] for name in webs}
    errors: list[str] = []
    for index in range(runs + 1):
        for name, server in webs.items():
            timing = await first_token(server, cookies[name])
            if timing.status != "completed" or timing.first_token is None or timing.chars != expected.chars:
                errors.append(f"{name} run {index}: status {timing.status!r}, {timing.chars} chars {timing.error}")
            elif index:  # run 0 is a warm-up
                values[name].append(timing.first_token)
    out: dict[str, Any] = {"runs": runs, "errors": errors}
    for name, measured in values.items():
        out[name] = {
            "runs": len(measured),
            "p50_ms": percentile(measured, 50) * 1000,
            "p99_ms": percentile(measured, 99) * 1000,
        }
    return out


### (3) server CPU while N sockets stream ###


def _stream_timeout(n: int) -> float:
    """Benchmark 4's deadline for N paced answers at once, plus the time to start N runs at the slowest rate."""
    return concurrency._timeout(n) + n / SLOWEST_STARTS_PER_SECOND


async def measure_streaming(servers: list[Server], arrangement: str, n: int) -> dict[str, Any]:
    """N sockets, each on a new conversation, stream one paced 200-token answer at once; the CPU of each process."""
    web = servers[0]
    meters = [CpuMeter(server.pid) for server in servers]
    cookie = await clients.session_cookie(web.url)
    warm = await clients.open_conversation(web.url, cookie)
    try:
        await clients.agentapp_stream(warm, HELLO_PROMPT, RUN_TIMEOUT)
    finally:
        await warm.close()
    sockets, errors = await concurrency._open_all(web.url, cookie, n)
    try:
        await wait_quiet(meters)
        client = CpuMeter()
        cpu_before, client_before = [meter.read() for meter in meters], client.read()
        start = time.perf_counter()
        outcomes = await asyncio.gather(
            *(clients.agentapp_stream(socket, concurrency.PROMPT, _stream_timeout(n)) for socket in sockets),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - start
        cpu = [meter.read() - was for meter, was in zip(meters, cpu_before, strict=True)]
        client_cpu = client.read() - client_before
    finally:
        await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    timings, stream_errors = concurrency._outcomes(outcomes, stamped=False)
    errors += stream_errors
    tokens = sum(timing.tokens for timing in timings)
    frames = sum(timing.frames for timing in timings)
    firsts = [timing.first_token for timing in timings if timing.first_token is not None]
    return {
        "n": n,
        "completed": sum(1 for t in timings if t.status == "completed" and t.tokens == concurrency.TOKENS),
        "errors": len(errors),
        "error_samples": errors[:5],
        "elapsed_s": elapsed,
        "ideal_s": concurrency.TOKENS / concurrency.TOKENS_PER_SECOND,
        "web_cpu_s": cpu[0],
        "worker_cpu_s": cpu[1] if len(cpu) > 1 else float("nan"),
        "client_cpu_s": client_cpu,
        "frames": frames,
        "data_frames": sum(timing.data_frames for timing in timings),
        "frames_per_s": frames / elapsed if elapsed else float("nan"),
        "tokens_per_s": tokens / elapsed if elapsed else float("nan"),
        "web_cpu_us_per_token": cpu[0] / tokens * 1e6 if tokens else float("nan"),
        "first_token_p50_ms": percentile(firsts, 50) * 1000,
        "first_token_p99_ms": percentile(firsts, 99) * 1000,
    }


### The benchmark ###


def _ratios(results: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    return {key: ratio(results["workers"][key], results["inprocess"][key]) for key in keys}


async def measure(
    pool: ServerPool, starts: int, ttft_runs: int, streams: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Unpaced processes of both arrangements for (1) and (2), then paced ones, one arrangement at a time, for (3)."""
    raise_open_files(2 * max(starts, streams) + 1024)
    expected = await clients.in_process(HELLO_PROMPT, RUN_TIMEOUT)
    names = {arrangement: _names(arrangement, 0) for arrangement in ARRANGEMENTS}
    paced = {arrangement: _names(arrangement, concurrency.TOKENS_PER_SECOND) for arrangement in ARRANGEMENTS}
    out: dict[str, Any] = {"servers": {"unpaced": names, "paced": paced}, "starts": {}, "streaming": {}}
    try:
        servers = {arrangement: pool.get(*names[arrangement]) for arrangement in ARRANGEMENTS}
        webs = {arrangement: servers[arrangement][0] for arrangement in ARRANGEMENTS}
        out["first_token"] = await measure_first_tokens(webs, ttft_runs, expected)
        log(f"workers: first token done at {time.strftime('%H:%M:%S')}")
        for arrangement in ARRANGEMENTS:
            out["starts"][arrangement] = await measure_starts(webs[arrangement], arrangement, starts, expected)
            log(f"workers: {arrangement} {starts} starts done at {time.strftime('%H:%M:%S')}")
    finally:
        for arrangement in ARRANGEMENTS:
            _stop(pool, names[arrangement])
    for arrangement in ARRANGEMENTS:
        try:
            measured = await measure_streaming(pool.get(*paced[arrangement]), arrangement, streams)
        finally:
            _stop(pool, paced[arrangement])
        out["streaming"][arrangement] = measured
        log(f"workers: {arrangement} {streams} streams done at {time.strftime('%H:%M:%S')}")
    first = out["first_token"]
    out["ratios"] = {
        "runs_per_s": ratio(out["starts"]["workers"]["runs_per_s"], out["starts"]["inprocess"]["runs_per_s"]),
        "started_p50": ratio(out["starts"]["workers"]["started_p50_ms"], out["starts"]["inprocess"]["started_p50_ms"]),
        "started_p99": ratio(out["starts"]["workers"]["started_p99_ms"], out["starts"]["inprocess"]["started_p99_ms"]),
        "first_token_p50": ratio(first["workers"]["p50_ms"], first["inprocess"]["p50_ms"]),
        "first_token_p99": ratio(first["workers"]["p99_ms"], first["inprocess"]["p99_ms"]),
        **_ratios(out["streaming"], ("web_cpu_s", "web_cpu_us_per_token", "frames_per_s", "tokens_per_s")),
    }
    out.update(
        hello_prompt=HELLO_PROMPT,
        stream_prompt=concurrency.PROMPT,
        tokens_per_second=concurrency.TOKENS_PER_SECOND,
        tokens=concurrency.TOKENS,
    )
    return out
