"""Benchmark 5 (benchmark 3 of the benchmark issue): one run watched by M sockets over several daphne processes.

Two (four for the widest case) paced daphne processes (offline model at 50 tokens/s) share one PostgreSQL
database and one Redis server of the harness's own, so that Redis's ``INFO commandstats`` counts agentapp's calls
and nobody else's. M watchers open the conversation (spread evenly over the processes) before one more socket,
the origin, on process 1 sends the prompt. The bare anchor (``bench/fanout_bare.py``) streams to as many watchers
with one ``group_send`` per window. Delivery latency of a frame = when a watcher received it minus when the
origin received the frame that carried the same ``seq`` (a watcher's merged ``data`` frame is matched by its last
``seq``), on one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from bench import clients
from bench.cpu import CpuMeter
from bench.servers import HOST, Server, ServerPool
from bench.stats import percentile

TOKENS_PER_SECOND = 50
TOKENS = 200
PROMPT = f"Stream {TOKENS} tokens"
CONNECT_CONCURRENCY = 50
# Redis calls are also counted over this quiet window before the prompt, to show what an idle cluster costs.
IDLE_WINDOW_SECONDS = 2.0
# The servers count as quiet when each used under this share of a core over QUIET_SAMPLE_SECONDS.
QUIET_CPU_SHARE = 0.1
QUIET_SAMPLE_SECONDS = 0.5
QUIET_LIMIT_SECONDS = 60.0
# Hard cap on frames one socket reads for one run.
MAX_FRAMES = 20_000
# Our own INFO calls are not agentapp's.
OWN_COMMANDS = ("info",)


def _timeout(m: int) -> float:
    """How long the run may take until the last watcher has run_finished: the ideal 4 s, plus slack growing with M."""
    return TOKENS / TOKENS_PER_SECOND * 3 + 30 + m * 0.06


def raise_open_files(needed: int) -> tuple[int, int]:
    """Raise this process's soft limit of open files to ``needed`` (within the hard limit); servers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


### Redis ###


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """``INFO commandstats`` as command -> (calls, usec), without our own INFO calls."""
    stats = client.info("commandstats")
    out = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name not in OWN_COMMANDS:
            out[name] = (int(value["calls"]), int(value["usec"]))
    return out


def stats_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    delta = {}
    for name, (calls, usec) in after.items():
        was_calls, was_usec = before.get(name, (0, 0))
        if calls - was_calls:
            delta[name] = (calls - was_calls, usec - was_usec)
    return dict(sorted(delta.items(), key=lambda item: -item[1][0]))


### Sockets ###


@dataclass
class Seen:
    """What one socket received of the run: arrival time per frame (by its last ``seq``) and per ``seq`` covered,
    the seqs covered, the text deltas, how it ended."""

    arrivals: dict[int, float] = field(default_factory=dict)
    reached: dict[int, float] = field(default_factory=dict)
    covered: list[int] = field(default_factory=list)
    frames: int = 0  # every frame read during the run, run frames or not
    tokens: int = 0
    status: str = ""
    error: str = ""


async def open_on(base_url: str, path: str, cookie: str) -> tuple[Any, dict[str, Any]]:
    """Open ``ws/agent/...`` on one server and read its ``conversation`` frame."""
    socket = await clients.open_socket(base_url.replace("http://", "ws://", 1) + path, cookie=cookie, origin=base_url)
    try:
        async with asyncio.timeout(clients.CONNECT_TIMEOUT):
            frame = json.loads(await socket.recv())
    except BaseException:
        await socket.close()
        raise
    if frame.get("type") != "conversation":
        await socket.close()
        raise RuntimeError(f"expected a conversation frame, got {str(frame)[:200]}")
    return socket, frame


async def read_run(socket: Any, deadline: float) -> Seen:
    """Read frames until ``run_finished`` or the deadline (monotonic), noting when each ``seq`` arrived."""
    seen = Seen()
    try:
        async with asyncio.timeout_at(deadline):
            for _ in range(MAX_FRAMES):
                raw = await socket.recv()
                now = time.perf_counter()
                seen.frames += 1
                frame: dict[str, Any] = json.loads(raw)
                seq = frame.get("seq")
                if not isinstance(seq, int):
                    continue  # not a run frame (presence frames are not asked for)
                seen.arrivals[seq] = now
                first = frame.get("seq_first", seq) if frame.get("type") == "data" else seq
                seen.covered.extend(range(first, seq + 1))
                seen.reached.update(dict.fromkeys(range(first, seq + 1), now))
                kind = frame.get("type")
                if kind == "data":
                    seen.tokens += seq - first + 1
                elif kind == "error":
                    seen.error = f"{frame.get('code')}: {frame.get('message')}"
                elif kind == "run_finished":
                    seen.status = str(frame.get("status"))
                    return seen
            seen.error = f"no run_finished within {MAX_FRAMES} frames"
    except TimeoutError:
        seen.error = "no run_finished before the deadline"
    except Exception as exc:
        seen.error = f"{type(exc).__name__}: {exc}"
    return seen


