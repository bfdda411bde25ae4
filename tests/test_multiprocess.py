"""Two real daphne processes sharing one Redis and one PostgreSQL database: everyone sees every run live.

Runs once per channels-redis layer (``RedisChannelLayer`` and ``RedisPubSubChannelLayer``). Watchers sit
on both processes; a late joiner connects to the other process mid-run and must get the whole run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REDIS_URL, require_redis
from tests.frames import assert_contiguous, deltas
from tests.livedaphne import LiveCluster, live_cluster, live_socket

pytestmark = pytest.mark.slow

TOKENS_PER_SECOND = 200


@pytest.fixture(scope="module", params=["core", "pubsub"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    require_redis()
    env = {
        "REDIS_URL": REDIS_URL,
        "AGENTAPP_CHANNEL_LAYER": request.param,
        "AGENTAPP_DEMO": "0",
        "AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND),
    }
    with live_cluster(tmp_path_factory.mktemp(f"cluster-{request.param}"), 2, env) as live:
        yield live
    for server in live.servers:
        output = server.output()
        assert "Traceback" not in output and " ERROR " not in output, output


def assert_whole_run(frames: list[dict[str, Any]]) -> None:
    """One run from run_started to run_finished, every seq covered exactly once, in order."""
    assert frames[0]["type"] == "run_started" and frames[-1]["type"] == "run_finished", (frames[0], frames[-1])
    assert_contiguous(frames)


def text(frames: list[dict[str, Any]]) -> str:
    return "".join(frame["data"] for frame in frames if frame["type"] == "data")


def others(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The frames other than text deltas, which the group broadcast passes unmerged (no tool calls here)."""
    return [(frame["type"], frame["seq"]) for frame in frames if frame["type"] != "data"]


@pytest.mark.asyncio
async def test_watchers_on_both_processes_see_the_same_run(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["ada", "bob", "vera"], owner="ada", members={"bob": "member", "vera": "viewer"})
    users, path = seeded["users"], f"/ws/agent/{seeded['conversation']}/"
    first, second = cluster.servers

    async with (
        live_socket(first, path, users["ada"]["session"]) as asker,
        live_socket(first, path, users["vera"]["session"]) as viewer_here,
        live_socket(second, path, users["ada"]["session"]) as owner_there,
    ):
        for socket in (asker, viewer_here, owner_there):
            assert (await socket.hello())["messages"] == []
        await asker.prompt("Stream 300 tokens")
        asked = await asker.until(lambda frames: deltas(frames) >= 60)

        # A member opens the conversation on the other process while the run streams.
        async with live_socket(second, path, users["bob"]["session"]) as late:
            hello = await late.hello()
            asked += await asker.until_finished()
            watched = await asyncio.gather(
                viewer_here.until_finished(), owner_there.until_finished(), late.until_finished()
            )

            run_id = asked[0]["run_id"]
            assert hello["role"] == "member"
            assert hello["active_run"]["run_id"] == run_id
            assert [m for m in hello["messages"] if m["run_id"] == run_id] == []
            assert asked[-1]["status"] == "completed"
            assert text(asked) == "".join(f"w{n} " for n in range(300))
            for frames in watched:
                assert_whole_run(frames)
                assert text(frames) == text(asked)
                assert others(frames) == others(asked)

            # The member prompts from the second process; everyone on both sees that run too.
            await late.prompt("Calculate 15 * 23 and then add 100")
            prompted = await late.until_finished()
            for socket in (asker, viewer_here, owner_there):
                frames = await socket.until_finished()
                assert_whole_run(frames)
                assert text(frames) == text(prompted)
                assert frames[-1]["status"] == "completed"
    assert "445" in text(prompted)


@pytest.mark.asyncio
async def test_a_watcher_counts_the_connections_on_the_other_process(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["cy", "dee"], owner="cy", members={"dee": "viewer"})
    users, path = seeded["users"], f"/ws/agent/{seeded['conversation']}/?presence=1"
    first, second = cluster.servers

    async with live_socket(second, path, users["dee"]["session"]) as watcher:
        await watcher.hello()
        assert (await watcher.receive())["watchers"] == 1
        async with live_socket(first, path, users["cy"]["session"]) as owner:
            await owner.hello()
            # The watcher on the other process answered its join. A process's first socket may count itself alone
            # first: channels-redis's pub/sub reader starts with a 0.1 s nap, longer than the count's settling time.
            counts = await owner.until(lambda frames: frames[-1]["watchers"] == 2)
            assert [frame["type"] for frame in counts] == ["presence"] * len(counts) and len(counts) <= 2
            frame = await watcher.receive()
            assert frame == {"type": "presence", "conversation_id": seeded["conversation"], "watchers": 2}
        assert (await watcher.receive())["watchers"] == 1  # its goodbye crossed processes too
