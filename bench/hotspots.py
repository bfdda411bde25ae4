"""Profile a server under the streaming benchmark with py-spy and print where its CPU time goes.

``python bench/hotspots.py --server agentapp --runs 20`` starts the server, attaches ``py-spy record`` to it
while a client streams ``--runs`` 2,000-token answers (or ``--prompt Hello`` answers), then prints the
functions with the largest self and inclusive share of samples. Needs ``pip install py-spy``.
``--server fanout-core --watchers 1000`` (or ``fanout-pubsub``) profiles both processes of benchmark 5 while
one run streams to the watchers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts bench/ first on the path; the repo root goes there instead, so that bench's
# modules are imported as ``bench.*`` and never shadow a top-level module.
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT / "bench"]

from bench import clients, fanout  # noqa: E402
from bench.baseline import STREAM_PROMPT  # noqa: E402
from bench.servers import BIN, HOST, BenchError, ServerPool  # noqa: E402

RUN_TIMEOUT = 60.0
SPY_START_SECONDS = 1.0
SPY_STOP_TIMEOUT = 30.0


async def _drive(server_name: str, url: str, prompt: str, runs: int, concurrent: int = 1) -> float:
    """Stream ``runs`` rounds of ``concurrent`` answers at once (bare: one at a time); return the wall time."""
    start = time.perf_counter()
    if server_name == "bare":
        for _ in range(runs):
            socket = await clients.open_socket(url.replace("http://", "ws://") + "/")
            try:
                await clients.bare_stream(socket, prompt, RUN_TIMEOUT)
            finally:
                await socket.close()
        return time.perf_counter() - start
    cookie = await clients.session_cookie(url)
    for _ in range(runs):
        sockets = [await clients.open_conversation(url, cookie) for _ in range(concurrent)]
        try:
            await asyncio.gather(*(clients.agentapp_stream(socket, prompt, RUN_TIMEOUT) for socket in sockets))
        finally:
            await asyncio.gather(*(socket.close() for socket in sockets))
    return time.perf_counter() - start


def _read_stacks(collapsed: Path) -> list[tuple[str, list[str], int]]:
    """(thread, frames outermost first, samples) per line of py-spy's collapsed output with ``--threads``."""
    stacks = []
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            thread, *frames = stack.split(";")
            stacks.append((thread.split(": ", 1)[-1], frames, int(count_text)))
    return stacks


def summarize(collapsed: Path, top: int) -> str:
    """Samples per thread, then the main thread's (the event loop's) top functions by self and inclusive share."""
    stacks = _read_stacks(collapsed)
    threads: Counter[str] = Counter()
    for thread, _, count in stacks:
        threads[thread.split("_")[0]] += count
    total = sum(threads.values()) or 1
    lines = [f"{total} samples: " + ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in threads.most_common())]
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    main = 0
    for thread, frames, count in stacks:
        if thread != "MainThread" or not frames or frames[-1].startswith("EpollSelector.select"):
            continue  # other threads, and the event loop waiting for work
        main += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    main = main or 1
    lines += ["", f"event loop, busy samples only ({main}): self %   function (file:line)"]
    lines += [f"{100 * n / main:6.1f}   {frame}" for frame, n in own.most_common(top)]
    lines += ["", "incl %   function (file:line)"]
    lines += [f"{100 * n / main:6.1f}   {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "agentapp functions, incl %"]
    ours = [(frame, n) for frame, n in inclusive.most_common() if "(agentapp/" in frame]
    lines += [f"{100 * n / main:6.1f}   {frame}" for frame, n in ours[:top]]
    return "\n".join(lines)


def _record(spy: str, pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    argv = [spy, "record", "--format", "raw", "--threads", "--rate", str(rate), "-o", str(out), "-p", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(recorder: subprocess.Popen[bytes]) -> None:
    recorder.send_signal(signal.SIGINT)
    try:
        recorder.wait(timeout=SPY_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        recorder.kill()
        recorder.wait(timeout=SPY_STOP_TIMEOUT)


def profile_fanout(spy: str, layer: str, watchers: int, rate: int, top: int, workdir: Path) -> None:
    """Benchmark 5 once, with py-spy on both server processes from the prompt until every watcher is done."""
    outs = [ROOT / "artifacts" / f"profile-fanout-{layer}-{index}.collapsed" for index in (1, 2)]

    @contextlib.contextmanager
    def spying() -> Iterator[None]:
        recorders = [_record(spy, server.pid, out, rate) for server, out in zip(servers, outs, strict=True)]
        try:
            time.sleep(SPY_START_SECONDS)  # py-spy needs a moment to attach before the load starts
            yield
        finally:
            for recorder in recorders:
                _stop(recorder)

    with ServerPool(workdir) as pool:
        (redis_server,) = pool.get("redis-fanout")
        servers = pool.get(f"agentapp-fanout-{layer}-1", f"agentapp-fanout-{layer}-2")
        client = redis.Redis(host=HOST, port=redis_server.port, socket_timeout=10)
        fanout.raise_open_files(2 * watchers + 1024)
        try:
            item = asyncio.run(fanout.measure_one(servers, client, layer, watchers, spying))
        finally:
            client.close()
    print(
        f"{layer} layer, M={watchers}: p50/p99 {item['latency_p50_ms']:.1f}/{item['latency_p99_ms']:.1f} ms, "
        f"{item['finished']}/{watchers} finished, {item['errors']} errors; server CPU "
        f"{'/'.join(f'{value:.1f}' for value in item['server_cpu_s'])} s in {item['elapsed_s']:.2f} s"
    )
    for index, out in enumerate(outs, 1):
        print(f"\n=== process {index} ({'origin' if index == 1 else 'watchers only'}): stacks in {out}")
        print(summarize(out, top))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--server",
        choices=["bare", "agentapp", "agentapp-redis", "agentapp-paced", "fanout-core", "fanout-pubsub"],
        default="agentapp",
    )
    parser.add_argument("--watchers", type=int, default=1000, help="fan-out only: sockets watching the run")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=1, help="conversations streaming at once (agentapp only)")
    parser.add_argument("--prompt", default=STREAM_PROMPT)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if spy is None:
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="agentapp-profile-"))
    if args.server.startswith("fanout-"):
        try:
            profile_fanout(spy, args.server.removeprefix("fanout-"), args.watchers, args.rate, args.top, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    out = ROOT / "artifacts" / f"profile-{args.server}.collapsed"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ServerPool(workdir) as pool:
            # The paced servers are named by layer and N (bench/servers.py): profile the in-memory one.
            name = f"agentapp-paced-memory-{args.concurrent}" if args.server == "agentapp-paced" else args.server
            (server,) = pool.get(name)
            asyncio.run(_drive(args.server, server.url, args.prompt, 2))  # warm-up
            recorder = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--format",
                    "raw",
                    "--threads",
                    "--rate",
                    str(args.rate),
                    "-o",
                    str(out),
                    "-p",
                    str(server.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                time.sleep(SPY_START_SECONDS)  # py-spy needs a moment to attach before the load starts
                elapsed = asyncio.run(_drive(args.server, server.url, args.prompt, args.runs, args.concurrent))
            finally:
                _stop(recorder)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    answers = args.runs * (args.concurrent if args.server != "bare" else 1)
    print(f"{answers} answers to {args.prompt!r} on {args.server} in {elapsed:.2f} s; stacks in {out}")
    print(summarize(out, args.top))
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit, so every ``finally`` runs and the servers started so far are stopped."""
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
