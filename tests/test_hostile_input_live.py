"""Hostile input against a real server (DEBUG off): deep JSON and out-of-range query parameters get clean answers.

The same requests the outside attack run sent: 10,000 levels of nesting on the WebSocket, SSE ``POST`` and both JSON
APIs, and ``offset=10**24``. Each gets its documented answer, the server logs no traceback, and a prompt still runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, require_redis
from tests.livedaphne import LiveCluster, live_cluster, live_socket
from tests.test_sse_live import events, http_client

pytestmark = pytest.mark.slow

DEEP = 10_000
HOSTILE = ["\u0661\u0662", "1e3", " 1", "+1", "-1", "", str(10**24), "\x00"]


def arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def objects(depth: int) -> str:
    return '{"a":' * depth + "null" + "}" * depth


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    require_redis()
    env = {"REDIS_URL": REDIS_URL, "AGENTAPP_DEMO": "0", "DJANGO_DEBUG": "0", "AGENTAPP_OFFLINE_TPS": "0"}
    with live_cluster(tmp_path_factory.mktemp("hostile-input"), 1, env) as live:
        yield live
    output = Path(live.servers[0].log).read_text(errors="replace")
    assert "Traceback" not in output and "RecursionError" not in output, output


@pytest.mark.asyncio
async def test_deep_frames_get_error_frames_and_the_socket_stays_usable(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["ada"], owner="ada")
    session, conversation = seeded["users"]["ada"]["session"], seeded["conversation"]
    async with live_socket(cluster.servers[0], f"/ws/agent/{conversation}/", session) as socket:
        await socket.hello()
        for text in (arrays(DEEP), objects(DEEP), '{"type": "cancel", "x": ' + arrays(DEEP) + "}"):
            await socket.connection.send(text)
            frame = await socket.receive()
            assert (frame["type"], frame["code"]) == ("error", "too_deep"), frame
        await socket.prompt("Calculate 2+2")
        assert (await socket.until_finished())[-1]["status"] == "completed"


@pytest.mark.asyncio
async def test_deep_bodies_and_bad_parameters_get_json_400s(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["bob", "cy"], owner="bob")
    session, conversation = seeded["users"]["bob"]["session"], seeded["conversation"]
    server = cluster.servers[0]
    async with http_client(server, session) as client:
        targets = [
            "/sse/",
            f"/sse/{conversation}/",
            "/api/conversations/",
            f"/api/conversations/{conversation}/members/",
        ]
        for url in targets:
            for text in (arrays(DEEP), objects(DEEP)):
                response = await client.post(url, content=text, headers={"Content-Type": "application/json"})
                assert response.status_code == 400, (url, response.status_code, response.text[:200])
                assert response.json()["error"] == "too_deep"
        for name in ("limit", "offset"):
            for value in HOSTILE:
                response = await client.get("/api/conversations/", params={name: value})
                assert response.status_code == 400, (name, value, response.text[:200])
                assert response.json()["error"] == "invalid_parameter"
        for value in HOSTILE:
            response = await client.get(f"/sse/{conversation}/", params={"presence": value})
            assert (response.status_code, response.json()["error"]) == (400, "invalid_parameter"), value
        # Still serving: a prompt over SSE runs to completion, and sharing works.
        body = {"type": "prompt", "prompt": "Calculate 2+2"}
        async with client.stream("POST", f"/sse/{conversation}/", json=body) as answer:
            frames = [frame async for frame in events(answer)]
        assert frames[-1]["type"] == "run_finished" and frames[-1]["status"] == "completed"
        shared = await client.post(
            f"/api/conversations/{conversation}/members/", content=json.dumps({"username": "cy"})
        )
        assert shared.status_code == 201