async def _open_watchers(
    servers: list[Server], conversation_id: str, cookie: str, m: int
) -> tuple[list[tuple[Any, int]], list[str]]:
    """M sockets on the conversation, alternating between the servers, CONNECT_CONCURRENCY at a time.

    Returns (socket, index of its server) for each socket opened, and the connection errors.
    """
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    path = f"/ws/agent/{conversation_id}/"

    async def one(index: int) -> Any:
        async with limit:
            socket, frame = await open_on(servers[index % len(servers)].url, path, cookie)
            if frame.get("conversation_id") != conversation_id:
                await socket.close()
                raise RuntimeError(f"watcher got conversation {frame.get('conversation_id')}")
            return socket, index % len(servers)

    opened = await asyncio.gather(*(one(index) for index in range(m)), return_exceptions=True)
    sockets = [item for item in opened if not isinstance(item, BaseException)]
    errors = [f"connect: {type(item).__name__}: {item}" for item in opened if isinstance(item, BaseException)]
    return sockets, errors


async def wait_quiet(meters: list[CpuMeter], limit: float = QUIET_LIMIT_SECONDS) -> float:
    """Wait until every server is nearly idle (the join and leave messages are handled); returns the wait."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = [meter.read() for meter in meters]
        await asyncio.sleep(QUIET_SAMPLE_SECONDS)
        used = [meter.read() - was for meter, was in zip(meters, before, strict=True)]
        if max(used) < QUIET_CPU_SHARE * QUIET_SAMPLE_SECONDS:
            break
    return time.monotonic() - start


### One measurement ###


def _check(origin: Seen, watchers: list[Seen], on: list[int]) -> tuple[list[list[float]], list[str], int]:
    """Latencies of the watchers' frames matched to the origin's, per server (``on[i]`` is watcher i's),
    the errors, and the number of frames missing."""
    errors: list[str] = []
    if origin.status != "completed" or origin.tokens != TOKENS:
        errors.append(f"origin: status {origin.status!r}, {origin.tokens} tokens {origin.error}".strip())
    expected = set(origin.reached)
    latencies: list[list[float]] = [[] for _ in range(max(on, default=0) + 1)]
    missing = 0
    for index, seen in enumerate(watchers):
        gone = expected - set(seen.covered)
        extra = len(seen.covered) - len(set(seen.covered))
        missing += len(gone)
        if seen.status != "completed" or seen.error or gone or extra:
            errors.append(
                f"watcher {index}: status {seen.status!r} {seen.error}; {len(gone)} frames missing, "
                f"{extra} repeated".replace("  ", " ")
            )
        for seq, arrival in seen.arrivals.items():
            if seq in origin.reached:
                latencies[on[index]].append(arrival - origin.reached[seq])
    return latencies, errors, missing


def per_watcher_frame(cpu: list[float], outcomes: list[Seen]) -> dict[str, Any]:
    """Frames the watchers read, and the servers' CPU (all processes) per watcher-frame in microseconds."""
    frames = sum(seen.frames for seen in outcomes)
    return {"watcher_frames": frames, "cpu_us_per_watcher_frame": sum(cpu) / frames * 1e6 if frames else math.nan}


async def measure_one(
    servers: list[Server],
    redis_client: redis.Redis,
    layer: str,
    m: int,
    around_run: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Open the origin's conversation and M watchers, stream one answer, and match what each watcher got.

    ``around_run`` is entered just before the prompt is sent and left once every watcher is done (a profiler).
    """
    meters = [CpuMeter(server.pid) for server in servers]
    cookie = await clients.session_cookie(servers[0].url)
    origin, hello = await open_on(servers[0].url, "/ws/agent/", cookie)
    conversation_id = hello["conversation_id"]
    connect_start = time.perf_counter()
    opened, errors = await _open_watchers(servers, conversation_id, cookie, m)
    watchers, on = [socket for socket, _ in opened], [index for _, index in opened]
    connect_s = time.perf_counter() - connect_start
    try:
        settle_s = await wait_quiet(meters)
        idle_before = command_stats(redis_client)
        await asyncio.sleep(IDLE_WINDOW_SECONDS)
        stats_before = command_stats(redis_client)
        idle = stats_delta(idle_before, stats_before)
        client = CpuMeter()
        cpu_before, client_before = [meter.read() for meter in meters], client.read()
        with around_run():
            timeout = _timeout(m)
            deadline = asyncio.get_running_loop().time() + timeout
            readers = [asyncio.create_task(read_run(socket, deadline)) for socket in watchers]
            start = time.perf_counter()
            await origin.send(json.dumps({"type": "prompt", "prompt": PROMPT}))
            origin_seen = await read_run(origin, deadline)
            outcomes = await asyncio.gather(*readers)
            elapsed = time.perf_counter() - start
        cpu = [meter.read() - was for meter, was in zip(meters, cpu_before, strict=True)]
        client_cpu = client.read() - client_before
        # Messages the run left in flight (the last group frames, the run log's expiry) are counted too.
        await wait_quiet(meters, 10.0)
        run_stats = stats_delta(stats_before, command_stats(redis_client))
        run_window_s = time.perf_counter() - start
    finally:
        await asyncio.gather(origin.close(), *(socket.close() for socket in watchers), return_exceptions=True)
    by_server, run_errors, missing = _check(origin_seen, outcomes, on)
    latencies = [value for values in by_server for value in values]
    errors += run_errors
    finished = sum(1 for seen in outcomes if seen.status == "completed")
    idle_calls = sum(calls for calls, _ in idle.values())
    return {
        "m": m,
        "layer": layer,
        "watchers_open": len(watchers),
        "finished": finished,
        "errors": len(errors),
        "error_samples": errors[:5],
        "missing_frames": missing,
        "origin_frames": len(origin_seen.arrivals),
        "watcher_frames_median": sorted(len(seen.arrivals) for seen in outcomes)[len(outcomes) // 2] if outcomes else 0,
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
        "redis_calls": sum(calls for calls, _ in run_stats.values()),
        "redis_usec": sum(usec for _, usec in run_stats.values()),
        "redis_by_command": {name: calls for name, (calls, _) in run_stats.items()},
        "redis_window_s": run_window_s,
        "redis_idle_calls_per_s": idle_calls / IDLE_WINDOW_SECONDS,
        "redis_idle_by_command": {name: calls for name, (calls, _) in idle.items()},
    }


def _log_item(log: Callable[[str], None], item: dict[str, Any], what: str) -> None:
    log(
        f"fanout: {what} {item['layer']} M={item['m']} over {item['processes']} done at {time.strftime('%H:%M:%S')}: "
        f"p50/p99 {item['latency_p50_ms']:.1f}/{item['latency_p99_ms']:.1f} ms, "
        f"{item['finished']}/{item['m']} finished, {item['errors']} errors, "
        f"connect {item['connect_s']:.1f} s, settle {item['settle_s']:.1f} s"
    )


async def _cluster(
    pool: ServerPool,
    names: list[str],
    counts: list[int],
    one: Callable[[list[Server], int], Any],
    log: Callable[[str], None],
    what: str,
) -> list[dict[str, Any]]:
    """Start the named processes not running yet, measure each M in turn with ``one(servers, m)``."""
    servers = pool.get(*names)
    items = []
    for m in counts:
        item = await one(servers, m)
        item.update(servers=names, processes=len(names))
        items.append(item)
        _log_item(log, item, what)
        with contextlib.suppress(Exception):
            await wait_quiet([CpuMeter(server.pid) for server in servers])
    return items


async def measure(
    pool: ServerPool,
    layers: list[str],
    counts: list[int],
    log: Callable[[str], None],
    bare_layers: tuple[str, ...] = (),
    wide: tuple[tuple[int, int], ...] = (),
    wide_layers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Per layer: agentapp on two fresh processes for each M; for ``wide_layers``, each ``wide`` (M, processes)
    case on the same two plus as many fresh ones as it needs; then, for ``bare_layers``, the bare group_send
    anchor at the largest two-process M on two processes of its own."""
    from bench import fanout_bare

    largest = max([*counts, *(m for m, _ in wide)], default=0)
    open_files = raise_open_files(2 * largest + 1024)
    (redis_server,) = pool.get("redis-fanout")
    redis_client = redis.Redis(host=HOST, port=redis_server.port, socket_timeout=10)
    results: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    try:
        redis_client.ping()
        for layer in layers:

            def agentapp_one(servers: list[Server], m: int, layer: str = layer) -> Any:
                return measure_one(servers, redis_client, layer, m)

            names = [f"agentapp-fanout-{layer}-{index}" for index in (1, 2)]
            try:
                results += await _cluster(pool, names, counts, agentapp_one, log, "agentapp")
                for m, processes in wide if layer in wide_layers else ():
                    names = [f"agentapp-fanout-{layer}-{index}" for index in range(1, processes + 1)]
                    results += await _cluster(pool, names, [m], agentapp_one, log, "agentapp")
            finally:
                for name in names:
                    if name in pool.servers:
                        pool.stop(name)
            if counts and layer in bare_layers:
                names = [f"bare-fanout-{layer}-1", f"bare-fanout-{layer}-2"]
                bare_one = functools.partial(fanout_bare.measure_one, layer=layer)
                try:
                    bare += await _cluster(pool, names, [max(counts)], bare_one, log, "bare")
                finally:
                    for name in names:
                        if name in pool.servers:
                            pool.stop(name)
    finally:
        redis_client.close()
    return {
        "tokens_per_second": TOKENS_PER_SECOND,
        "tokens": TOKENS,
        "prompt": PROMPT,
        "open_files": list(open_files),
        "redis": redis_server.command(),
        "results": results,
        "bare": bare,
    }
