"""BodyLimit: HTTP bodies over the limit are answered 413 before the application reads them; others pass untouched."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentapp.bodylimit import BodyLimit, default_limit

LIMIT = 100


class Echo:
    """An ASGI application that reads the whole body and answers with its length (or notes a disconnect)."""

    def __init__(self) -> None:
        self.called = False
        self.disconnected = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.called = True
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


async def call(app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, int]:
    """Send ``chunks`` as one request's body; the status, the body of the answer, and how many chunks were read."""
    given = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal given
        given += 1
        return {"type": "http.request", "body": chunks[given - 1], "more_body": given < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive, send)
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return status, body, given


@pytest.mark.asyncio
async def test_a_body_within_the_limit_reaches_the_application_whole() -> None:
    echo = Echo()
    status, body, _ = await call(BodyLimit(echo, LIMIT), [b"a" * 60, b"b" * 40], [(b"content-length", b"100")])
    assert (status, body) == (200, b"100")


@pytest.mark.asyncio
async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    echo = Echo()
    status, body, read = await call(BodyLimit(echo, LIMIT), [b"a" * 101], [(b"content-length", b"101")])
    assert status == 413 and json.loads(body)["error"] == "body_too_large"
    assert (echo.called, read) == (False, 0)


@pytest.mark.asyncio
async def test_a_streamed_body_is_cut_once_it_passes_the_limit() -> None:
    echo = Echo()
    status, body, read = await call(BodyLimit(echo, LIMIT), [b"a" * 60] * 50, [])  # chunked: no Content-Length
    assert status == 413 and json.loads(body)["error"] == "body_too_large"
    assert echo.disconnected and read == 2


@pytest.mark.asyncio
async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await BodyLimit(app, 0)({"type": "websocket", "headers": []}, None, None)
    assert seen == ["websocket"]


def test_the_default_limit_takes_an_attachment_and_djangos_own_limit(settings) -> None:
    settings.AGENTAPP = {"ATTACHMENT_MAX_BYTES": 1000}
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50
    assert default_limit() == 1000 + 16_384
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10**7
    assert default_limit() == 10**7
