"""A connection's prompt, approval answer or queue cancel, by where runs run and what a prompt does while one goes on.

Without workers and with ``reject`` (the defaults), a prompt starts a run in this process (``runs.start``) with no
extra database work. Otherwise the prompt goes through the queue (agentapp.queueing): stored ``queued`` when a
worker runs it (``WORKER_CHANNEL``) or a run of its conversation goes on, announced to every connection with
``run_queued``, and started by a worker (rung through the channel layer) or by the process whose run ends first.
"""

from __future__ import annotations

from typing import Any

from . import attachments, detached, protocol, queueing, registry, runs
from .access import is_authenticated, is_stored, store_new
from .broadcast import layer_call
from .conf import app_settings
from .dbwork import db_call
from .messages import queue_message, resolved_message, run_message
from .recorder import ConversationBusy

# The origin of the frames of queued runs a web process runs: no connection's channel, so every connection forwards
# them and asks the group (whose room in the running process answers) for a replay; and no worker's, on their rows.
DETACHED_ORIGIN = ""

QUEUE_MESSAGES = {
    protocol.ERR_QUEUE_FULL: "The conversation has too many queued prompts; wait or cancel one.",
}

RUN_HERE_SCOPE_KEY = "agentapp.run_here"


def workers_run(host: runs.Host) -> bool:
    """Whether a worker runs this connection's prompts (an AG-UI request streams its run itself: it runs here)."""
    return bool(app_settings.WORKER_CHANNEL) and not getattr(host, "scope", {}).get(RUN_HERE_SCOPE_KEY)


async def prompt(host: runs.Host, text: str, if_busy: str = "", attachment_ids: tuple[str, ...] = ()) -> None:
    """Start, queue or refuse a prompt of the connection, as the settings and ``if_busy`` say.

    A prompt's attachments are checked (and read) before anything is stored; a queued prompt keeps their ids.
    """
    policy = if_busy or app_settings.IF_BUSY
    workers = workers_run(host)
    direct = host.channel_layer is None or (not workers and (policy == "reject" or not is_stored(host.conversation)))
    loaded = None
    if attachment_ids:
        try:
            loaded = await db_call(attachments.for_prompt)(host.conversation_id, attachment_ids)
        except protocol.ProtocolError as refused:
            await host.send_error(refused.code, refused.message)
            return
    if direct:
        await runs.start(host, text, then=_after(host), attachments=loaded)
        return
    await _submit(host, text, policy, workers, attachment_ids=attachment_ids, loaded=loaded)


async def answer(host: runs.Host, responses: dict[str, dict[str, str]]) -> None:
    """Answer the wait for approval: the resume runs here, or is queued for a worker."""
    if not workers_run(host) or host.channel_layer is None:
        await runs.answer(host, responses, begin=lambda *args: runs.start(*args, then=_after(host)))
        return

    async def queue_resume(host: runs.Host, _prompt: str, resume: dict[str, Any]) -> None:
        await _submit(host, "", "enqueue", True, (resume["run_id"], resume["responses"]))

    await runs.answer(host, responses, begin=queue_resume)


async def _submit(
    host: runs.Host,
    text: str,
    policy: str,
    workers: bool,
    resume: tuple[str, dict[str, Any]] | None = None,
    attachment_ids: tuple[str, ...] = (),
    loaded: list[Any] | None = None,
) -> None:
    conversation_id = host.conversation_id
    if not is_stored(host.conversation):
        refused = await db_call(store_new)(host.conversation)
        if refused is not None:
            await host.send_error(refused.code, refused.message)
            return
    user_id = host.user.pk if is_authenticated(host.user) else None
    label = runs.user_label(host.user)
    try:
        submitted = await db_call(queueing.enqueue)(
            conversation_id, user_id, text, policy, workers, label, resume, attachment_ids
        )
    except ConversationBusy as busy:
        message = QUEUE_MESSAGES.get(busy.code) or runs.BUSY_MESSAGES.get(busy.code, runs.BUSY_MESSAGES["busy"])
        await host.send_error(busy.code, message)
        return
    if submitted.cleared is not None:
        await _announce_cleared(host, submitted.cleared)
    if submitted.queued is None:  # nothing goes on: it runs here, now
        await runs.start(host, text, then=_after(host), attachments=loaded)
        return
    registry.queue_seen.add(conversation_id)
    if resume is None:
        frame = queueing.queued_frame(conversation_id, submitted.queued)
        await host.send_frame(frame)
        await layer_call(host.channel_layer.group_send(host.group, queue_message(frame, host.channel_name)), "send")
    if submitted.interrupt:
        await registry.cancel(conversation_id, label, host.channel_layer, host.group)
    if workers:
        await ring(host.channel_layer, conversation_id)
    elif registry.slot_of(conversation_id) is None:
        # No run of the conversation goes on here: one of another process starts the queue when it ends, and when
        # none goes on anywhere (it died), this process starts it now.
        await detached.fill(host.channel_layer, DETACHED_ORIGIN, conversation_id)


async def ring(layer: Any, conversation_id: str) -> None:
    """Tell a worker that the conversation has a queued run (lost, the workers' sweep finds it anyway)."""
    await layer_call(layer.send(app_settings.WORKER_CHANNEL, run_message(conversation_id)), "send")


def _after(host: runs.Host) -> runs.AfterRun:
    """What runs once a run of this process ends: the conversation's next queued run starts here."""
    layer = host.channel_layer
    conversation_id = host.conversation_id

    async def next_queued() -> None:
        if layer is None or conversation_id not in registry.queue_seen:
            return
        started = await detached.fill(layer, DETACHED_ORIGIN, conversation_id)
        if not started and not await db_call(queueing.has_waiting)(conversation_id):
            registry.queue_seen.discard(conversation_id)  # until the next ``run_queued`` is seen

    return next_queued


async def start_waiting(layer: Any, conversation_id: str) -> None:
    """Start a conversation's queued runs that nothing else will (the process whose run would have started them died);
    workers do this in their sweep."""
    if app_settings.WORKER_CHANNEL:
        return
    registry.queue_seen.add(conversation_id)
    await detached.fill(layer, DETACHED_ORIGIN, conversation_id)


async def cancel_queued(host: runs.Host, run_id: str) -> None:
    """Take a queued run of the conversation out of the queue; every connection is told with ``run_dequeued``."""
    conversation_id = host.conversation_id
    if not await db_call(queueing.cancel_queued)(conversation_id, run_id, runs.user_label(host.user)):
        await host.send_error(protocol.ERR_NO_ACTIVE_RUN, "No queued run of this conversation has this id.")
        return
    frame = queueing.dequeued_frame(conversation_id, run_id, "cancelled")
    await host.send_frame(frame)
    if host.channel_layer is not None:
        await layer_call(host.channel_layer.group_send(host.group, queue_message(frame, host.channel_name)), "send")


async def _announce_cleared(host: runs.Host, cleared: dict[str, Any]) -> None:
    """An ``interrupt`` prompt cancelled a wait for approval: every connection is told, as a cancel tells them."""
    frame = {
        "type": protocol.INTERRUPT_RESOLVED,
        "conversation_id": host.conversation_id,
        "run_id": cleared["run_id"],
        "interrupt_ids": [interrupt["id"] for interrupt in cleared["interrupts"]],
        "outcome": protocol.STATUS_CANCELLED,
    }
    await host.send_frame(frame)
    if host.channel_layer is not None:
        message = resolved_message(frame, host.channel_name)  # type: ignore[arg-type]
        await layer_call(host.channel_layer.group_send(host.group, message), "group_send")
