"""Run control across two real daphne processes on one PostgreSQL database and Redis: busy, cancel, approvals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, require_redis
from tests.livedaphne import LiveCluster, live_cluster, live_socket

pytestmark = pytest.mark.slow

APPROVAL_SETTINGS = """
from project.settings import *  # noqa: F403

AGENTAPP = {**AGENTAPP, "APPROVAL_TOOLS": ["calculator"]}  # noqa: F405
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    """Two processes whose calculator calls wait for approval (settings written for these servers only)."""
    require_redis()
    settings_dir: Path = tmp_path_factory.mktemp("run_control_settings")
    (settings_dir / "run_control_settings.py").write_text(APPROVAL_SETTINGS)
    env = {
        "REDIS_URL": REDIS_URL,
        "AGENTAPP_CHANNEL_LAYER": "core",
        "AGENTAPP_DEMO": "0",
        "AGENTAPP_OFFLINE_TPS": "200",
        "DJANGO_SETTINGS_MODULE": "run_control_settings",
        "PYTHONPATH": str(settings_dir),
    }
    with live_cluster(tmp_path_factory.mktemp("run-control"), 2, env) as live:
        yield live
    for server in live.servers:
        output = server.output()
        assert "Traceback" not in output and " ERROR " not in output, output


@pytest.mark.asyncio
async def test_second_prompt_on_another_process_is_busy_and_cancel_crosses_over(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["ada", "bob"], owner="ada", members={"bob": "member"})
    users, path = seeded["users"], f"/ws/agent/{seeded['conversation']}/"
    first, second = cluster.servers
    async with (
        live_socket(first, path, users["ada"]["session"]) as asker,
        live_socket(second, path, users["bob"]["session"]) as other,
    ):
        await asker.hello()
        await other.hello()
        await asker.prompt("Stream 3000 tokens")
        await other.until(lambda frames: frames[-1]["type"] == "data")
        await other.prompt("Calculate 2+2")
        error = await other.until(lambda frames: frames[-1]["type"] == "error" and "run_id" not in frames[-1])
        assert error[-1]["code"] == "busy"
        await other.connection.send(json.dumps({"type": "cancel"}))
        asked = await asker.until_finished()
        assert asked[-1]["status"] == "cancelled"
        assert (await other.until_finished())[-1]["status"] == "cancelled"


@pytest.mark.asyncio
async def test_approval_paused_on_one_process_is_answered_on_the_other(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["cy", "dee"], owner="cy", members={"dee": "member"})
    users, path = seeded["users"], f"/ws/agent/{seeded['conversation']}/"
    first, second = cluster.servers
    async with live_socket(first, path, users["cy"]["session"]) as asker:
        await asker.hello()
        await asker.prompt("Calculate 6*7")
        paused = await asker.until_finished()
        assert paused[-1]["status"] == "awaiting_approval"
        [interrupt] = next(frame for frame in paused if frame["type"] == "interrupt")["interrupts"]
        async with live_socket(second, path, users["dee"]["session"]) as answerer:
            hello = await answerer.hello()
            assert hello["pending_approval"]["interrupts"] == [interrupt]
            answer = {"type": "interrupt_response", "id": interrupt["id"], "decision": "approve"}
            await answerer.connection.send(json.dumps(answer))
            resumed = await answerer.until_finished()
            assert resumed[0]["resumes"] == paused[0]["run_id"]
            assert resumed[0]["responses"][interrupt["id"]]["user"] == "dee"
            assert resumed[-1]["status"] == "completed"
            results = [frame["tool_result"] for frame in resumed if frame["type"] == "tool_result"]
            assert [(result["status"], result["content"]) for result in results] == [("success", [{"text": "42"}])]
            # The asker, on the first process, sees the resumed run through the group.
            seen = await asker.until_finished()
            assert seen[-1]["status"] == "completed" and seen[-1]["run_id"] == resumed[-1]["run_id"]
