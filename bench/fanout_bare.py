"""Benchmark 5's bare anchor: M watchers of a bare ``group_send`` stream (``bench/bare_fanout.py``) over processes.

Measured as agentapp's fan-out is (``bench/fanout.py``): the origin socket on process 1 sends the prompt, the
watchers alternate between the processes, delivery latency is a watcher's arrival minus the origin's for the
same ``seq``, and the servers' CPU is divided by the frames the watchers read.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import clients
from bench.cpu import CpuMeter
from bench.fanout import (
    CONNECT_CONCURRENCY,
    MAX_FRAMES,
    PROMPT,
    TOKENS,
    TOKENS_PER_SECOND,
    Seen,
    _check,
    _timeout,
    per_watcher_frame,
    wait_quiet,
)
from bench.servers import Server
from bench.stats import percentile

GROUP_PATH = "/bench/"


async def open_member(base_url: str) -> Any:
    """A socket in the group, once its ``joined`` frame came."""
    socket = await clients.open_socket(base_url.replace("http://", "ws://", 1) + GROUP_PATH)
    try:
        async with asyncio.timeout(clients.CONNECT_TIMEOUT):
            hello = await socket.recv()
    except BaseException:
        await socket.close()
        raise
    if hello != "joined":
        await socket.close()
        raise RuntimeError(f"expected a joined frame, got {str(hello)[:200]}")
    return socket


async def read_bare(socket: Any, deadline: float) -> Seen:
    """Read ``"<seq> <deltas>\\n<text>"`` frames until ``"<seq> done"`` or the deadline (loop time)."""
    seen = Seen()
    try:
        async with asyncio.timeout_at(deadline):
            for _ in range(MAX_FRAMES):
                raw = await socket.recv()
                now = time.perf_counter()
                seen.frames += 1
                head = str(raw).partition("\n")[0].split()
                seq = int(head[0])
                seen.arrivals[seq] = now
                if head[1] == "done":
                    seen.covered.append(seq)
                    seen.reached[seq] = now
                    seen.status = "completed"
                    return seen
                count = int(head[1])
                seen.covered.extend(range(seq - count + 1, seq + 1))
                seen.reached.update(dict.fromkeys(range(seq - count + 1, seq + 1), now))
                seen.tokens += count
            seen.error = f"no done frame within {MAX_FRAMES} frames"
    except TimeoutError:
        seen.error = "no done frame before the deadline"
    except Exception as exc:
        seen.error = f"{type(exc).__name__}: {exc}"
    return seen


async def measure_one(servers: list[Server], m: int, layer: str) -> dict[str, Any]:
    """Open the origin and M watchers, stream one answer through the group, and match what each watcher got."""
    meters = [CpuMeter(server.pid) for server in servers]
    origin = await open_member(servers[0].url)
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(index: int) -> tuple[Any, int]:
        async with limit:
            return await open_member(servers[index % len(servers)].url), index % len(servers)

    connect_start = time.perf_counter()
    opened = await asyncio.gather(*(one(index) for index in range(m)), return_exceptions=True)
    connect_s = time.perf_counter() - connect_start
    pairs = [item for item in opened if not isinstance(item, BaseException)]
    errors = [f"connect: {type(item).__name__}: {item}" for item in opened if isinstance(item, BaseException)]
    watchers, on = [socket for socket, _ in pairs], [index for _, index in pairs]
    try:
        settle_s = await wait_quiet(meters)
        client = CpuMeter()
        cpu_before, client_before = [meter.read() for meter in meters], client.read()
        deadline = asyncio.get_running_loop().time() + _timeout(m)
        readers = [asyncio.create_task(read_bare(socket, deadline)) for socket in watchers]
        start = time.perf_counter()
        await origin.send(PROMPT)
        origin_seen = await read_bare(origin, deadline)
        outcomes = await asyncio.gather(*readers)
        elapsed = time.perf_counter() - start
        cpu = [meter.read() - was for meter, was in zip(meters, cpu_before, strict=True)]
        client_cpu = client.read() - client_before
    finally:
        await asyncio.gather(origin.close(), *(socket.close() for socket in watchers), return_exceptions=True)
    by_server, run_errors, missing = _check(origin_seen, outcomes, on)
    latencies = [value for values in by_server for value in values]
    errors += run_errors
    return {
        "m": m,
        "layer": layer,
        "watchers_open": len(watchers),
        "finished": sum(1 for seen in outcomes if seen.status == "completed"),
        "errors": len(errors),
        "error_samples": errors[:5],
        "missing_frames": missing,
        "origin_frames": len(origin_seen.arrivals),
        "samples": len(latencies),
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "latency_max_ms": max(latencies, default=float("nan")) * 1000,
        "latency_p50_by_server_ms": [percentile(values, 50) * 1000 for values in by_server],
        "latency_p99_by_server_ms": [percentile(values, 99) * 1000 for values in by_server],
        "elapsed_s": elapsed,
        "ideal_s": TOKENS / TOKENS_PER_SECOND,
        "connect_s": connect_s,
        "settle_s": settle_s,
        "server_cpu_s": cpu,
        "client_cpu_s": client_cpu,
        **per_watcher_frame(cpu, outcomes),
    }
