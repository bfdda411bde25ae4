"""A connection's cleanup when its socket closes: its run stopped, counted out of presence, out of its room.

Every step is bounded, so the whole ends within ``DISCONNECT_TIMEOUT_SECONDS``; a connection the server kills before
``disconnect`` ran or finished still gets a last cleanup, none of whose steps waits longer than one layer call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from .conf import app_settings
from .hub import hub_for

if TYPE_CHECKING:
    from .consumers import AgentConsumer

logger = logging.getLogger(__name__)


async def disconnect(consumer: AgentConsumer) -> None:
    """Stop the connection's run (its stream is closed and the run saved), then leave the group.

    Every step is bounded: the whole takes at most ``DISCONNECT_TIMEOUT_SECONDS`` (keep it under the server's
    application close timeout, 10 s for daphne, or the server kills the connection before it is counted out).
    """
    consumer.sender.stop()
    for task in consumer.tasks:
        task.cancel()
    leave = app_settings.BROADCAST_SEND_TIMEOUT_SECONDS  # group_discard's own bound, kept for last
    deadline = asyncio.get_running_loop().time() + max(0.0, app_settings.DISCONNECT_TIMEOUT_SECONDS - leave)
    if consumer.presence is not None:
        await _until(deadline, consumer.presence.stop(), "counting the connection out")
    slot, consumer.run_slot = consumer.run_slot, None
    # With RUNS_CONTINUE_ON_DISCONNECT the run goes on without this socket: its frames still reach the group, and
    # any connection cancels it.
    running = slot is not None and slot.task is not None and not slot.task.done()
    if running and not app_settings.RUNS_CONTINUE_ON_DISCONNECT:
        slot.cancel()
        # Shielded: past the deadline the run still ends and saves in its task (the registry keeps it).
        await _until(deadline, asyncio.shield(slot.task), "saving the cancelled run")
    await _leave_room(consumer)
    consumer.cleaned_up = True


async def last_cleanup(consumer: AgentConsumer) -> None:
    """What ``disconnect`` would have done, none of it waited for longer than one layer call."""
    if consumer.run_slot is not None and not app_settings.RUNS_CONTINUE_ON_DISCONNECT:
        consumer.run_slot.cancel()
    for task in consumer.tasks:
        task.cancel()
    bound = app_settings.BROADCAST_SEND_TIMEOUT_SECONDS
    if consumer.presence is not None:
        await _until(asyncio.get_running_loop().time() + bound, consumer.presence.stop(), "counting the connection out")
    await _leave_room(consumer)
    consumer.cleaned_up = True


async def _leave_room(consumer: AgentConsumer) -> None:
    room, consumer.room = consumer.room, None
    if room is not None:
        await hub_for(consumer.channel_layer).leave(room, consumer)


async def _until(deadline: float, step: Awaitable[Any], what: str) -> None:
    """Await a cleanup step until the loop time ``deadline``; past it, log and go on without it."""
    try:
        async with asyncio.timeout_at(deadline):
            await step
    except TimeoutError:
        logger.warning("agentapp: %s took too long when a socket closed; cleanup goes on without it", what)
