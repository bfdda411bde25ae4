"""Benchmark 4: N paced conversations at once on one daphne process (offline model at 50 tokens/s).

Each N gets a freshly started server, so its memory readings are not inflated by an earlier N. The server's
model writes each token's emit time as its text (``bench/stamped.py``), so the headline is the added latency
of each token, model emit to client receive. Also reported: inter-token gaps against the ideal 20 ms;
lateness, the k-th token's arrival minus when an unhindered model would have produced it (prompt sent +
(k+1) x 20 ms), which includes starting the run and the model's own slowdown; time to the first token;
throughput; errors; server RSS with 0 and N idle sockets and while streaming; server CPU per token. Before the
servers of each N, baseline (a) runs N plain agents at once in the harness process, for the lateness Strands alone
has, and the bare consumer (``bench/bare_consumer.py``, merged as agentapp's outbox merges, the model paced the
same) streams the N answers from a daphne process of its own, for the server CPU per token of a bare consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

from bench import clients
from bench.baseline import HELLO_PROMPT, build_agent
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
    """Gaps between consecutive tokens and each token's lateness against the ideal schedule, over all timings."""
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


def _outcomes(outcomes: list[Any], stamped: bool) -> tuple[list[clients.Timing], list[str]]:
    """The answers that came back, and what went wrong: exceptions, bad statuses, token or stamp counts."""
    timings = [outcome for outcome in outcomes if isinstance(outcome, clients.Timing)]
    errors = [f"stream: {type(item).__name__}: {item}" for item in outcomes if isinstance(item, BaseException)]
    for timing in timings:
        if timing.status != "completed" or timing.tokens != TOKENS:
            errors.append(f"run: status {timing.status!r}, {timing.tokens} tokens {timing.error}".strip())
        elif stamped and len(timing.delays) != TOKENS:
            errors.append(f"run: {len(timing.delays)} emit stamps for {TOKENS} tokens")
    return timings, errors


def _stream_figures(timings: list[clients.Timing]) -> dict[str, Any]:
    """Completed answers, and p50/p99 in ms of lateness and of the time to the first token."""
    _, lateness = _lateness_and_gaps(timings)
    firsts = [timing.first_token for timing in timings if timing.first_token is not None]
    return {
        "completed": sum(1 for timing in timings if timing.status == "completed" and timing.tokens == TOKENS),
        "first_token_p50_ms": percentile(firsts, 50) * 1000,
        "first_token_p99_ms": percentile(firsts, 99) * 1000,
        "lateness_p50_ms": percentile(lateness, 50) * 1000,
        "lateness_p99_ms": percentile(lateness, 99) * 1000,
    }


