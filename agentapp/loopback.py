"""A WebSocket connection to ``AgentConsumer`` with no network: frames go in through a queue and come out as dicts.

Another transport (Server-Sent Events) drives the consumer through it, so authorization, limits, runs, persistence
and broadcast stay the WebSocket path's own.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

# The WebSocket close code sent to the consumer when the transport's client goes away ("going away").
CLOSE_GOING_AWAY = 1001

AsgiApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[..., Awaitable[None]]], Any]


class LoopbackSocket:
    """One in-process connection to a WebSocket ASGI application that speaks JSON text frames.

    ``receive`` returns the server's frames in order and None once the application closed the socket. At most
    ``limit`` frames wait to be read: past that the application's writes wait, so its own bounded queue decides
    when a reader is too slow.
    """

    def __init__(self, app: AsgiApp, scope: dict[str, Any], limit: int) -> None:
        self.app = app
        self.scope = scope
        self.close_code: int | None = None
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=max(limit, 1))
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Start the application and ask it to accept the connection."""
        self._incoming.put_nowait({"type": "websocket.connect"})
        # A context of its own: outside the HTTP request's thread-sensitive context, the consumer's database calls
        # go to the thread every WebSocket shares, not to a thread (and a database connection) held per stream.
        self._task = asyncio.create_task(self._serve(), name="agentapp-loopback", context=contextvars.Context())

    async def _serve(self) -> None:
        try:
            await self.app(self.scope, self._incoming.get, self._send)
        except Exception:
            logger.exception("agentapp: a loopback connection failed")
        finally:
            self._mark_closed(self.close_code or 1011)

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send" and not self._closed.is_set():
            await self._frames.put(json.loads(message["text"]))
        elif message["type"] == "websocket.close":
            self._mark_closed(message.get("code", 1000))

    def _mark_closed(self, code: int) -> None:
        if self._closed.is_set():
            return
        self.close_code = code
        self._closed.set()

    def send(self, frame: dict[str, Any] | str) -> None:
        """Hand the application one client frame (a dict, or text sent as it is)."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self._incoming.put_nowait({"type": "websocket.receive", "text": text})

    async def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next server frame, or None once the socket is closed; raises TimeoutError after ``timeout``."""
        if not self._frames.empty():
            return self._frames.get_nowait()
        if self._closed.is_set():
            return None
        getter = asyncio.ensure_future(self._frames.get())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait({getter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if closed in done:
            return self._frames.get_nowait() if not self._frames.empty() else None
        raise TimeoutError

    async def close(self) -> None:
        """Tell the application the client went away and wait until it has finished (its run saved)."""
        if self._task is None:
            return
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": CLOSE_GOING_AWAY})
        self._mark_closed(CLOSE_GOING_AWAY)
        while not self._frames.empty():  # writes waiting on a full queue would hold the application up
            self._frames.get_nowait()
        await asyncio.shield(self._task)
