"""Server-Sent Events through real daphne processes on Redis: a run POSTed to one is watched on the other.

Also the real hang-up path: daphne tells Django the client left, Django cancels the streaming task, and the
run it started ends ``cancelled``, as it would for a closed WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from tests.frames import assert_contiguous
from tests.livedaphne import LiveCluster, http_client, live_socket, redis_pair

pytestmark = pytest.mark.slow

TIMEOUT = 15
TOKENS = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    yield from redis_pair(tmp_path_factory.mktemp("sse-cluster"))


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The frames of an event stream as they arrive."""
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif line == "" and data:
            yield json.loads("\n".join(data))
            data = []


async def until_finished(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    frames = []
    async for frame in stream:
        frames.append(frame)
        if frame["type"] == "run_finished":
            break
    return frames


@pytest.mark.asyncio
async def test_post_on_one_process_is_watched_on_the_other(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["ada"], owner="ada")
    session, conversation = seeded["users"]["ada"]["session"], seeded["conversation"]
    first, second = cluster.servers
    async with (
        http_client(first, session) as asker,
        http_client(second, session) as watcher,
        watcher.stream("GET", f"/sse/{conversation}/") as watching,
    ):
        watched = events(watching)
        assert (await anext(watched))["type"] == "conversation"
        body = {"type": "prompt", "prompt": "Calculate 2+2"}
        async with asker.stream("POST", f"/sse/{conversation}/", json=body) as answer:
            answered = [frame async for frame in events(answer)]  # the POST stream ends with its run
        seen = await until_finished(watched)
    assert answered[0]["type"] == "conversation" and answered[-1]["status"] == "completed"
    run = answered[1:]
    assert_contiguous(run)
    assert seen[-1]["run_id"] == run[0]["run_id"] and seen[-1]["status"] == "completed"
    assert "".join(f["data"] for f in seen if f["type"] == "data") == "2+2 = 4."
    results = [f["tool_result"]["content"] for f in seen if f["type"] == "tool_result"]
    assert results == [[{"text": "4"}]]


@pytest.mark.asyncio
async def test_hanging_up_cancels_the_run(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["bob"], owner="bob")
    session, conversation = seeded["users"]["bob"]["session"], seeded["conversation"]
    first, second = cluster.servers
    async with live_socket(second, f"/ws/agent/{conversation}/", session) as watcher:
        await watcher.hello()
        async with http_client(first, session) as asker:
            body = {"type": "prompt", "prompt": f"Stream {TOKENS} tokens"}
            async with asker.stream("POST", f"/sse/{conversation}/", json=body) as answer:
                async for frame in events(answer):
                    if frame["type"] == "data":
                        break  # leave mid-run: the connection closes
        finished = (await watcher.until_finished())[-1]
    assert finished["status"] == "cancelled"


def database_connections(cluster: LiveCluster) -> int:
    """Connections open to the cluster's database right now (the servers' and this test's own)."""
    import psycopg

    url = cluster.environment["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    with psycopg.connect(url) as db:
        return db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()[0]


@pytest.mark.asyncio
async def test_open_streams_hold_no_database_connection_each(cluster: LiveCluster) -> None:
    """A stream may last for hours: it must not keep the connection its request opened (90 streams would exhaust
    PostgreSQL's max_connections for the whole deployment)."""
    seeded = cluster.seed(["sue"], owner="sue")
    session, conversation = seeded["users"]["sue"]["session"], seeded["conversation"]
    server = cluster.servers[0]
    streams = 12
    async with http_client(server, session) as client:
        async with client.stream("GET", f"/sse/{conversation}/") as warm:  # every lazy connection of the server opens
            await anext(events(warm))
        before = database_connections(cluster)
        async with AsyncExitStack() as stack:
            for _ in range(streams):
                response = await stack.enter_async_context(client.stream("GET", f"/sse/{conversation}/"))
                assert (await anext(events(response)))["type"] == "conversation"
            during = database_connections(cluster)
    assert during <= before + 1, (before, during)  # at most one connection of a shared thread, none per stream
