"""A connection's way out to its socket: frames queued in order, a slow consumer closed, the close after the frames.

Once the socket is accepted, every frame and the close go through one ``outbox.Outbox`` written by its own task, so
they reach the client in the order they were sent; before that, a frame is written at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from . import protocol
from .conf import app_settings
from .outbox import Outbox, write_flow

logger = logging.getLogger(__name__)

# Loop passes ``flush`` gives a server that writes a handed-over frame on a later pass (daphne's reactor watches the
# socket for writing): asyncio runs the I/O callbacks it polls after the callbacks already waiting, so two passes.
SERVER_WRITE_PASSES = 2
# The longest ``flush`` holds its caller (a run) for its frames to be handed to the server.
FLUSH_WAIT_SECONDS = 0.1


class Connection(Protocol):
    """The connection a ``Sender`` writes for, as the sender sees it."""

    conversation_id: str | None
    # Set to None when the socket is closed as a slow consumer: nothing more is forwarded or accepted.
    role: str | None

    async def base_send(self, message: dict[str, Any]) -> None:
        """Hand an ASGI message to the server."""


class Sender:
    """The frames of one socket, written in order by its outbox from the moment the socket is accepted."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.outbox: Outbox | None = None

    def open(self, scope: dict[str, Any]) -> None:
        """The socket is accepted: frames queue in an outbox from now on (written as the server's flow allows)."""
        self.outbox = Outbox(
            self.connection.base_send,
            app_settings.SOCKET_QUEUE_FRAMES,
            flow=write_flow(scope),
            stall_seconds=app_settings.SOCKET_WRITE_STALL_SECONDS,
            on_stall=self._close_slow_consumer,
        )

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue one frame for the socket as JSON text; a socket too far behind is closed as a slow consumer."""
        outbox = self.outbox
        if outbox is None:
            await self.connection.base_send({"type": "websocket.send", "text": protocol.encode_frame(frame)})
            return
        if self.queue_frame(frame) and outbox.backlog > outbox.limit // 2:
            await asyncio.sleep(0)  # let the writer task run before a burst of frames fills the queue

    async def flush(self) -> None:
        """Let the frames queued so far leave now, before the caller queues more (a run's first text delta).

        A run whose model streams faster than the event loop turns (the offline model, a burst from a provider) would
        otherwise have its first delta merged with all those after it, and written only when the run next yields.
        """
        outbox = self.outbox
        if outbox is None or outbox.closed or (outbox.flow is not None and outbox.flow.paused):
            return  # a client that is not reading gets nothing sooner by waiting here
        try:
            async with asyncio.timeout(FLUSH_WAIT_SECONDS):
                await outbox.written()
        except TimeoutError:
            return
        for _ in range(SERVER_WRITE_PASSES):
            await asyncio.sleep(0)

    def queue_frame(self, frame: dict[str, Any]) -> bool:
        """Put a frame in the outbox; False (and the socket closed as a slow consumer) when it is too far behind."""
        outbox = self.outbox
        assert outbox is not None
        if outbox.put(frame):
            return True
        if outbox.overflowed and not outbox.closed:
            self._close_slow_consumer(outbox)
        return False

    async def send_error(self, code: str, message: str) -> None:
        """Send an ``error`` frame outside any run."""
        await self.send_frame(protocol.error_frame(self.connection.conversation_id, code, message))

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the socket after the frames already queued for it (once: a second close does nothing)."""
        message: dict[str, Any] = {"type": "websocket.close"}
        if code is not None and code is not True:
            message["code"] = code
        if reason:
            message["reason"] = reason
        if self.outbox is None:
            await self.connection.base_send(message)
        elif not self.outbox.closed:
            self.outbox.finish([message])

    def stop(self) -> None:
        """Write nothing more: the socket is gone."""
        if self.outbox is not None:
            self.outbox.stop()

    async def stopped(self) -> None:
        """Write nothing more, and wait until the writer task has ended."""
        if self.outbox is not None:
            self.outbox.stop()
            await asyncio.gather(self.outbox.task, return_exceptions=True)

    def _close_slow_consumer(self, outbox: Outbox) -> None:
        """Close a socket whose client does not read: drop the frames waiting, send ``slow_consumer`` and 4429."""
        conversation_id = self.connection.conversation_id
        if outbox.stalled:
            logger.info(
                "agentapp: closing a slow consumer socket of %s: its writes waited %ss for the client to read",
                conversation_id,
                outbox.stall_seconds,
            )
        else:
            logger.info(
                "agentapp: closing a slow consumer socket of %s: it fell %d frames behind",
                conversation_id,
                outbox.limit,
            )
        error = protocol.error_frame(
            conversation_id, protocol.ERR_SLOW_CONSUMER, "This connection fell too far behind and is closed."
        )
        outbox.finish(
            [
                {"type": "websocket.send", "text": protocol.encode_frame(error)},
                {"type": "websocket.close", "code": protocol.CLOSE_SLOW_CONSUMER},
            ],
            drop_waiting=True,
        )
        self.connection.role = None