async def measure_baseline(n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Baseline (a): N fresh agents with the same paced model and prompt, iterated at once in this process."""
    await clients.in_process(HELLO_PROMPT, 30)  # warm-up, as each server gets one
    agents = [build_agent(TOKENS_PER_SECOND) for _ in range(n)]
    meter = CpuMeter()
    cpu_before = meter.read()
    start = time.perf_counter()
    outcomes = await asyncio.gather(
        *(clients.in_process(PROMPT, _timeout(n), agent=agent, keep_arrivals=True) for agent in agents),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - start
    cpu = meter.read() - cpu_before
    timings, errors = _outcomes(outcomes, stamped=False)
    log(f"concurrency: in-process baseline N={n} done at {time.strftime('%H:%M:%S')}")
    return {
        "n": n,
        **_stream_figures(timings),
        "errors": len(errors),
        "error_samples": errors[:5],
        "elapsed_s": elapsed,
        "ideal_s": TOKENS / TOKENS_PER_SECOND,
        "cpu_s": cpu,
    }


async def measure_bare(pool: ServerPool, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The bare consumer's anchor: N merged sockets on a paced bare server, one prompt each at once."""
    name = f"bare-paced-{n}"
    (server,) = pool.get(name)
    url = server.url.replace("http://", "ws://", 1) + "/?merge=1"
    try:
        meter = CpuMeter(server.pid)
        warm = await clients.open_socket(url)
        try:
            await clients.bare_stream(warm, HELLO_PROMPT, 30, merged=True)
        finally:
            await warm.close()
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one() -> Any:
            async with limit:
                return await clients.open_socket(url)

        opened = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        sockets = [item for item in opened if not isinstance(item, BaseException)]
        errors = [f"connect: {type(item).__name__}: {item}" for item in opened if isinstance(item, BaseException)]
        client = CpuMeter()
        cpu_before, client_before = meter.read(), client.read()
        start = time.perf_counter()
        try:
            outcomes = await asyncio.gather(
                *(
                    clients.bare_stream(socket, PROMPT, _timeout(n), merged=True, keep_arrivals=True)
                    for socket in sockets
                ),
                return_exceptions=True,
            )
        finally:
            elapsed = time.perf_counter() - start
            await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
        cpu, client_cpu = meter.read() - cpu_before, client.read() - client_before
    finally:
        pool.stop(name)
    timings, stream_errors = _outcomes(outcomes, stamped=False)
    errors += stream_errors
    tokens = sum(timing.tokens for timing in timings)
    log(f"concurrency: bare consumer N={n} done at {time.strftime('%H:%M:%S')}")
    return {
        "n": n,
        "server_name": name,
        "errors": len(errors),
        "error_samples": errors[:5],
        **_stream_figures(timings),
        "elapsed_s": elapsed,
        "ideal_s": TOKENS / TOKENS_PER_SECOND,
        "frames": sum(timing.data_frames for timing in timings),
        "server_cpu_s": cpu,
        "client_cpu_s": client_cpu,
        "server_cpu_us_per_token": cpu / tokens * 1e6 if tokens else float("nan"),
    }


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
                *(
                    clients.agentapp_stream(socket, PROMPT, timeout, keep_arrivals=True, stamped=True)
                    for socket in sockets
                ),
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
    timings, stream_errors = _outcomes(outcomes, stamped=True)
    errors += stream_errors
    gaps, _ = _lateness_and_gaps(timings)
    delays = [delay for timing in timings for delay in timing.delays]
    tokens = sum(timing.tokens for timing in timings)
    return {
        "n": n,
        "layer": layer,
        "server_name": name,
        "errors": len(errors),
        "error_samples": errors[:5],
        "added_p50_ms": percentile(delays, 50) * 1000,
        "added_p99_ms": percentile(delays, 99) * 1000,
        "added_max_ms": max(delays, default=float("nan")) * 1000,
        "added_min_ms": min(delays, default=float("nan")) * 1000,
        **_stream_figures(timings),
        "elapsed_s": elapsed,
        "ideal_s": TOKENS / TOKENS_PER_SECOND,
        "throughput_tokens_per_s": tokens / elapsed if elapsed else 0.0,
        "gap_p50_ms": percentile(gaps, 50) * 1000,
        "gap_p99_ms": percentile(gaps, 99) * 1000,
        "server_cpu_s": cpu,
        "client_cpu_s": client_cpu,
        "server_cpu_us_per_token": cpu / tokens * 1e6 if tokens else float("nan"),
        "frames": sum(timing.data_frames for timing in timings),
        "rss_zero_mb": rss_zero / 2**20,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_streaming_max_mb": max(samples, default=rss_idle) / 2**20,
        "rss_per_idle_connection_kb": (rss_idle - rss_zero) / n / 1024 if n else float("nan"),
        "server": server.command(),
    }


async def measure(pool: ServerPool, layers: list[str], counts: list[int], log: Callable[[str], None]) -> dict[str, Any]:
    """For each N: the in-process baseline, the bare consumer, then each layer in turn, each on its own server."""
    baselines = []
    bare = []
    results = []
    for n in counts:
        baselines.append(await measure_baseline(n, log))
        bare.append(await measure_bare(pool, n, log))
        for layer in layers:
            results.append(await measure_one(pool, layer, n, log))
            log(f"concurrency: {layer} N={n} done at {time.strftime('%H:%M:%S')}")
    return {
        "tokens_per_second": TOKENS_PER_SECOND,
        "tokens": TOKENS,
        "prompt": PROMPT,
        "baselines": baselines,
        "bare": bare,
        "results": results,
    }
