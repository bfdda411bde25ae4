"""A connection's ``cancel``: its conversation's run stopped wherever it streams, else its wait for approval cleared.

Runs whose process died are ended ``interrupted`` on the way and announced to every connection; a cancel repeated
soon after one that found nothing is answered from memory, with no database work (see ``agentapp.registry``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from channels.db import database_sync_to_async

from . import leases, protocol, registry, submitting
from .broadcast import layer_call
from .conf import app_settings
from .messages import resolved_message
from .runs import user_label

# How long a cancel that found nothing to stop answers a repeated cancel from memory, with no database work.
NOTHING_TO_CANCEL_MEMO_SECONDS = 1.0


class Connection(Protocol):
    """The connection a cancel came from, as ``Cancels`` sees it."""

    conversation_id: str | None
    channel_layer: Any
    channel_name: str
    group: str | None
    user: Any

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the socket."""

    async def send_error(self, code: str, message: str) -> None:
        """Send an ``error`` frame outside any run."""

    async def deliver(self, frames: list[dict[str, Any]]) -> None:
        """Forward frames outside any run the connection streams (held while its conversation frame waits)."""

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` in a task that ends with the connection."""


class Cancels:
    """The cancels of one connection, and when the last one found nothing to stop."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # When a cancel last found nothing to stop; None once a run may have started since.
        self.nothing_at: float | None = None

    def forget(self) -> None:
        """A run of the conversation started (or may have): the next cancel looks for it again."""
        self.nothing_at = None

    async def request(self) -> None:
        """Cancel the conversation's run, here or on any other connection or process, or its wait for approval."""
        connection = self.connection
        conversation_id = connection.conversation_id
        if registry.slot_of(conversation_id) is None and self._nothing_still():
            await connection.send_error(protocol.ERR_NO_ACTIVE_RUN, "There is no run to cancel.")
            return
        done = await registry.cancel(
            conversation_id, user_label(connection.user), connection.channel_layer, connection.group
        )
        for run_id in done.ended:
            await self.announce_dead(run_id)
        if done.ended and connection.channel_layer is not None:
            # The dead run held the conversation's queue: nothing else will start it now.
            connection.spawn(submitting.start_waiting(connection.channel_layer, conversation_id), "agentapp-queue")
        if done.elsewhere:
            connection.spawn(self._end_if_dead_later(), "agentapp-cancel-watch")
        elif done.cleared and not done.ended:
            frame = {
                "type": protocol.INTERRUPT_RESOLVED,
                "conversation_id": conversation_id,
                "run_id": done.cleared["run_id"],
                "interrupt_ids": [interrupt["id"] for interrupt in done.cleared["interrupts"]],
                "outcome": protocol.STATUS_CANCELLED,
            }
            await connection.send_frame(frame)
            await self._tell_group(frame)
        elif done.nothing:
            self.nothing_at = time.monotonic()
            await connection.send_error(protocol.ERR_NO_ACTIVE_RUN, "There is no run to cancel.")

    async def announce_dead(self, run_id: str) -> None:
        """Tell this connection and the group that a run whose process died was ended ``interrupted``."""
        frame = {
            "type": protocol.RUN_FINISHED,
            "conversation_id": self.connection.conversation_id,
            "run_id": run_id,
            "status": protocol.STATUS_INTERRUPTED,
            "stop_reason": "",
            "error": leases.DEAD_RUN_ERROR,
        }
        await self.connection.deliver([frame])
        await self._tell_group(frame)

    async def _tell_group(self, frame: dict[str, Any]) -> None:
        """Send a frame to the conversation's other connections (this one skips its own copy)."""
        connection = self.connection
        if connection.channel_layer is not None:
            message = resolved_message(frame, connection.channel_name)
            await layer_call(connection.channel_layer.group_send(connection.group, message), "group_send")

    async def _end_if_dead_later(self) -> None:
        """A cancel went to a run of another process: if that process is dead, end the run once its lease lapses."""
        await asyncio.sleep(app_settings.RUN_LEASE_SECONDS + leases.renew_every())
        state = await database_sync_to_async(leases.running_state)(self.connection.conversation_id)
        for run_id in state.ended:
            await self.announce_dead(run_id)

    def _nothing_still(self) -> bool:
        """Whether the last cancel found nothing, so recently that no run can have started unseen since."""
        at = self.nothing_at
        return at is not None and time.monotonic() - at < NOTHING_TO_CANCEL_MEMO_SECONDS
