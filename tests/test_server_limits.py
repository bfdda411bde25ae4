"""WebSocket message limits through ``python -m agentapp.server``: a real server process and real clients.

Frames over ``MAX_FRAME_BYTES`` and up to the server's limit (``SERVER_MAX_MESSAGE_BYTES``) get ``frame_too_large``
and the socket stays open; messages over the server's limit get a close frame with code 1009, never a dropped TCP
connection (1006).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from agentapp import protocol
from agentapp.conf import DEFAULTS
from tests.livedaphne import ROOT, LiveDaphne, LiveSocket, live_daphne, live_socket, server_env
from tests.livesettings import agentapp_settings

pytestmark = pytest.mark.slow

MAX_FRAME = DEFAULTS["MAX_FRAME_BYTES"]
# Twice daphne's own limit (1 MiB), which used to drop the connection between the two.
SERVER_LIMIT = 2 * 1_048_576
CLOSE_MESSAGE_TOO_BIG = 1009


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    tmp_dir = tmp_path_factory.mktemp("limits")
    env = {"AGENTAPP_OFFLINE_TPS": "0", **agentapp_settings(tmp_dir, SERVER_MAX_MESSAGE_BYTES=SERVER_LIMIT)}
    with live_daphne(tmp_dir, env) as live:
        yield live
    assert "Traceback" not in live.output(), live.output()


def prompt_of(size: int) -> str:
    """A prompt frame of exactly ``size`` bytes."""
    frame = json.dumps({"type": "prompt", "prompt": ""})
    return json.dumps({"type": "prompt", "prompt": "x" * (size - len(frame))})


async def still_answers(socket: LiveSocket) -> None:
    """The socket is open and serves a prompt to the end."""
    await socket.prompt("Calculate 2+2")
    frames = await socket.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED, frames


async def closed_with(socket: LiveSocket, message: str | bytes | list[str]) -> int | None:
    """Send ``message`` (a list: one message in fragments) and return the code of the close frame the server sent."""
    try:
        await socket.connection.send(message)
    except ConnectionClosed as closed:  # the server may close before the last fragment is written
        return closed.rcvd.code if closed.rcvd else None
    return await socket.close_code()


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [MAX_FRAME + 1, SERVER_LIMIT * 3 // 4, SERVER_LIMIT])
async def test_frames_up_to_the_server_limit_get_frame_too_large_and_the_socket_stays(server, size):
    async with live_socket(server, "/ws/agent/") as socket:
        await socket.hello()
        await socket.connection.send(prompt_of(size))
        frame = await socket.receive()
        assert (frame["type"], frame["code"]) == (protocol.ERROR, protocol.ERR_FRAME_TOO_LARGE), frame
        await still_answers(socket)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "message",
    [
        pytest.param(prompt_of(SERVER_LIMIT + 1), id="text"),
        pytest.param(b"\0" * (SERVER_LIMIT + 1), id="binary"),
        pytest.param(["x" * 65536] * (SERVER_LIMIT // 65536 + 1), id="fragmented"),
        pytest.param(prompt_of(8 * SERVER_LIMIT), id="far-over"),
    ],
)
async def test_messages_over_the_server_limit_get_a_close_frame_1009(server, message):
    async with live_socket(server, "/ws/agent/") as socket:
        await socket.hello()
        assert await closed_with(socket, message) == CLOSE_MESSAGE_TOO_BIG
    async with live_socket(server, "/ws/agent/") as other:  # the server goes on serving
        await other.hello()
        await still_answers(other)


@pytest.mark.asyncio
async def test_by_default_the_limit_is_daphnes_and_past_it_comes_a_close_frame(tmp_path):
    limit = DEFAULTS["SERVER_MAX_MESSAGE_BYTES"]
    with live_daphne(tmp_path, {"AGENTAPP_OFFLINE_TPS": "0"}) as live:
        async with live_socket(live, "/ws/agent/") as socket:
            await socket.hello()
            await socket.connection.send(prompt_of(limit))
            assert (await socket.receive())["code"] == protocol.ERR_FRAME_TOO_LARGE
            assert await closed_with(socket, prompt_of(limit + 1)) == CLOSE_MESSAGE_TOO_BIG


@pytest.mark.asyncio
async def test_the_limit_is_on_what_clients_send_not_on_what_the_server_sends(tmp_path):
    limit = 100_000
    env = {"AGENTAPP_OFFLINE_TPS": "0", **agentapp_settings(tmp_path, SERVER_MAX_MESSAGE_BYTES=limit)}
    with live_daphne(tmp_path, env) as live:
        async with httpx.AsyncClient(base_url=live.url) as http:
            (await http.get("/")).raise_for_status()  # the chat page gives an anonymous visitor a session
            session = http.cookies["sessionid"]
        async with live_socket(live, "/ws/agent/", session) as socket:
            conversation = (await socket.hello())["conversation_id"]
            await socket.prompt("Stream 20000 tokens")
            assert (await socket.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
        # Reopened, the conversation frame carries that long answer: larger than any client message may be.
        async with live_socket(live, f"/ws/agent/{conversation}/", session) as socket:
            hello = await socket.hello()
    assert len(json.dumps(hello)) > limit
    assert "w19999 " in json.dumps(hello["messages"])


def test_a_server_limit_under_max_frame_bytes_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    env = server_env(
        f"sqlite:///{tmp_path / 'unused.sqlite3'}", agentapp_settings(tmp_path, SERVER_MAX_MESSAGE_BYTES=1000)
    )
    done = subprocess.run(
        [sys.executable, "-m", "agentapp.server", "-p", "0", "project.asgi:application"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "SERVER_MAX_MESSAGE_BYTES" in done.stderr and "MAX_FRAME_BYTES" in done.stderr, done.stderr
