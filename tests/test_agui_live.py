"""The AG-UI endpoint through real daphne processes on Redis: a run posted to one is watched over a WebSocket of
the other, and a client hanging up cancels its run there too."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from ag_ui.core import Event
from pydantic import TypeAdapter

from tests.livedaphne import LiveCluster, http_client, live_socket, redis_pair

pytestmark = pytest.mark.slow

TIMEOUT = 15
EVENTS = TypeAdapter(Event)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    yield from redis_pair(tmp_path_factory.mktemp("agui-cluster"))


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The AG-UI events of a stream as they arrive, each checked against the protocol's schema."""
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            event = json.loads(line[len("data: ") :])
            EVENTS.validate_python(event)
            yield event


def run_input(conversation: str, prompt: str) -> dict[str, Any]:
    return {
        "threadId": conversation,
        "runId": str(uuid.uuid4()),
        "messages": [{"id": "u1", "role": "user", "content": prompt}],
    }


@pytest.mark.asyncio
async def test_an_ag_ui_run_on_one_process_is_watched_on_the_other(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["ada"], owner="ada")
    session, conversation = seeded["users"]["ada"]["session"], seeded["conversation"]
    first, second = cluster.servers
    async with live_socket(second, f"/ws/agent/{conversation}/", session) as watcher:
        await watcher.hello()
        async with (
            http_client(first, session) as asker,
            asker.stream("POST", f"/agui/{conversation}/", json=run_input(conversation, "Calculate 2+2")) as answer,
        ):
            answered = [event async for event in events(answer)]
        seen = await watcher.until_finished()
    assert [answered[0]["type"], answered[-1]["type"]] == ["RUN_STARTED", "RUN_FINISHED"]
    run_id = answered[0]["metadata"]["agentapp"]["run_id"]
    assert seen[-1]["run_id"] == run_id and seen[-1]["status"] == "completed"
    assert "".join(f["data"] for f in seen if f["type"] == "data") == "2+2 = 4."
    streamed = "".join(event["delta"] for event in answered if event["type"] == "TEXT_MESSAGE_CONTENT")
    assert streamed == "2+2 = 4."


@pytest.mark.asyncio
async def test_hanging_up_cancels_the_run(cluster: LiveCluster) -> None:
    seeded = cluster.seed(["bob"], owner="bob")
    session, conversation = seeded["users"]["bob"]["session"], seeded["conversation"]
    first, second = cluster.servers
    async with live_socket(second, f"/ws/agent/{conversation}/", session) as watcher:
        await watcher.hello()
        async with http_client(first, session) as asker:
            body = run_input(conversation, "Stream 300 tokens")
            async with asker.stream("POST", f"/agui/{conversation}/", json=body) as answer:
                async for event in events(answer):
                    if event["type"] == "TEXT_MESSAGE_CONTENT":
                        break  # leave mid-run: the connection closes
        finished = (await watcher.until_finished())[-1]
    assert finished["status"] == "cancelled"
