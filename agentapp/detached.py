"""Queued runs started with no asker's socket: in a worker process, or in the web process whose run went before.

Such a run is driven by ``runs.drive`` like any other, through a ``DetachedHost``: its frames reach every connection
of the conversation (the asker's too) through the group, and a start that was refused takes the run out of the queue
with a ``run_dequeued`` frame. When a run ends, its process takes the next queued run of its conversation (``fill``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from . import attachments, leases, protocol, queueing, registry, runs
from .broadcast import group_name, layer_call
from .dbwork import db_call
from .hub import hub_for
from .messages import queue_message, resolved_message
from .models import Conversation

logger = logging.getLogger(__name__)


class _Intake:
    """Whether this process takes queued runs (a draining worker does not)."""

    open = True


def stop_taking_runs() -> None:
    """From now on this process claims no queued run (``fill`` starts nothing); the ones it runs go on."""
    _Intake.open = False


def taking_runs() -> bool:
    """Whether this process claims queued runs."""
    return _Intake.open


class DetachedHost:
    """A queued run's stand-in for a connection: no socket, the group is its only audience."""

    def __init__(self, conversation: Conversation, user: Any, layer: Any, channel_name: str) -> None:
        self.conversation = conversation
        self.conversation_id = str(conversation.pk)
        self.user = user
        self.agent: Any = None
        self.channel_layer = layer
        self.channel_name = channel_name
        self.group: str | None = group_name(self.conversation_id)
        # Why the run did not start (its code and message), when it did not.
        self.refusal: tuple[str, str] | None = None

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """A run's frame goes to the group through its sinks; an error outside a run is why it did not start."""
        if frame["type"] == protocol.ERROR and "seq" not in frame:
            self.refusal = (frame["code"], frame["message"])

    async def flush(self) -> None:
        """Nothing to flush: there is no socket."""

    async def send_error(self, code: str, message: str) -> None:
        """The run did not start: remembered for ``start_claimed`` to refuse it."""
        self.refusal = (code, message)

    async def announce_dead(self, run_id: str) -> None:
        """Tell the group that a run whose process died was ended."""
        await announce_dead(self.channel_layer, self.conversation_id, run_id)

    def in_room(self) -> bool:
        """Whether this process has a room of the conversation (its connections get the frames at once)."""
        return hub_for(self.channel_layer).room(self.conversation_id) is not None

    def run_started(self, slot: registry.Slot) -> None:
        """Nothing to remember: no connection owns the run."""


def _load(claimed: queueing.Claimed) -> tuple[Conversation, Any] | None:
    conversation = Conversation.objects.filter(pk=claimed.conversation_id).first()
    if conversation is None:
        return None
    user = get_user_model().objects.filter(pk=claimed.user_id).first() if claimed.user_id is not None else None
    return conversation, user or AnonymousUser()


async def announce_dead(layer: Any, conversation_id: str, run_id: str) -> None:
    """Tell every connection of the conversation that a run whose process died was ended ``interrupted``."""
    frame: Any = {
        "type": protocol.RUN_FINISHED,
        "conversation_id": conversation_id,
        "run_id": run_id,
        "status": protocol.STATUS_INTERRUPTED,
        "stop_reason": "",
        "error": leases.DEAD_RUN_ERROR,
    }
    await layer_call(layer.group_send(group_name(conversation_id), resolved_message(frame, "")), "group_send")


async def tell(layer: Any, conversation_id: str, frame: dict[str, Any]) -> None:
    """Send a frame outside any run to every connection of the conversation."""
    await layer_call(layer.group_send(group_name(conversation_id), queue_message(frame, "")), "group_send")


async def start_claimed(layer: Any, claimed: queueing.Claimed, channel_name: str) -> bool:
    """Run a claimed queued run in a task of this process; False when it cannot start here (given back, or refused)."""
    loaded = await db_call(_load)(claimed)
    if loaded is None:
        await db_call(queueing.refuse)(claimed.run_id, "The conversation was deleted.")
        return False
    host = DetachedHost(*loaded, layer, channel_name)
    if registry.full(besides=asyncio.current_task()):
        host.refusal = (protocol.ERR_SERVER_BUSY, "The server runs too many agents now; try again shortly.")
        await _refused(host, claimed)
        return False
    slot = registry.claim(claimed.conversation_id, channel_name)
    if slot is None:  # a run of the conversation still streams here: the queued one waits for it
        await db_call(queueing.release)(claimed.run_id)
        return False
    loaded = None
    if claimed.attachment_ids:
        try:
            loaded = await db_call(attachments.for_prompt)(claimed.conversation_id, claimed.attachment_ids)
        except protocol.ProtocolError as refused:  # deleted while the prompt waited
            host.refusal = (refused.code, refused.message)
            await _refused(host, claimed)
            return False
    resume = None
    if claimed.resume_of is not None:
        resume = {"run_id": claimed.resume_of, "state": claimed.resume_state or {}, "responses": claimed.responses}
    work = _drive(host, slot, claimed, resume, loaded)
    registry.start(claimed.conversation_id, work, slot)
    logger.info("agentapp: run %s of conversation %s started", claimed.run_id, claimed.conversation_id)
    return True


async def _drive(
    host: DetachedHost, slot: registry.Slot, claimed: queueing.Claimed, resume: Any, loaded: list[Any] | None
) -> None:
    try:
        await runs.drive(host, slot, claimed.prompt, resume, run_id=claimed.run_id, attachments=loaded)
    finally:
        if host.refusal is not None:
            await _refused(host, claimed)
        status = slot.run.status if slot.run is not None else "not started"
        logger.info("agentapp: run %s of conversation %s ended: %s", claimed.run_id, claimed.conversation_id, status)
    await fill(host.channel_layer, host.channel_name, claimed.conversation_id)


async def _refused(host: DetachedHost, claimed: queueing.Claimed) -> None:
    code, message = host.refusal or (protocol.ERR_RUN_FAILED, "The run could not start.")
    if code == protocol.ERR_BUSY:
        await db_call(queueing.release)(claimed.run_id)
        return
    await db_call(queueing.refuse)(claimed.run_id, message)
    await tell(
        host.channel_layer,
        host.conversation_id,
        queueing.dequeued_frame(host.conversation_id, claimed.run_id, "refused", code, message),
    )


async def fill(layer: Any, channel_name: str, conversation_id: str | None = None, capacity: int = 1) -> int:
    """Start queued runs here: the conversation's next one, or (without one) those of the conversations waiting
    longest, up to ``capacity``; return how many started (none once the process stopped taking runs)."""
    if not taking_runs():
        return 0
    started = 0
    candidates = [conversation_id] if conversation_id is not None else []
    if conversation_id is None:
        candidates = await db_call(queueing.waiting_conversations)(capacity)
    for candidate in candidates:
        if started >= capacity:
            break
        try:
            claimed = await db_call(queueing.claim_next)(candidate, channel_name)
        except Exception:
            logger.exception("agentapp: could not take the next queued run of %s", candidate)
            continue
        if claimed is not None and await start_claimed(layer, claimed, channel_name):
            started += 1
    return started
