"""A socket closed behind a long backlog of client frames is cleaned up in time, on a real daphne server.

Channels handles a socket's frames one after another, and its disconnect after them: before frames were paced, a
backlog of thousands of cheap-looking frames (each with database hops) outlasted daphne's application close timeout
(10 s), daphne killed the connection's application, and its cleanup never ran: its presence stayed counted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.livedaphne import LiveDaphne, live_daphne, live_socket

pytestmark = pytest.mark.slow

# Well under daphne's application close timeout (10 s): how long the watcher may wait to see the flooder leave.
CLEANUP_BOUND_SECONDS = 5
KILLED = "took too long to shut down and was killed"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    with live_daphne(tmp_path_factory.mktemp("disconnect"), {"DJANGO_DEBUG": "1", "AGENTAPP_DEMO": "1"}) as live:
        yield live
    output = live.output()
    assert "Traceback" not in output and KILLED not in output, output


def anonymous_session(server: LiveDaphne) -> str:
    """The session cookie the chat page gives a visitor in demo mode."""
    response = httpx.get(server.url + "/", timeout=15)
    response.raise_for_status()
    return response.cookies["sessionid"]


def backlog() -> list[str]:
    """Thousands of frames that each looked cheap: cancels, resumes of unknown runs, answers, broken JSON."""
    frames = []
    for number in range(4000):
        if number % 10 == 7:
            frames.append(json.dumps({"type": "resume", "run_id": str(uuid.uuid4()), "seq": -1}))
        elif number % 10 == 8:
            frames.append(json.dumps({"type": "interrupt_response", "responses": {"x": {"decision": "approve"}}}))
        elif number % 10 == 9:
            frames.append("{")
        else:
            frames.append(json.dumps({"type": "cancel"}))
    return frames


@pytest.mark.asyncio
async def test_a_flooding_socket_is_counted_out_soon_after_it_closes(server: LiveDaphne) -> None:
    session = anonymous_session(server)
    url = server.url.replace("http://", "ws://", 1)
    flooder = await connect(
        f"{url}/ws/agent/", origin=server.url, additional_headers={"Cookie": f"sessionid={session}"}
    )
    conversation_id = json.loads(await flooder.recv())["conversation_id"]
    async with live_socket(server, f"/ws/agent/{conversation_id}/?presence=1", session) as watcher:
        await watcher.hello()
        await watcher.until(lambda frames: frames[-1].get("watchers") == 2)

        try:
            for frame in backlog():
                await flooder.send(frame)
        except ConnectionClosed:
            pass  # the server closed it for flooding before it sent everything
        await flooder.close()
        closed_at = time.monotonic()
        await watcher.until(lambda frames: frames[-1].get("watchers") == 1)  # fails after 15 s
        assert time.monotonic() - closed_at < CLEANUP_BOUND_SECONDS
