"""Worker processes: ``manage.py agentapp_worker`` (or Channels' ``runworker``) on the ``WORKER_CHANNEL`` channel.

A web process stores a prompt as a queued run and rings this channel; a worker takes the conversation's oldest
queued run (agentapp.queueing) and runs it with no socket: its frames reach every connection through the group.
Each worker also sweeps every ``WORKER_SWEEP_SECONDS``: runs whose worker died are ended ``interrupted`` and queued
runs nobody took (a lost doorbell, a Redis restart, a full worker) are started. Cancels and replay requests for a
run come to the worker's own channel, stored on the run's row.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer

from . import detached, queueing, registry
from .conf import app_settings
from .dbwork import db_call
from .following import answer_sync

logger = logging.getLogger(__name__)

WAKE_MESSAGE_TYPE = "agentapp.wake"
# How long a draining worker waits for the runs it cancelled to store and send their ends.
CANCELLED_RUNS_WAIT_SECONDS = 5.0


def free_slots() -> int:
    """How many more runs this worker may start now (``WORKER_CONCURRENCY``)."""
    return max(0, app_settings.WORKER_CONCURRENCY - len(registry.tasks))


async def sweep(layer: Any, channel_name: str) -> int:
    """End the runs whose worker died (announced to their conversations), then start queued runs nobody took;
    return how many started."""
    for conversation_id, run_id in await db_call(queueing.end_lapsed_runs)():
        logger.info("agentapp: run %s of conversation %s ended interrupted: its process died", run_id, conversation_id)
        await detached.announce_dead(layer, conversation_id, run_id)
    return await detached.fill(layer, channel_name, None, free_slots())


async def drain(grace: float, at_once: asyncio.Event | None = None) -> int:
    """Stop taking runs, let this process's runs finish for up to ``grace`` seconds (less once ``at_once`` is set),
    then cancel those left and wait a little for their ends to be stored and sent; return how many were cancelled."""
    detached.stop_taking_runs()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    hurry = asyncio.ensure_future((at_once or asyncio.Event()).wait())
    try:
        while True:
            going = {task for task in registry.tasks if not task.done()}
            left = deadline - loop.time()
            if not going or hurry.done() or left <= 0:
                break
            await asyncio.wait(going | {hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurry.cancel()
    going = {task for task in registry.tasks if not task.done()}
    if not going:
        return 0
    waited = grace - max(0.0, deadline - loop.time())
    logger.warning("agentapp: the worker cancels %d runs still going after %.1fs", len(going), waited)
    for slot in list(registry.slots.values()):
        slot.cancel()
    await asyncio.wait(going, timeout=CANCELLED_RUNS_WAIT_SECONDS)
    return len(going)


class RunWorkerConsumer(AsyncConsumer):
    """One per worker process and channel: takes queued runs when rung, cancels them, answers replay requests."""

    sweeper: asyncio.Task[None] | None = None

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Handle one message; an unknown or malformed one is logged and dropped, never the end of the consumer (its
        channel is where the cancels and replay requests of its runs come)."""
        try:
            await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception:
            logger.exception("agentapp: the worker dropped a malformed %r message", message.get("type"))

    def _sweep_soon(self) -> None:
        if self.sweeper is None or self.sweeper.done():
            self.sweeper = asyncio.create_task(self._sweep_forever(), name="agentapp-worker-sweep")

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await sweep(self.channel_layer, self.channel_name)
            except Exception:  # the sweep outlives any one failure (the database restarting)
                logger.exception("agentapp: a worker sweep failed")
            await asyncio.sleep(app_settings.WORKER_SWEEP_SECONDS)

    async def agentapp_wake(self, message: dict[str, Any]) -> None:
        """The worker started: sweep now and from now on."""
        self._sweep_soon()

    async def agentapp_run(self, message: dict[str, Any]) -> None:
        """A conversation has a queued run: take it if this worker has room (else a sweep takes it later)."""
        self._sweep_soon()
        conversation_id = str(message.get("conversation_id", ""))
        if conversation_id and free_slots():
            await detached.fill(self.channel_layer, self.channel_name, conversation_id)

    async def agentapp_cancel(self, message: dict[str, Any]) -> None:
        """A connection asked to cancel a conversation's run, which runs here."""
        registry.cancel_here(str(message.get("conversation_id", "")))

    async def agentapp_sync(self, message: dict[str, Any]) -> None:
        """A connection asks for the frames of a run running here, from its log."""
        conversation_id = message.get("conversation_id")
        await answer_sync(self.channel_layer, conversation_id, self.channel_name, message)
