"""Clients that stop reading, against a real ``python -m agentapp.server`` process: closed as slow consumers.

The client is a raw socket with a small receive buffer that never reads after the handshake, so what the server
writes piles up on the server's side; the server must notice (its write buffer, through the ``agentapp.flow``
extension) and close the socket, while a client that reads gets its whole answer.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

from agentapp import protocol
from tests.frames import assert_contiguous, deltas
from tests.livedaphne import LiveDaphne, live_daphne, live_socket
from tests.livesettings import agentapp_settings

pytestmark = pytest.mark.slow

TIMEOUT = 30
# Far more than the kernel's socket buffers hold (several MB on loopback), were it all buffered for the client.
LONG_ANSWER = "Stream 100000 tokens"
ANSWER_TOKENS = 5000


def masked_text_frame(text: str) -> bytes:
    """A client WebSocket text frame (clients must mask what they send)."""
    payload = text.encode()
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([0x81, 0x80 | length]) if length < 126 else bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    return header + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


@contextmanager
def non_reader(server: LiveDaphne, prompt: str) -> Iterator[socket.socket]:
    """A WebSocket that sends ``prompt`` on a new conversation and then reads nothing (a 4 kB receive buffer)."""
    address = urlsplit(server.url)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(TIMEOUT)
    try:
        raw.connect((address.hostname, address.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws/agent/ HTTP/1.1\r\nHost: {address.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {server.url}\r\n\r\n"
        )
        raw.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += raw.recv(1)  # byte by byte: nothing after the headers is read
        assert response.startswith(b"HTTP/1.1 101"), response
        raw.sendall(masked_text_frame(json.dumps({"type": "prompt", "prompt": prompt})))
        yield raw
    finally:
        raw.close()


def wait_for_output(server: LiveDaphne, text: str) -> str:
    """Poll the server's output until it contains ``text``; fail after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while text not in (output := server.output()):
        if time.monotonic() > deadline:
            pytest.fail(f"the server never printed {text!r}:\n{output[-3000:]}")
        time.sleep(0.05)  # poll interval; the loop re-checks the condition
    return output


def assert_closed_by_server(raw: socket.socket) -> int:
    """Read what is left until the server's end of the connection; return the bytes read."""
    received = 0
    try:
        while chunk := raw.recv(65536):
            received += len(chunk)
    except ConnectionResetError:
        pass  # the close frame could not drain, so the server dropped the connection
    except TimeoutError:
        pytest.fail(f"the server kept the connection open ({received} bytes read)")
    return received


async def full_answer(server: LiveDaphne) -> None:
    """A client that reads gets its whole answer from the same server."""
    async with live_socket(server, "/ws/agent/") as reader:
        await reader.hello()
        await reader.prompt(f"Stream {ANSWER_TOKENS} tokens")
        frames = await reader.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED, frames[-1]
    run = [frame for frame in frames if frame.get("run_id") == frames[-1]["run_id"]]
    assert_contiguous(run)
    assert deltas(run) == ANSWER_TOKENS


@pytest.mark.asyncio
async def test_a_client_that_stops_reading_fills_its_outbox_and_is_closed(tmp_path):
    with live_daphne(tmp_path, {"AGENTAPP_OFFLINE_TPS": "0"}) as server:
        with non_reader(server, LONG_ANSWER) as raw:
            await full_answer(server)
            output = wait_for_output(server, "closing a slow consumer socket")
            assert "fell 1000 frames behind" in output
            assert_closed_by_server(raw)
        await full_answer(server)
        assert "Traceback" not in server.output(), server.output()


@pytest.mark.asyncio
async def test_a_write_blocked_past_the_stall_limit_closes_the_socket(tmp_path):
    # A queue that never fills: only the time the server's write buffer stays full closes the socket.
    values = {"SOCKET_QUEUE_FRAMES": 10_000_000, "SOCKET_WRITE_STALL_SECONDS": 1}
    env = {"AGENTAPP_OFFLINE_TPS": "0", **agentapp_settings(tmp_path, **values)}
    with live_daphne(tmp_path, env) as server:
        with non_reader(server, LONG_ANSWER) as raw:
            output = wait_for_output(server, "closing a slow consumer socket")
            assert "its writes waited 1s for the client to read" in output
            assert_closed_by_server(raw)
        await full_answer(server)
        assert "Traceback" not in server.output(), server.output()


@contextmanager
def non_reading_stream(server: LiveDaphne, prompt: str) -> Iterator[socket.socket]:
    """An SSE ``POST`` of ``prompt`` (anonymous, demo mode) whose client then reads nothing (a 4 kB receive buffer)."""
    import httpx

    with httpx.Client(base_url=server.url) as http:
        http.get("/").raise_for_status()  # the chat page: an anonymous session (demo mode) and the CSRF cookie
        cookies = {name: http.cookies[name] for name in ("sessionid", "csrftoken")}
    address = urlsplit(server.url)
    body = json.dumps({"type": "prompt", "prompt": prompt}).encode()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(TIMEOUT)
    try:
        raw.connect((address.hostname, address.port))
        request = (
            f"POST /sse/ HTTP/1.1\r\nHost: {address.netloc}\r\nOrigin: {server.url}\r\n"
            f"Cookie: sessionid={cookies['sessionid']}; csrftoken={cookies['csrftoken']}\r\n"
            f"X-CSRFToken: {cookies['csrftoken']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        raw.sendall(request.encode() + body)
        yield raw
    finally:
        raw.close()


@pytest.mark.asyncio
async def test_a_stream_that_stops_reading_is_closed_and_bounded(tmp_path):
    """Server-Sent Events get the same guarantee as sockets: the stream's writes wait for the client (frames wait
    in the consumer's bounded queues meanwhile), and a client that reads nothing for the stall limit is dropped."""
    env = {
        "AGENTAPP_OFFLINE_TPS": "0",
        "AGENTAPP_DEMO": "1",
        **agentapp_settings(tmp_path, SOCKET_WRITE_STALL_SECONDS=2),
    }
    with live_daphne(tmp_path, env) as server:
        with non_reading_stream(server, LONG_ANSWER) as raw:
            await full_answer(server)
            wait_for_output(server, "dropping a stream whose client read nothing for 2s")
            assert_closed_by_server(raw)
        await full_answer(server)
        assert "Traceback" not in server.output(), server.output()
