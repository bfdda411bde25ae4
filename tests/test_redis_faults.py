"""Redis goes away mid-run and comes back: the run and its saving never notice, broadcasting resumes.

Two daphne processes share one PostgreSQL database and a throwaway redis-server on a free port, which the
test stops and restarts (empty, as after a crash) while a paced run streams. Every wait is on frames.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.frames import assert_contiguous, deltas
from tests.livedaphne import HOST, STOP_TIMEOUT, LiveCluster, free_port, live_cluster, live_socket

pytestmark = pytest.mark.slow

TOKENS_PER_SECOND = 200
TOKENS = 900
START_TIMEOUT = 10


class ThrowawayRedis:
    """A redis-server of the test's own, without persistence, that can be stopped and started on one port."""

    def __init__(self, tmp_dir: Path) -> None:
        self.port = free_port()
        self.tmp_dir = tmp_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        command = ["redis-server", "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        with (self.tmp_dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen([*command, "--dir", str(self.tmp_dir)], stdout=log, stderr=log)
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT
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
        """Stop the server (its data goes with it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module", params=["core", "pubsub"])
def outage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp_dir = tmp_path_factory.mktemp(f"redis-{request.param}")
    server = ThrowawayRedis(tmp_dir)
    server.start()
    env = {
        "REDIS_URL": server.url,
        "AGENTAPP_CHANNEL_LAYER": request.param,
        "AGENTAPP_DEMO": "0",
        "AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND),
    }
    try:
        with live_cluster(tmp_dir, 2, env) as cluster:
            yield server, cluster, request.param
    finally:
        server.stop()


def data_count(frames: list[dict[str, Any]]) -> int:
    return deltas(frames)


def text(frames: list[dict[str, Any]]) -> str:
    return "".join(frame["data"] for frame in frames if frame["type"] == "data")


def stored_run(cluster: LiveCluster, run_id: str) -> tuple[str, str]:
    """The run's status and its assistant text, read from the shared database."""
    with psycopg.connect(cluster.environment["DATABASE_URL"].replace("postgres://", "postgresql://", 1)) as db:
        status = db.execute("SELECT status FROM agentapp_run WHERE id = %s", [run_id]).fetchone()[0]
        rows = db.execute(
            "SELECT content FROM agentapp_message WHERE run_id = %s AND role = 'assistant' ORDER BY position", [run_id]
        ).fetchall()
    return status, "".join(block.get("text", "") for (content,) in rows for block in content)


@pytest.mark.asyncio
async def test_run_survives_redis_going_away_and_broadcast_resumes(outage: Any) -> None:
    server, cluster, layer = outage
    seeded = cluster.seed(["ada"], owner="ada")
    session, path = seeded["users"]["ada"]["session"], f"/ws/agent/{seeded['conversation']}/"
    first, second = cluster.servers
    expected = "".join(f"w{n} " for n in range(TOKENS))

    async with live_socket(first, path, session) as asker, live_socket(second, path, session) as watcher:
        await asker.hello()
        await watcher.hello()
        await asker.prompt(f"Stream {TOKENS} tokens")
        watched = await watcher.until(lambda frames: data_count(frames) >= 20)
        asked = await asker.until(lambda frames: data_count(frames) >= 40)

        server.stop()
        before = data_count(asked)
        asked += await asker.until(lambda frames: data_count(frames) >= 150)  # the run streams on meanwhile
        server.start()
        restarted_at = data_count(asked) + before

        asked += await asker.until_finished()
        watched += await watcher.until_finished()

    # The initiating socket got the whole run, in order, and it was saved.
    assert_contiguous(asked)
    assert text(asked) == expected and asked[-1]["status"] == "completed"
    assert stored_run(cluster, asked[0]["run_id"]) == ("completed", expected)

    # The watcher on the other process heard the rest of the run once Redis was back: the frames sent
    # after the restart, and (replayed from the run's log) those missed while Redis was away.
    assert watched[-1]["type"] == "run_finished"
    assert max(frame["seq"] for frame in watched) > restarted_at
    expected_seq = 0
    for frame in watched:
        assert frame.get("seq_first", frame["seq"]) == expected_seq, (expected_seq, frame)
        expected_seq = frame["seq"] + 1
    assert text(watched) == expected

    # Failures were logged a few times per process, not once per token (the example site prints each record
    # twice: agentapp's handler and daphne's root handler). With the pub/sub layer the watcher's process makes
    # no call of its own while Redis is away; channels_redis logs its own receive loop.
    for live in cluster.servers:
        output = live.output()
        failures = [line for line in output.splitlines() if "channel layer" in line and "failed (" in line]
        assert len(failures) <= 6, output
        if live is first or layer == "core":
            assert len(failures) >= 1, output
            assert "broadcast restored" in output, output
        if layer == "core":
            assert "Traceback" not in output, output
