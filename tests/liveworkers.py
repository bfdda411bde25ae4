"""Worker processes (``manage.py agentapp_worker``) beside live daphne processes, on a Redis server of the test's own.

``worker_stack`` starts a redis-server on a free port (which a test may restart, empty, as after a crash), daphne
processes on one fresh PostgreSQL database and the settings that send runs to workers; ``Workers`` starts, kills and
stops worker processes with the same environment. ``query`` and ``eventually`` read the shared database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import redis

from tests.livedaphne import HOST, ROOT, STOP_TIMEOUT, LiveCluster, free_port, live_cluster
from tests.livesettings import agentapp_settings

# The channel web processes ring and workers listen on.
WORKER_CHANNEL = "agentapp.runs"
REDIS_START_TIMEOUT = 10
# Longest a database condition is polled for before the test fails.
EVENTUALLY_TIMEOUT = 20

T = TypeVar("T")


### A Redis server of the test's own ###


class PrivateRedis:
    """A redis-server without persistence on a free port, which can be stopped and started again, empty."""

    def __init__(self, tmp_dir: Path) -> None:
        self.port = free_port()
        self.tmp_dir = tmp_dir
        self.url = f"redis://{HOST}:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING; fail if it exits or does not answer in time."""
        command = ["redis-server", "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        with (self.tmp_dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen([*command, "--dir", str(self.tmp_dir)], stdout=log, stderr=log)
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer in time"
                time.sleep(0.02)  # poll interval, not synchronization: the loop re-checks PING

    def stop(self) -> None:
        """Stop the server; its data (channel messages, group members) goes with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop the server and start an empty one on the same port."""
        self.stop()
        self.start()


### Worker processes ###


@dataclass
class LiveWorker:
    """A running ``manage.py agentapp_worker`` process and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False
    # Told to stop (SIGTERM or SIGINT): it drains its runs and exits on its own.
    signalled: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """Everything the worker printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker (no cleanup of its own runs) and reap it."""
        self.killed = True
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Tell the worker to stop (it drains its runs, then exits)."""
        self.signalled = True
        os.kill(self.process.pid, signum)

    def stop(self) -> None:
        """Terminate the worker, killing it if it does not exit promptly."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)


@dataclass
class Workers:
    """The worker processes of one test: started with the cluster's environment, stopped and checked on exit."""

    environment: Mapping[str, str]
    tmp_dir: Path
    started: list[LiveWorker] = field(default_factory=list)

    def start(self) -> LiveWorker:
        """Start one more worker; it listens on WORKER_CHANNEL and sweeps the database at once."""
        log = self.tmp_dir / f"worker-{len(self.started)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "agentapp_worker"],
                cwd=ROOT,
                env=dict(self.environment),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        worker = LiveWorker(process, log)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        """Stop every worker still running."""
        for worker in self.started:
            worker.stop()

    def assert_healthy(self) -> None:
        """Fail if a worker not killed by the test exited on its own or printed a traceback."""
        for worker in self.started:
            output = worker.output()
            assert "Traceback" not in output, output
            if not worker.killed and not worker.signalled:
                assert worker.process.poll() is None, f"worker exited with {worker.process.returncode}:\n{output}"

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.assert_healthy()
        finally:
            self.stop_all()


### Web processes and workers on one database and Redis ###


@dataclass(frozen=True)
class WorkerStack:
    """Daphne processes that send runs to WORKER_CHANNEL, the Redis server they share, and their database."""

    cluster: LiveCluster
    redis: PrivateRedis
    tmp_dir: Path

    def workers(self, tmp_dir: Path) -> Workers:
        """A pool of worker processes with the daphne processes' environment, logging under ``tmp_dir``."""
        return Workers(self.cluster.environment, tmp_dir)


@contextmanager
def worker_stack(tmp_dir: Path, web: int, env: Mapping[str, str], **settings: Any) -> Iterator[WorkerStack]:
    """``web`` daphne processes on a private Redis (core layer) and a fresh PostgreSQL database, with ``settings``
    (and ``WORKER_CHANNEL``) in ``AGENTAPP``; their logs are checked for tracebacks on the way out."""
    server = PrivateRedis(tmp_dir)
    server.start()
    environment = {
        "REDIS_URL": server.url,
        "AGENTAPP_CHANNEL_LAYER": "core",
        "AGENTAPP_DEMO": "0",
        **env,
        **agentapp_settings(tmp_dir, WORKER_CHANNEL=WORKER_CHANNEL, **settings),
    }
    try:
        with live_cluster(tmp_dir, web, environment) as cluster:
            yield WorkerStack(cluster, server, tmp_dir)
        for live in cluster.servers:
            output = live.output()
            assert "Traceback" not in output, output
    finally:
        server.stop()


### The shared database ###


def query(cluster: LiveCluster, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of one SQL query on the cluster's PostgreSQL database."""
    url = cluster.environment["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    with psycopg.connect(url) as db:
        return db.execute(sql, params or []).fetchall()


async def eventually(check: Callable[[], T], done: Callable[[T], bool], timeout: float = EVENTUALLY_TIMEOUT) -> T:
    """Call ``check`` until ``done`` holds for its value, which is returned; fail with the last value after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not reached within {timeout}s: {value!r}"
        await asyncio.sleep(0.1)  # poll interval, not synchronization: the loop re-checks the condition
