"""Run every benchmark, print the results table and write the report (``python bench/run.py --quick|--full``).

``--quick`` is a smoke run (under 2 minutes) that fails when a benchmark cannot run or an answer comes back
wrong; it never judges speed. ``--full`` takes the measurements for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts bench/ first on the path; the repo root goes there instead, so that bench's
# modules are imported as ``bench.*`` and never shadow a top-level module.
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT / "bench"]

from bench import agui, concurrency, fanout, history, report, streaming, ttft, workers, writes  # noqa: E402
from bench.servers import POSTGRES_URL, REDIS_URL, ServerPool, fresh_postgres  # noqa: E402

BENCHMARKS = ("writes", "stream", "agui", "ttft", "history", "concurrency", "fanout", "workers")
# The benchmarks on the servers of benchmark 1 (stopped after the last of them that runs).
ON_STREAM_SERVERS = ("stream", "agui", "ttft")
PACKAGES = (
    "strands-agents", "Django", "channels", "channels-redis", "daphne", "Twisted", "autobahn",
    "uvicorn", "fastapi", "starlette", "websockets", "httpx", "psycopg", "redis", "psutil",
)  # fmt: skip
METHOD = Path(__file__).with_name("method.md")
FINDINGS = Path(__file__).with_name("findings.md")


@dataclass(frozen=True)
class Mode:
    """How much of each benchmark a mode runs."""

    stream_runs: int
    writes_runs: int
    ttft_runs: int
    history_runs: int  # prompts per history size (each on a conversation of its own), after one warm-up each
    concurrency: tuple[int, ...]
    layers: tuple[str, ...]
    fanout: tuple[int, ...]
    fanout_layers: tuple[str, ...]
    fanout_bare_layers: tuple[str, ...]  # layers of the bare group_send anchor (at the largest two-process M)
    fanout_wide: tuple[tuple[int, int], ...]  # (watchers, processes) beyond the two-process cases
    fanout_wide_layers: tuple[str, ...]  # a subset of fanout_layers: the wide case reuses their two processes
    workers_starts: int  # prompts sent at once, each on a conversation of its own
    workers_ttft_runs: int  # sequential prompts per arrangement, after one warm-up
    workers_streams: int  # sockets each streaming a paced run at once
    out: Path


MODES = {
    "quick": Mode(
        stream_runs=2,
        writes_runs=1,
        ttft_runs=20,
        history_runs=1,
        concurrency=(10,),
        layers=("memory", "redis"),
        fanout=(10,),
        fanout_layers=("core", "pubsub"),
        fanout_bare_layers=("pubsub",),
        fanout_wide=((20, 4),),
        fanout_wide_layers=("pubsub",),
        workers_starts=20,
        workers_ttft_runs=20,
        workers_streams=100,
        out=ROOT / "artifacts" / "benchmarks-quick.md",
    ),
    "full": Mode(
        stream_runs=15,
        writes_runs=5,
        ttft_runs=200,
        history_runs=15,
        concurrency=(10, 100, 500, 1000),
        layers=("memory", "redis"),
        fanout=(10, 100, 1000),
        fanout_layers=("core", "pubsub"),
        fanout_bare_layers=("core", "pubsub"),
        fanout_wide=((5000, 4),),
        fanout_wide_layers=("core", "pubsub"),
        workers_starts=200,
        workers_ttft_runs=200,
        workers_streams=1000,
        out=ROOT / "docs" / "benchmarks.md",
    ),
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout.strip("\n")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"


def _service_versions() -> dict[str, str]:
    versions = {}
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL.rsplit("/", 1)[0] + "/postgres", connect_timeout=3) as connection:
            versions["postgres"] = str(connection.execute("SHOW server_version").fetchone()[0])
    except Exception as exc:
        versions["postgres"] = f"unavailable ({type(exc).__name__})"
    try:
        import redis

        versions["redis"] = str(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).info()["redis_version"])
    except Exception as exc:
        versions["redis"] = f"unavailable ({type(exc).__name__})"
    return versions


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "missing"
    return {
        "nproc": _run(["nproc"]),
        "free": _run(["free", "-h"]),
        "python": platform.python_version(),
        "packages": packages,
        "load_start": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        **_service_versions(),
    }


def run_writes(pool: ServerPool, mode: Mode) -> dict[str, Any]:
    """Benchmark 2 on SQLite, then PostgreSQL; a database that fails is reported and the other still runs."""
    out: dict[str, Any] = {}
    for database, url_of in (("SQLite", lambda: pool.sqlite_url("writes")), ("PostgreSQL", fresh_postgres)):
        try:
            out[database] = writes.measure(url_of(), [10, 10_000], mode.writes_runs)
        except Exception as exc:
            out[database] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"writes: {database} done at {time.strftime('%H:%M:%S')}")
    return out


def run_all(mode_name: str, only: list[str], workdir: Path) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """Run the chosen benchmarks; returns results, failures and the command of every server started."""
    mode = MODES[mode_name]
    results: dict[str, Any] = {}
    failures: list[str] = []
    jobs: dict[str, Callable[[ServerPool], Any]] = {
        "writes": lambda pool: run_writes(pool, mode),
        "stream": lambda pool: asyncio.run(streaming.measure(pool, mode.stream_runs, log)),
        "ttft": lambda pool: asyncio.run(ttft.measure(pool, mode.ttft_runs, log)),
        "agui": lambda pool: asyncio.run(agui.measure(pool, mode.stream_runs, mode.ttft_runs, log)),
        "history": lambda pool: asyncio.run(history.measure(pool, mode.history_runs, log)),
        "concurrency": lambda pool: asyncio.run(
            concurrency.measure(pool, list(mode.layers), list(mode.concurrency), log)
        ),
        "fanout": lambda pool: asyncio.run(
            fanout.measure(
                pool,
                list(mode.fanout_layers),
                list(mode.fanout),
                log,
                bare_layers=mode.fanout_bare_layers,
                wide=mode.fanout_wide,
                wide_layers=mode.fanout_wide_layers,
            )
        ),
        "workers": lambda pool: asyncio.run(
            workers.measure(pool, mode.workers_starts, mode.workers_ttft_runs, mode.workers_streams, log)
        ),
    }
    with ServerPool(workdir) as pool:
        for name in only:
            log(f"{name}: starting at {time.strftime('%H:%M:%S')}")
            try:
                results[name] = jobs[name](pool)
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                log(traceback.format_exc())
            if name in ON_STREAM_SERVERS and name == [chosen for chosen in only if chosen in ON_STREAM_SERVERS][-1]:
                for server in ("fastapi", "bare", "agentapp", "agentapp-unmerged", "agentapp-redis"):
                    if server in pool.servers:
                        pool.stop(server)
            if name == "history" and "agentapp-history" in pool.servers:
                pool.stop("agentapp-history")
        commands = {name: server.command().replace(str(workdir), "<tmp>") for name, server in pool.servers.items()}
    return results, failures, commands


def smoke_failures(results: dict[str, Any]) -> list[str]:
    """Wrong answers and errors inside benchmarks that ran: a quick run fails on any of them."""
    problems = []
    for case, summary in results.get("stream", {}).get("cases", {}).items():
        problems += [f"stream ({case}): {error}" for error in summary["errors"]]
    for database, measured in results.get("writes", {}).items():
        if "error" in measured:
            problems.append(f"writes {database}: {measured['error']}")
        else:
            for tokens, sample in measured["results"].items():
                if sample["statuses"] != ["completed"]:
                    problems.append(f"writes {database} {tokens} tokens: statuses {sample['statuses']}")
    problems += [f"ttft: {error}" for error in results.get("ttft", {}).get("errors", [])]
    problems += [f"agui: {error}" for error in results.get("agui", {}).get("errors", [])]
    problems += [f"history: {error}" for error in results.get("history", {}).get("errors", [])]
    for item in results.get("concurrency", {}).get("baselines", []):
        problems += [f"concurrency (a) in process N={item['n']}: {error}" for error in item["error_samples"]]
    for item in results.get("concurrency", {}).get("bare", []):
        problems += [f"concurrency bare consumer N={item['n']}: {error}" for error in item["error_samples"]]
    for item in results.get("fanout", {}).get("bare", []):
        problems += [f"fanout bare {item['layer']} M={item['m']}: {error}" for error in item["error_samples"]]
    for item in results.get("concurrency", {}).get("results", []):
        problems += [f"concurrency {item['layer']} N={item['n']}: {error}" for error in item["error_samples"]]
    for item in results.get("fanout", {}).get("results", []):
        problems += [f"fanout {item['layer']} M={item['m']}: {error}" for error in item["error_samples"]]
    moved = results.get("workers", {})
    problems += [f"workers first token: {error}" for error in moved.get("first_token", {}).get("errors", [])]
    for part in ("starts", "streaming"):
        for arrangement, item in moved.get(part, {}).items():
            problems += [f"workers {part} {arrangement}: {error}" for error in item["error_samples"]]
    return problems


def render(record: dict[str, Any], out: Path) -> list[report.Goal]:
    """Write the Markdown report of one run's record, print the table, and return the targets."""
    results, mode = record["results"], record["mode"]
    builders = {
        "stream": report.streaming_rows,
        "writes": report.writes_rows,
        "ttft": report.ttft_rows,
        "history": report.history_rows,
        "concurrency": report.concurrency_rows,
        "fanout": report.fanout_rows,
        "agui": report.agui_rows,
        "workers": report.workers_rows,
    }
    rows: list[report.Row] = []
    for name, build in builders.items():  # table order: benchmark 1, 2, 3, 4, 5, 6
        if name in results:
            rows += build(results[name], report.command_for(mode, name))
    goals = report.targets(results)
    notes = METHOD.read_text(encoding="utf-8") + "\n" + FINDINGS.read_text(encoding="utf-8")
    document = report.markdown(mode, record["info"], rows, goals, record["servers"], record["failures"], notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    print(report.text_table(rows))
    print()
    for goal in goals:
        print(f"[{goal.status}] {goal.target}: {goal.measured}; anchor {goal.anchor}; {goal.ratio}")
    return goals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--quick", action="store_const", const="quick", dest="mode")
    choice.add_argument("--full", action="store_const", const="full", dest="mode")
    choice.add_argument("--render", type=Path, metavar="JSON", help="rewrite the report from a saved raw record")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, help="where to write the Markdown report (default depends on mode)")
    args = parser.parse_args()
    if args.render:
        record = json.loads(args.render.read_text(encoding="utf-8"))
        render(record, args.out or MODES[record["mode"]].out)
        return 0
    args.only = [name for name in BENCHMARKS if name in args.only]
    out = args.out or MODES[args.mode].out
    if args.only != list(BENCHMARKS) and args.out is None:
        out = ROOT / "artifacts" / f"benchmarks-{args.mode}-{'-'.join(args.only)}.md"

    started = time.monotonic()
    info = machine_info()
    info["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    workdir = Path(tempfile.mkdtemp(prefix="agentapp-bench-"))
    try:
        results, failures, servers = run_all(args.mode, args.only, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info["load_end"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    info["duration_s"] = time.monotonic() - started
    record = {"mode": args.mode, "info": info, "results": results, "failures": failures, "servers": servers}
    raw = ROOT / "artifacts" / (out.stem + ".json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    render(record, out)
    print(f"\nreport: {out}; raw record: {raw} (re-render with --render)")
    print(f"took {info['duration_s']:.0f} s; load average {info['load_start']} -> {info['load_end']}")
    problems = failures + (smoke_failures(results) if args.mode == "quick" else [])
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit, so every ``finally`` runs and the servers started so far are stopped."""
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
