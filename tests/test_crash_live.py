"""A daphne process killed mid-run (SIGKILL), as seen from another process on the same PostgreSQL and Redis.

Within seconds the dead run is ended ``interrupted``; a cancel of it answers; the text its client saw is stored
(but for about ``PARTIAL_SAVE_SECONDS``); the next prompt runs alone, never merged into the dead run's turn.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.conftest import REDIS_URL, require_redis
from tests.frames import deltas
from tests.livedaphne import LiveCluster, live_cluster, live_socket

pytestmark = pytest.mark.slow

TOKENS_PER_SECOND = 50
LEASE_SECONDS = 2
# The dead run must be ended within this long of the kill (the lease, a renewal period, the answer's round trip).
ENDED_WITHIN_SECONDS = 8


@pytest.fixture(params=["core", "pubsub"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    require_redis()
    env = {
        "REDIS_URL": REDIS_URL,
        "AGENTAPP_CHANNEL_LAYER": request.param,
        "AGENTAPP_DEMO": "0",
        "AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND),
        "AGENTAPP_RUN_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    with live_cluster(tmp_path_factory.mktemp(f"crash-{request.param}"), 2, env) as live:
        yield live


def stored(cluster: LiveCluster, conversation_id: str) -> list[tuple[str, str, bool, str | None, str]]:
    """The conversation's messages (role, text, partial, run id) with their run's status, from the database."""
    url = cluster.environment["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT m.role, m.content, m.partial, m.run_id::text, r.status FROM agentapp_message m"
            " JOIN agentapp_run r ON r.id = m.run_id WHERE m.conversation_id = %s ORDER BY m.position",
            [conversation_id],
        ).fetchall()
    return [
        (role, "".join(block.get("text", "") for block in content), partial, run_id, status)
        for role, content, partial, run_id, status in rows
    ]


def text(frames: list[dict[str, Any]]) -> str:
    return "".join(frame["data"] for frame in frames if frame["type"] == "data")


@dataclass
class Killed:
    """A conversation whose run's process was killed mid-answer, and what its client had seen by then."""

    conversation_id: str
    path: str
    session: str
    seen: list[dict[str, Any]]
    killed_at: float


async def kill_mid_run(cluster: LiveCluster, user: str, deltas_seen: int) -> Killed:
    """Start "Stream 400 tokens" on the first server and SIGKILL it once ``deltas_seen`` text deltas arrived."""
    seeded = cluster.seed([user], owner=user)
    session, conversation_id = seeded["users"][user]["session"], seeded["conversation"]
    path = f"/ws/agent/{conversation_id}/"
    doomed = cluster.servers[0]
    async with live_socket(doomed, path, session) as asker:
        await asker.hello()
        await asker.prompt("Stream 400 tokens")
        seen = await asker.until(lambda frames: deltas(frames) >= deltas_seen)
        os.kill(doomed.pid, signal.SIGKILL)
        return Killed(conversation_id, path, session, seen, time.monotonic())


@pytest.mark.asyncio
async def test_a_killed_process_leaves_a_run_that_is_ended_stored_and_closed(cluster: LiveCluster) -> None:
    killed = await kill_mid_run(cluster, "ada", 2 * TOKENS_PER_SECOND)
    run_id = killed.seen[0]["run_id"]
    survivor = cluster.servers[1]

    async with live_socket(survivor, killed.path, killed.session) as other:
        await other.hello()
        await other.connection.send('{"type": "cancel"}')
        finished = await other.until(
            lambda frames: frames[-1]["type"] == "run_finished" and frames[-1].get("run_id") == run_id
        )
        ended_after = time.monotonic() - killed.killed_at
        assert finished[-1]["status"] == "interrupted"
        assert ended_after < ENDED_WITHIN_SECONDS

        await other.prompt("Calculate 3+3")
        answer = await other.until_finished()
        assert answer[-1]["status"] == "completed", answer
        assert "6" in text(answer)
        assert deltas(answer) < 100  # "Stream 400 tokens" was not applied again

    rows = stored(cluster, killed.conversation_id)
    dead = [row for row in rows if row[3] == run_id]
    assert [(role, status) for role, _, _, _, status in dead] == [("user", "interrupted"), ("assistant", "interrupted")]
    saved_text, partial = dead[1][1], dead[1][2]
    assert partial
    streamed = text(killed.seen)
    # What the client saw is stored, but for at most about one PARTIAL_SAVE_SECONDS of tokens (and the renewal tick).
    assert streamed.startswith(saved_text) or saved_text.startswith(streamed)
    assert len(saved_text.split()) >= len(streamed.split()) - int(1.5 * TOKENS_PER_SECOND)
    assert [row[0] for row in rows[len(dead) :]][:1] == ["user"]
    assert rows[len(dead)][1] == "Calculate 3+3"


@pytest.mark.asyncio
async def test_a_prompt_after_a_kill_waits_at_most_the_lease(cluster: LiveCluster) -> None:
    """Prompts get ``busy`` only while the dead run's lease may still be held, then the conversation is free; the
    prompt that ends the dead run tells every connection, so a watcher's page does not stream forever."""
    killed = await kill_mid_run(cluster, "bo", 10)
    dead_run = killed.seen[0]["run_id"]
    survivor = cluster.servers[1]

    async with (
        live_socket(survivor, killed.path, killed.session) as other,
        live_socket(survivor, killed.path, killed.session) as watcher,
    ):
        await other.hello()
        await watcher.hello()
        while True:
            await other.prompt("Calculate 1+1")
            frame = await other.receive()
            if frame["type"] != "error":
                break
            assert frame["code"] == "busy", frame
            assert time.monotonic() - killed.killed_at < ENDED_WITHIN_SECONDS
            await asyncio.sleep(0.25)  # poll interval between attempts; each attempt is answered before the next
        answer = await other.until_finished()
        assert answer[-1]["status"] == "completed"
        ended = await watcher.until(
            lambda frames: frames[-1].get("run_id") == dead_run and frames[-1]["type"] == "run_finished"
        )
        assert ended[-1]["status"] == "interrupted"
    statuses = {row[4] for row in stored(cluster, killed.conversation_id)}
    assert statuses == {"interrupted", "completed"}
