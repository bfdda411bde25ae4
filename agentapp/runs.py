"""One prompt of a connection, from its checks to its end: the agent, the run, the sinks its frames go to, its errors.

A run's frames go to three sinks, in order: the asker's socket, the run log (what a replay or resume reads), and
the group broadcast (the process's room at once, other processes through the layer when they may watch). The run
records itself (agentapp.recorder); this module only starts and wires it, and says why a prompt did not start.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from channels.db import database_sync_to_async

from . import multiagent, preparing, protocol, registry, runlog, titles
from .access import is_authenticated, is_stored, store_new
from .approvals import StaleApprovalState
from .broadcast import GroupBroadcaster
from .conf import app_settings
from .dbwork import db_call
from .hub import Hub, LocalFirst, hub_for
from .presence import views as presence_views
from .recorder import AgentUnavailable, ConversationBusy, QuotaExceeded, cancel_approval, pending_approval
from .runner import AgentRun

logger = logging.getLogger(__name__)

BUSY_MESSAGES = {
    protocol.ERR_BUSY: "Another run is in progress in this conversation.",
    protocol.ERR_AWAITING_APPROVAL: "A tool call waits for approval: answer it (interrupt_response) or cancel.",
    protocol.ERR_NO_PENDING_APPROVAL: "No tool call of this conversation is waiting for approval.",
    protocol.ERR_RATE_LIMITED: "Too many runs in the last minute; try again shortly.",
}


class Host(Protocol):
    """The connection a run was started from, as the run sees it."""

    conversation: Any
    conversation_id: str
    user: Any
    agent: Any
    channel_layer: Any
    channel_name: str
    group: str | None

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the asker's socket."""

    async def flush(self) -> None:
        """Let the frames queued for the asker's socket so far leave before more are queued."""

    async def send_error(self, code: str, message: str) -> None:
        """Send an ``error`` frame outside any run."""

    async def announce_dead(self, run_id: str) -> None:
        """Tell the asker and the group that a run whose process died was ended."""

    def in_room(self) -> bool:
        """Whether the connection follows its conversation through the process's room."""

    def run_started(self, slot: registry.Slot) -> None:
        """The connection's prompt was accepted: ``slot`` holds its run until the run ends."""


def user_label(user: Any) -> str:
    """The name a connection's user signs its approval answers and cancels with."""
    return user.get_username() if is_authenticated(user) else "anonymous"


# Called once a run of a connection ended (agentapp.submitting starts the conversation's next queued run).
AfterRun = Callable[[], Awaitable[None]]


async def start(
    host: Host,
    prompt: str,
    resume: dict[str, Any] | None = None,
    then: AfterRun | None = None,
    attachments: list[Any] | None = None,
) -> None:
    """Start a run in a task, so the connection keeps reading frames (a cancel) while it streams; or say why not.

    ``attachments`` are the prompt's (``attachments.PromptAttachment``), read already."""
    conversation_id = host.conversation_id
    busy = registry.slot_of(conversation_id)
    if busy is not None:
        mine = busy.owner == host.channel_name
        message = "A run is already in progress on this connection." if mine else BUSY_MESSAGES[protocol.ERR_BUSY]
        await host.send_error(protocol.ERR_BUSY, message)
        return
    if registry.full():
        await host.send_error(protocol.ERR_SERVER_BUSY, "The server runs too many agents now; try again shortly.")
        return
    if not is_stored(host.conversation):  # the first prompt of a fresh conversation writes its row
        refused = await db_call(store_new)(host.conversation)
        if refused is not None:
            await host.send_error(refused.code, refused.message)
            return
    slot = registry.claim(conversation_id, host.channel_name)
    if slot is None:  # another connection's prompt was accepted while the row was written
        await host.send_error(protocol.ERR_BUSY, BUSY_MESSAGES[protocol.ERR_BUSY])
        return
    host.run_started(slot)
    registry.start(conversation_id, drive(host, slot, prompt, resume, then=then, attachments=attachments), slot)


async def answer(
    host: Host, responses: dict[str, dict[str, str]], begin: Callable[..., Awaitable[None]] | None = None
) -> None:
    """Resume the run paused for approval with these answers, signed with the connection's user (started by
    ``begin``, ``start`` unless given)."""
    pending = await database_sync_to_async(pending_approval)(host.conversation_id)
    if pending is None:
        await host.send_error(protocol.ERR_NO_PENDING_APPROVAL, BUSY_MESSAGES[protocol.ERR_NO_PENDING_APPROVAL])
        return
    known = {interrupt["id"] for interrupt in pending["interrupts"]}
    if not set(responses) <= known:
        await host.send_error(protocol.ERR_UNKNOWN_INTERRUPT, "No pending approval has this interrupt id.")
        return
    user = user_label(host.user)
    answers = {interrupt_id: {**reply, "user": user} for interrupt_id, reply in responses.items()}
    await (begin or start)(host, "", {"run_id": pending["run_id"], "state": pending["state"], "responses": answers})


def _sinks(host: Host, run_id: str) -> tuple[list[Callable[[dict[str, Any]], Any]], GroupBroadcaster | None]:
    """The sinks of a run's frames after the socket: its log and the group broadcast (none without a layer)."""
    if host.channel_layer is None:
        return [], None
    conversation_id = host.conversation_id
    # The log exists before the run's row does, so a connection that sees the row can get a replay.
    log = runlog.start(run_id, conversation_id)
    layer: Any = host.channel_layer
    if host.in_room():
        hub = hub_for(layer)
        layer = LocalFirst(layer, hub, conversation_id, lambda: _others_may_watch(conversation_id, log, hub))
    broadcaster = GroupBroadcaster(
        layer,
        host.group,
        host.channel_name,
        app_settings.BROADCAST_WINDOW_SECONDS,
        log=log,
        watched=lambda: _watched(conversation_id, host.channel_name, log),
    )
    return [log.note_sent, broadcaster.publish], broadcaster


