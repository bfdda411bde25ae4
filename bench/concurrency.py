"""Benchmark 4: N paced conversations at once on one daphne process (offline model at 50 tokens/s).

Each N gets a freshly started server, so its memory readings are not inflated by an earlier N. Reported:
inter-frame gaps against the ideal 20 ms; lateness, a proxy for added latency: the k-th token's arrival
minus when an unhindered model would have produced it (prompt sent + (k+1) x 20 ms), so it includes the
time to start the run; time to the first token; throughput; errors; and server RSS with 0 and N idle
sockets and while streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

from bench import clients
from bench.cpu import CpuMeter
from bench.servers import ServerPool
from bench.stats import percentile

TOKENS_PER_SECOND = 50
TOKENS = 200
PROMPT = f"Stream {TOKENS} tokens"
CONNECT_CONCURRENCY = 50
RSS_SAMPLE_SECONDS = 0.1


def _timeout(n: int) -> float:
    """How long the whole streaming phase may take: the ideal time, plus slack growing with N."""
    return TOKENS / TOKENS_PER_SECOND * 3 + 30 + n * 0.1


async def _open_all(url: str, cookie: str, n: int) -> tuple[list[Any], list[str]]:
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Any:
        async with limit:
            return await clients.open_conversation(url, cookie)

    opened = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    sockets = [item for item in opened if not isinstance(item, BaseException)]
    errors = [f"connect: {type(item).__name__}: {item}" for item in opened if isinstance(item, BaseException)]
    return sockets, errors


async def _sample_rss(meter: CpuMeter, samples: list[int], stop: asyncio.Event, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < deadline:
        samples.append(meter.rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_SECONDS)


def _lateness_and_gaps(timings: list[clients.Timing]) -> tuple[list[float], list[float]]:
    interval = 1 / TOKENS_PER_SECOND
    gaps: list[float] = []
    lateness: list[float] = []
    for timing in timings:
        arrivals = timing.arrivals
        if not arrivals or timing.first_token is None:
            continue
        sent = arrivals[0] - timing.first_token
        gaps.extend(later - earlier for earlier, later in itertools.pairwise(arrivals))
        lateness.extend(arrival - sent - (index + 1) * interval for index, arrival in enumerate(arrivals))
    return gaps, lateness


async def measure_one(pool: ServerPool, layer: str, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Start a paced server, open N conversations, stream one answer on each at once, stop the server."""
    name = f"agentapp-paced-{layer}-{n}"
    (server,) = pool.get(name)
    try:
        meter = CpuMeter(server.pid)
        cookie = await clients.session_cookie(server.url)
        warm = await clients.open_conversation(server.url, cookie)
        try:
            await clients.agentapp_stream(warm, "Hello", 30)
        finally:
            await warm.close()
        rss_zero = meter.rss()
        sockets, errors = await _open_all(server.url, cookie, n)
        log(f"concurrency: {len(sockets)}/{n} sockets open at {time.strftime('%H:%M:%S')}")
        rss_idle = meter.rss()
        samples: list[int] = []
        stop = asyncio.Event()
        timeout = _timeout(n)
        sampler = asyncio.create_task(_sample_rss(meter, samples, stop, timeout + 5))
        client = CpuMeter()
        cpu_before, client_before = meter.read(), client.read()
        start = time.perf_counter()
        try:
            outcomes = await asyncio.gather(
                *(clients.agentapp_stream(socket, PROMPT, timeout, keep_arrivals=True) for socket in sockets),
                return_exceptions=True,
            )
        finally:
            elapsed = time.perf_counter() - start
            stop.set()
            await sampler
            await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
        cpu, client_cpu = meter.read() - cpu_before, client.read() - client_before
    finally:
        pool.stop(name)
    timings = [outcome for outcome in outcomes if isinstance(outcome, clients.Timing)]
    errors += [f"stream: {type(item).__name__}: {item}" for item in outcomes if isinstance(item, BaseException)]
    for timing in timings:
        if timing.status != "completed" or timing.tokens != TOKENS:
            errors.append(f"run: status {timing.status!r}, {timing.tokens} tokens {timing.error}".strip())
    gaps, lateness = _lateness_and_gaps(timings)
    firsts = [timing.first_token for timing in timings if timing.first_token is not None]
    tokens = sum(timing.tokens for timing in timings)
    return {
        "n": n,
        "layer": layer,
        "server_name": name,
        "completed": sum(1 for timing in timings if timing.status == "completed" and timing.tokens == TOKENS),
        "errors": len(errors),
        "error_samples": errors[:5],
        "elapsed_s": elapsed,
        "ideal_s": TOKENS / TOKENS_PER_SECOND,
        "throughput_tokens_per_s": tokens / elapsed if elapsed else 0.0,
        "gap_p50_ms": percentile(gaps, 50) * 1000,
        "gap_p99_ms": percentile(gaps, 99) * 1000,
        "first_token_p50_ms": percentile(firsts, 50) * 1000,
        "first_token_p99_ms": percentile(firsts, 99) * 1000,
        "lateness_p50_ms": percentile(lateness, 50) * 1000,
        "lateness_p99_ms": percentile(lateness, 99) * 1000,
        "server_cpu_s": cpu,
        "client_cpu_s": client_cpu,
        "rss_zero_mb": rss_zero / 2**20,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_streaming_max_mb": max(samples, default=rss_idle) / 2**20,
        "rss_per_idle_connection_kb": (rss_idle - rss_zero) / n / 1024 if n else float("nan"),
        "server": server.command(),
    }


async def measure(pool: ServerPool, layers: list[str], counts: list[int], log: Callable[[str], None]) -> dict[str, Any]:
    """Measure each layer and N in turn, each on its own server."""
    results = []
    for layer in layers:
        for n in counts:
            results.append(await measure_one(pool, layer, n, log))
            log(f"concurrency: {layer} N={n} done at {time.strftime('%H:%M:%S')}")
    return {"tokens_per_second": TOKENS_PER_SECOND, "tokens": TOKENS, "prompt": PROMPT, "results": results}
