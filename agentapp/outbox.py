"""A socket's outbox: frames waiting to be written to one WebSocket, in order, by one writer task."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import protocol

logger = logging.getLogger(__name__)

# The ASGI scope extension under which a server offers a socket's ``WriteFlow`` (``agentapp.server`` does).
FLOW_EXTENSION = "agentapp.flow"


class WriteFlow(Protocol):
    """The server's view of one socket's write buffer: whether it is full, and a way out when it stays full."""

    paused: bool  # the server's write buffer is over its high-water mark: the client is not reading

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the buffer has drained (``paused`` turned False) or the connection is gone."""

    def abort(self) -> None:
        """Drop the connection at once, with whatever is still buffered."""


# Frames encoded lately, by identity (each kept, so its id is not reused meanwhile): a group frame that the process's
# room hands to many sockets is encoded once, not once per socket. Frames are never changed once queued.
ENCODED_KEPT = 256
_encoded: dict[int, tuple[dict[str, Any], str]] = {}


def encoded(frame: dict[str, Any]) -> str:
    """The frame as JSON text, encoded once however many sockets write it."""
    hit = _encoded.get(id(frame))
    if hit is not None and hit[0] is frame:
        return hit[1]
    text = protocol.encode_frame(frame)
    if len(_encoded) >= ENCODED_KEPT:
        _encoded.clear()  # cheaper than keeping an order: a frame is written by all its sockets within moments
    _encoded[id(frame)] = (frame, text)
    return text


def write_flow(scope: dict[str, Any]) -> WriteFlow | None:
    """The socket's ``WriteFlow`` if its server offers one (``agentapp.server``), else None."""
    return (scope.get("extensions") or {}).get(FLOW_EXTENSION)


@dataclass(slots=True)
class _Queued:
    """One entry of an outbox: a wire frame with the text deltas merged after it, or an ASGI message.

    It merges by ``protocol.continues``, as the group broadcast does, but text deltas only (each tool-use update
    is written), without copying: the caller's frames are kept and their text joined once, when written.
    """

    message: dict[str, Any]
    frames: int = 1  # frames it carries (0: an ASGI message to pass as it is)
    texts: list[str] = field(default_factory=list)  # merged deltas' text, joined once when written
    last: dict[str, Any] | None = None  # the last delta merged into it

    def merge(self, frame: dict[str, Any]) -> bool:
        """Take a text delta that continues this entry's run right after its last one."""
        previous = self.message if self.last is None else self.last
        if not (self.frames and protocol.continues(previous, frame, tool_uses=False)):
            return False
        self.texts.append(frame[protocol.DATA])
        self.last = frame
        self.frames += 1
        return True

    def asgi(self) -> dict[str, Any]:
        """The ASGI message that writes this entry."""
        if not self.frames:
            return self.message
        frame = self.message
        if self.last is not None:
            first, last = protocol.seq_span(frame)[0], protocol.seq_span(self.last)[1]
            text = frame[protocol.DATA] + "".join(self.texts)
            frame = {**frame, protocol.DATA: text, "seq": last, "seq_first": first}
            return {"type": "websocket.send", "text": protocol.encode_frame(frame)}
        return {"type": "websocket.send", "text": encoded(frame)}


