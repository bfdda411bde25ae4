"""Benchmark 2: SQL statements, connections and database time per run, for a short and a long answer.

Runs in a process of its own per database (``python -m bench.writes --database-url URL``), because Django's
settings are per process. Statements are counted by wrapping ``CursorWrapper.execute``/``executemany`` at
class level, so writes from Channels' database thread count too. A run is ``AgentRun.execute`` with a no-op
emit: the Run row, the prompt, each message as it completes, and the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.servers import ROOT, BenchError, base_env
from bench.stats import median

RUN_TIME_LIMIT = 300.0
SUBPROCESS_TIMEOUT = 600.0


class SqlCounter:
    """Counts statements by verb, connections opened and commits, and adds up the time spent in each."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = False
        self.statements: Counter[str] = Counter()
        self.connections = 0
        self.commits = 0
        self.seconds = 0.0

    def reset(self) -> None:
        with self.lock:
            self.statements.clear()
            self.connections = self.commits = 0
            self.seconds = 0.0

    def add(self, kind: str, seconds: float, verb: str = "") -> None:
        if not self.active:
            return
        with self.lock:
            self.seconds += seconds
            if kind == "statement":
                self.statements[verb] += 1
            elif kind == "connection":
                self.connections += 1
            else:
                self.commits += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "statements": sum(self.statements.values()),
                "by_verb": dict(sorted(self.statements.items())),
                "connections": self.connections,
                "commits": self.commits,
                "db_ms": self.seconds * 1000,
            }


def _timed(counter: SqlCounter, kind: str, method: Callable[..., Any], verb_of: Callable[..., str]) -> Any:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            counter.add(kind, time.perf_counter() - start, verb_of(*args))

    return wrapper


@contextmanager
def counting(counter: SqlCounter) -> Iterator[None]:
    """Patch cursor execution, connecting and committing at class level for the duration."""
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

    def verb(sql: Any = "", *rest: Any) -> str:
        return str(sql).lstrip().split(None, 1)[0].upper() if str(sql).strip() else "?"

    originals = {
        (CursorWrapper, "execute"): CursorWrapper.execute,
        (CursorWrapper, "executemany"): CursorWrapper.executemany,
        (BaseDatabaseWrapper, "connect"): BaseDatabaseWrapper.connect,
        (BaseDatabaseWrapper, "_commit"): BaseDatabaseWrapper._commit,
    }
    kinds = {"execute": "statement", "executemany": "statement", "connect": "connection", "_commit": "commit"}
    try:
        for (owner, name), method in originals.items():
            setattr(owner, name, _timed(counter, kinds[name], method, verb if kinds[name] == "statement" else str))
        yield
    finally:
        for (owner, name), method in originals.items():
            setattr(owner, name, method)


async def _noop_emit(frame: dict[str, Any]) -> None:
    """Frames go nowhere: only the database side of a run is measured."""


async def _one_run(counter: SqlCounter, tokens: int) -> dict[str, Any]:
    from channels.db import database_sync_to_async

    from agentapp.agents import build_agent
    from agentapp.models import Conversation
    from agentapp.runner import AgentRun

    conversation = await database_sync_to_async(Conversation.objects.create)(session_key="bench")
    agent = build_agent(conversation, None, [])
    run = AgentRun(agent, f"Stream {tokens} tokens", str(conversation.pk), _noop_emit)
    counter.reset()
    counter.active = True
    start = time.perf_counter()
    try:
        status = await run.execute(time_limit=RUN_TIME_LIMIT)
    finally:
        counter.active = False
    return {"status": status, "wall_ms": (time.perf_counter() - start) * 1000, **counter.snapshot()}


async def _main(token_counts: list[int], runs: int) -> dict[str, Any]:
    counter = SqlCounter()
    results: dict[str, Any] = {}
    with counting(counter):
        await _one_run(counter, token_counts[0])  # warm-up: imports, first connection, caches
        for tokens in token_counts:
            samples = [await _one_run(counter, tokens) for _ in range(runs)]
            results[str(tokens)] = {
                "runs": runs,
                "statuses": sorted({sample["status"] for sample in samples}),
                "statements": sorted({sample["statements"] for sample in samples}),
                "by_verb": samples[-1]["by_verb"],
                "connections": sorted({sample["connections"] for sample in samples}),
                "commits": sorted({sample["commits"] for sample in samples}),
                "db_ms_median": median([sample["db_ms"] for sample in samples]),
                "wall_ms_median": median([sample["wall_ms"] for sample in samples]),
            }
    return results


def main() -> None:
    """Command line: measure the database in ``--database-url`` and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--tokens", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ["AGENTAPP_OFFLINE_TPS"] = "0"
    os.environ["DJANGO_DEBUG"] = "0"
    import django

    django.setup()
    from django.db import connection

    results = asyncio.run(_main(args.tokens, args.runs))
    print(json.dumps({"vendor": connection.vendor, "results": results}))


def measure(database_url: str, token_counts: list[int], runs: int) -> dict[str, Any]:
    """Run this module in a subprocess against ``database_url`` and return its JSON result."""
    argv = [sys.executable, "-m", "bench.writes", "--database-url", database_url, "--runs", str(runs), "--tokens"]
    done = subprocess.run(
        argv + [str(count) for count in token_counts],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"bench.writes exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
