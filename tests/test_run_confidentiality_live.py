"""A run id alone never reads a run across processes: two daphne processes on Redis and PostgreSQL.

The victim's run streams on the first process. The attacker asks for it from a conversation of its own on the second
process, with a connection of its own conversation open on the first (which, before the fix, answered the replay
request from the run's log). The victim's own connection on the second process still resumes the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REDIS_URL, require_redis
from tests.livedaphne import LiveCluster, LiveSocket, live_cluster, live_socket

pytestmark = pytest.mark.slow

SECRET = "Stream 3000 tokens"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    require_redis()
    env = {"REDIS_URL": REDIS_URL, "AGENTAPP_DEMO": "0", "AGENTAPP_OFFLINE_TPS": "300"}
    with live_cluster(tmp_path_factory.mktemp("confidentiality"), 2, env) as live:
        yield live
    for server in live.servers:
        output = server.output()
        assert "Traceback" not in output and " ERROR " not in output, output


def unavailable_or_text(run_id: str) -> Any:
    def done(frames: list[dict[str, Any]]) -> bool:
        last = frames[-1]
        return last.get("code") == "resume_unavailable" or (last.get("run_id") == run_id and last["type"] == "data")

    return done


async def ask_by_resume_frame(socket: LiveSocket, run_id: str) -> list[dict[str, Any]]:
    await socket.hello()
    await socket.connection.send(json.dumps({"type": "resume", "run_id": run_id, "seq": -1}))
    return await socket.until(unavailable_or_text(run_id))


@pytest.mark.asyncio
async def test_a_run_is_replayed_across_processes_only_to_its_conversation(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["victim", "attacker"], owner="victim")
    victim, attacker = seeded["users"]["victim"]["session"], seeded["users"]["attacker"]["session"]
    victim_path = f"/ws/agent/{seeded['conversation']}/"
    first, second = cluster.servers

    async with live_socket(second, "/ws/agent/", attacker) as own:
        attacker_path = f"/ws/agent/{(await own.hello())['conversation_id']}/"
        await own.prompt("Calculate 1+1")
        await own.until_finished()

    async with (
        live_socket(first, victim_path, victim) as asker,
        live_socket(first, attacker_path, attacker) as helper,
    ):
        await asker.hello()
        await helper.hello()
        await asker.prompt(SECRET)
        run_id = (await asker.until(lambda frames: frames[-1]["type"] == "data"))[-1]["run_id"]

        async with live_socket(second, f"{attacker_path}?resume={run_id}&seq=-1", attacker) as by_query:
            await by_query.hello()
            frames = await by_query.until(unavailable_or_text(run_id))
            assert [frame.get("code") for frame in frames] == ["resume_unavailable"], frames
        async with live_socket(second, attacker_path, attacker) as by_frame:
            frames = await ask_by_resume_frame(by_frame, run_id)
            assert [frame.get("code") for frame in frames] == ["resume_unavailable"], frames
        assert all(SECRET not in str(frame) for frame in frames)

        async with live_socket(second, victim_path, victim) as own_resume:
            frames = await ask_by_resume_frame(own_resume, run_id)
            assert [frame.get("prompt") for frame in frames if frame["type"] == "run_started"] == [SECRET]
        await asker.connection.send(json.dumps({"type": "cancel"}))
        assert (await asker.until_finished())[-1]["status"] == "cancelled"