class Outbox:
    """Frames waiting to be written to one socket, encoded and written in order by one task.

    A text delta queued right behind another of the same run (the writer has not caught up: the event loop
    is busy, or the client reads slowly) joins it, as the group broadcast merges deltas: the frame then
    covers ``seq_first``..``seq``. An idle socket gets each delta in a frame of its own, at once.

    A client that stops reading makes this queue grow: under a server whose ``send`` waits for the client
    (uvicorn, hypercorn, ``WebsocketCommunicator`` with a bounded queue), or one that offers a ``flow``
    (``agentapp.server``: the writer waits while the server's write buffer is full). Once ``limit`` frames
    (merged ones counted for each frame in them) wait, ``put`` refuses and the socket is closed as a slow
    consumer; so is it, through ``on_stall``, when the write buffer stays full for ``stall_seconds``.
    """

    def __init__(
        self,
        write: Callable[[dict[str, Any]], Awaitable[None]],
        limit: int,
        flow: WriteFlow | None = None,
        stall_seconds: float = 30.0,
        on_stall: Callable[[Outbox], None] | None = None,
    ) -> None:
        self._write = write
        self.limit = limit
        self.flow = flow
        self.stall_seconds = stall_seconds
        self._on_stall = on_stall
        self.overflowed = False
        self.stalled = False  # the write buffer stayed full for stall_seconds
        self.closed = False
        self._dropping = False  # finish() dropped the waiting frames: the one held by the writer goes too
        self._queue: deque[_Queued] = deque()
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()  # the flow drained, or finish() was called
        if flow is not None:
            flow.on_drain(self._wake.set)
        self.backlog = 0  # frames put and not yet written
        self._queued = 0  # entries queued so far (a merged delta joins an entry)
        self._handled = 0  # entries the writer took and wrote (or dropped)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # ``written`` calls: the entry count each awaits
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
            self._queue.append(_Queued(frame))
            self._queued += 1
            self._ready.set()
        return True

    async def written(self) -> None:
        """Wait until every frame queued so far has been handed to the server (or the outbox is closed)."""
        if self._handled >= self._queued or self.closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self._queued, waiter))
        await waiter

    def _wake_waiters(self, everyone: bool = False) -> None:
        """Release the ``written`` calls whose frames are all handed over (all of them when ``everyone``)."""
        waiting = []
        for target, waiter in self._waiters:
            if everyone or self._handled >= target:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    def finish(self, messages: list[dict[str, Any]], drop_waiting: bool = False) -> None:
        """Queue these last ASGI messages whatever the limit (ending with a close), maybe dropping those waiting."""
        if drop_waiting:
            self._queue.clear()
            self.backlog = 0
            self._dropping = True
        self._queue.extend(_Queued(message, frames=0) for message in messages)
        self._ready.set()
        self._wake.set()
        self.closed = True
        self._wake_waiters(everyone=True)  # nothing is worth waiting for on a closing socket

    def stop(self) -> None:
        """Write nothing more: the socket is gone."""
        self.closed = True
        self.task.cancel()
        self._wake_waiters(everyone=True)

    async def _drain(self) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            entry = self._queue.popleft()
            self.backlog -= entry.frames
            # Frames wait for the client to read what the server holds; the last messages (a close) do not.
            if entry.frames and not await self._drained():
                self._stall()
                continue
            message = entry.asgi()
            try:
                await self._write(message)
            except Exception:
                logger.debug("agentapp: dropped a message for a closed socket", exc_info=True)
            self._handled += 1
            if self._waiters:
                self._wake_waiters()
            if message["type"] == "websocket.close":
                self.closed = True
                if self.flow is not None and not await self._drained(closing=True):
                    self.flow.abort()  # the close frame cannot reach the client: drop the connection
                return

    async def _drained(self, closing: bool = False) -> bool:
        """Wait until the server's write buffer is below its high-water mark; False if it stays full.

        False after ``stall_seconds``, or (unless ``closing``) at once when ``finish`` drops the waiting frames.
        """
        flow = self.flow
        if flow is None or not flow.paused:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stall_seconds
        while flow.paused and (closing or not self._dropping):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
            except TimeoutError:
                return not flow.paused
        return not flow.paused

    def _stall(self) -> None:
        """The frame the writer held is dropped; a socket whose buffer stayed full is closed as a slow consumer."""
        if self._dropping or self.stalled:
            return
        self.stalled = True
        logger.debug("agentapp: a socket's write buffer stayed full for %ss", self.stall_seconds)
        if self.closed:  # closing already: only its last messages are written
            self._queue = deque(entry for entry in self._queue if not entry.frames)
            self.backlog = 0
        elif self._on_stall is not None:
            self._on_stall(self)
        else:
            self.finish([{"type": "websocket.close"}], drop_waiting=True)