def _others_may_watch(conversation_id: str, log: runlog.RunLog, hub: Hub) -> bool:
    """Whether a connection on another process may follow the run: one asked for its frames, another process counts
    connections to the conversation, or this process no longer counts them (all its connections left)."""
    view = presence_views.get(conversation_id)
    return log.followed or view is None or bool(view.remote) or hub.room(conversation_id) is None


def _watched(conversation_id: str, asker: str, log: runlog.RunLog) -> bool:
    """Whether a connection besides the asker may follow its run: others are counted, or one asked for a replay."""
    view = presence_views.get(conversation_id)
    if log.followed or view is None:
        return True
    return view.watchers > (1 if asker in view.local else 0)


async def drive(
    host: Host,
    slot: registry.Slot,
    prompt: str,
    resume: dict[str, Any] | None,
    run_id: str | None = None,
    then: AfterRun | None = None,
    attachments: list[Any] | None = None,
) -> None:
    """Build the connection's agent if needed, run the prompt (or the approval answers) and hand on its frames.

    ``run_id`` names a queued run this process claimed (agentapp.queueing); ``then`` is called at the end.
    """
    try:
        if host.agent is None:
            try:
                extend = preparing.extension_of(host)
                host.agent = await preparing.build_off_thread(host.conversation, host.user, extend)
            except Exception as exc:
                await _unavailable(host, exc)
                return
        await _execute(host, slot, prompt, resume, run_id, attachments)
    finally:
        registry.release(slot)
        if then is not None:
            await then()


async def _execute(
    host: Host,
    slot: registry.Slot,
    prompt: str,
    resume: dict[str, Any] | None,
    run_id: str | None,
    attachments: list[Any] | None = None,
) -> None:
    agent, conversation_id = host.agent, host.conversation_id
    sinks: list[Callable[[dict[str, Any]], Any]] = []
    first_text = True

    async def emit(frame: dict[str, Any]) -> None:
        nonlocal first_text
        await host.send_frame(frame)
        for sink in sinks:
            sink(frame)
        if first_text and frame["type"] == protocol.DATA:
            first_text = False
            await host.flush()  # the first token leaves now, not merged with those the model streams right after it

    team = multiagent.is_team(agent)  # a Swarm or a Graph (agentapp.multiagent)
    if team and attachments:
        await host.send_error(protocol.ERR_INVALID_FRAME, multiagent.NO_ATTACHMENTS)
        return
    run = (multiagent.MultiAgentRun if team else AgentRun)(
        agent,
        prompt,
        conversation_id,
        emit,
        user_id=host.user.pk if is_authenticated(host.user) else None,
        resume_of=resume["run_id"] if resume else None,
        responses=resume["responses"] if resume else None,
        runs_per_minute=app_settings.RUNS_PER_USER_PER_MINUTE,
        prepare=None if team else lambda: preparing.give_history(agent, conversation_id, resume and resume["state"]),
        announce_dead=host.announce_dead,
        attachments=attachments or [],
        **({"run_id": run_id, "claimed": True} if run_id is not None else {}),
    )
    more, broadcaster = _sinks(host, run.run_id)
    sinks.extend(more)
    slot.attach(run)
    started = True
    try:
        titles.after_run(conversation_id, run.run_id, await run.execute(app_settings.RUN_TIME_LIMIT_SECONDS))
    except QuotaExceeded as spent:
        started = False
        await host.send_frame(
            {**protocol.error_frame(conversation_id, spent.code, spent.message), "resets_at": spent.resets_at}
        )
    except ConversationBusy as busy:
        started = False
        await host.send_error(busy.code, BUSY_MESSAGES.get(busy.code, BUSY_MESSAGES[protocol.ERR_BUSY]))
    except AgentUnavailable as unavailable:
        started = False
        await _unavailable(host, unavailable.__cause__)
    except Exception:
        # AgentRun.execute reports its own failures; whatever escapes still reaches the client, never a log only.
        logger.exception("agentapp: run %s of %s failed", run.run_id, conversation_id)
        await host.send_error(protocol.ERR_RUN_FAILED, "The run failed.")
    finally:
        registry.release(slot)  # a new prompt is taken while the broadcast flushes (the next run waits for it)
        if broadcaster is not None:
            await broadcaster.close()
            runlog.retire(run.run_id, app_settings.RUN_LOG_KEEP_SECONDS if started else 0)


async def _unavailable(host: Host, cause: BaseException | None) -> None:
    """Tell the asker why its prompt did not start: the agent could not be built or given its history."""
    if isinstance(cause, StaleApprovalState):
        logger.warning("agentapp: the approval state of %s no longer fits its history", host.conversation_id)
        await db_call(cancel_approval)(host.conversation_id, "agentapp")
        await host.send_error(protocol.ERR_RUN_FAILED, "The pending approval no longer fits the conversation.")
        return
    logger.error("agentapp: could not build the agent for %s", host.conversation_id, exc_info=cause)
    await host.send_error(protocol.ERR_RUN_FAILED, "The agent could not be started.")
