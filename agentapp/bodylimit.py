"""An ASGI wrapper that refuses an HTTP request body over a limit before Django reads it.

Django's ASGI handler reads a whole body (to a temporary file past ``FILE_UPLOAD_MAX_MEMORY_SIZE``) before any
middleware or view runs, so no view can refuse a huge body, and nothing checks one sent chunked. ``BodyLimit``
answers 413 at once for a declared ``Content-Length`` over the limit, and for a body that passes it as it streams:
the application is told the client went away, and the client gets the 413.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

from .conf import app_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Application = Callable[[Scope, Receive, Send], Awaitable[None]]

ERR_BODY_TOO_LARGE = "body_too_large"
# Room for the multipart boundaries and part headers around an uploaded file.
MULTIPART_OVERHEAD_BYTES = 16_384


def default_limit() -> int:
    """The largest body agentapp's endpoints take: an attachment upload, or Django's own form and AG-UI limit."""
    return max(
        app_settings.ATTACHMENT_MAX_BYTES + MULTIPART_OVERHEAD_BYTES,
        getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None) or 0,
    )


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None when it has none (or one that is not a number)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """Wrap an ASGI application so HTTP request bodies over ``max_bytes`` are answered 413 ``body_too_large``."""

    def __init__(self, app: Application, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes if self.max_bytes is not None else default_limit()
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await refuse(send, limit)
            return
        guard = _Guard(receive, limit)
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            if not guard.over:
                await send(message)

        await self.app(scope, guard.receive, tracked_send)
        if guard.over and not started:
            await refuse(send, limit)


class _Guard:
    """The application's ``receive``: counts body bytes and reports a disconnect once they pass the limit."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.read = 0
        self.over = False

    async def receive(self) -> Message:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.read += len(message.get("body", b""))
            if self.read > self.limit:
                self.over = True
                return {"type": "http.disconnect"}
        return message


async def refuse(send: Send, limit: int) -> None:
    """Answer 413 with the JSON error body agentapp's API uses."""
    body = json.dumps({"error": ERR_BODY_TOO_LARGE, "message": f"Request bodies are limited to {limit} bytes."})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
