"""A socket's outbox: frames waiting to be written to one WebSocket, in order, by one writer task."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import protocol

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Queued:
    """One entry of an outbox: a wire frame with the text deltas merged after it, or an ASGI message."""

    message: dict[str, Any]
    frames: int = 1  # frames it carries (0: an ASGI message to pass as it is)
    texts: list[str] = field(default_factory=list)  # merged deltas' text, joined once when written
    seq: int = -1  # seq of its last delta

    def merge(self, frame: dict[str, Any]) -> bool:
        """Take a text delta that continues this entry's run right after its last one."""
        first = self.message
        if not (
            self.frames
            and frame["type"] == first["type"] == protocol.DATA
            and frame.get("run_id") == first.get("run_id")
            and frame.get("seq_first", frame["seq"]) == self.seq + 1
        ):
            return False
        self.texts.append(frame[protocol.DATA])
        self.seq = frame["seq"]
        self.frames += 1
        return True

    def asgi(self) -> dict[str, Any]:
        """The ASGI message that writes this entry."""
        if not self.frames:
            return self.message
        frame = self.message
        if self.texts:
            text = frame[protocol.DATA] + "".join(self.texts)
            frame = {**frame, protocol.DATA: text, "seq": self.seq, "seq_first": frame.get("seq_first", frame["seq"])}
        return {"type": "websocket.send", "text": protocol.encode_frame(frame)}


class Outbox:
    """Frames waiting to be written to one socket, encoded and written in order by one task.

    A text delta queued right behind another of the same run (the writer has not caught up: the event loop
    is busy, or the client reads slowly) joins it, as the group broadcast merges deltas: the frame then
    covers ``seq_first``..``seq``. An idle socket gets each delta in a frame of its own, at once.

    ASGI gives no backpressure of its own: under a server whose ``send`` waits for the client (uvicorn,
    hypercorn, ``WebsocketCommunicator`` with a bounded queue) a client that stops reading makes this
    queue grow, and once ``limit`` frames (merged ones counted for each frame in them) wait, ``put`` refuses
    and the socket is closed as a slow consumer.
    """

    def __init__(self, write: Callable[[dict[str, Any]], Awaitable[None]], limit: int) -> None:
        self._write = write
        self.limit = limit
        self.overflowed = False
        self.closed = False
        self._queue: deque[_Queued] = deque()
        self._ready = asyncio.Event()
        self.backlog = 0  # frames put and not yet written
        self.task = asyncio.create_task(self._drain(), name="agentapp-outbox")

    def put(self, frame: dict[str, Any]) -> bool:
        """Queue a frame; False once closed or ``limit`` frames behind (then ``overflowed`` is set)."""
        if self.closed or self.overflowed:
            return False
        if self.backlog >= self.limit:
            self.overflowed = True
            return False
        self.backlog += 1
        if not (self._queue and self._queue[-1].merge(frame)):
            self._queue.append(_Queued(frame, seq=frame.get("seq", -1)))
            self._ready.set()
        return True

    def finish(self, messages: list[dict[str, Any]], drop_waiting: bool = False) -> None:
        """Queue these last ASGI messages whatever the limit (ending with a close), maybe dropping those waiting."""
        if drop_waiting:
            self._queue.clear()
            self.backlog = 0
        self._queue.extend(_Queued(message, frames=0) for message in messages)
        self._ready.set()
        self.closed = True

    def stop(self) -> None:
        """Write nothing more: the socket is gone."""
        self.closed = True
        self.task.cancel()

    async def _drain(self) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            entry = self._queue.popleft()
            self.backlog -= entry.frames
            message = entry.asgi()
            try:
                await self._write(message)
            except Exception:
                logger.debug("agentapp: dropped a message for a closed socket", exc_info=True)
            if message["type"] == "websocket.close":
                self.closed = True
                return
