"""The WebSocket consumer: an adapter between Channels and agentapp's run path (see ``docs/design.md``).

Every connection joins its process's room of the conversation (``agentapp.hub``), which receives the group's
messages once per process. A prompt becomes a run in the process's registry (``agentapp.registry``) driven by
``agentapp.runs``: its frames go to this socket at once and to the group; the other connections forward them
through a ``following.Watch``, which keeps them in order, drops repeats and asks for a replay when frames are
missing. A connection opened mid-run gets the run from its first frame that way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import leases, opening, protocol, registry, runlog, runs
from .access import (
    FORBIDDEN,
    NOT_FOUND,
    OWNER,
    Denied,
    is_authenticated,
    is_stored,
    may_prompt,
    open_with_role,
    store_new,
)
from .broadcast import (
    FRAME_MESSAGE_TYPE,
    group_name,
    layer_call,
)
from .conf import app_settings
from .dbwork import db_call
from .feedback import on_frame as on_feedback_frame
from .following import Watch, answer_sync, resume_point
from .hub import Inbox, Room, hub_for
from .messages import resolved_message
from .outbox import Outbox, write_flow
from .pacing import CLOSE_TOO_MANY_FRAMES, ERR_TOO_MANY_FRAMES, FramePace, Verdict
from .presence import Presence, wants_presence
from .recorder import pending_approval
from .runs import BUSY_MESSAGES

logger = logging.getLogger(__name__)


# How long a cancel that found nothing to stop answers a repeated cancel from memory, with no database work.
NOTHING_TO_CANCEL_MEMO_SECONDS = 1.0


async def _until(deadline: float, step: Awaitable[Any], what: str) -> None:
    """Await a cleanup step until the loop time ``deadline``; past it, log and go on without it."""
    try:
        async with asyncio.timeout_at(deadline):
            await step
    except TimeoutError:
        logger.warning("agentapp: %s took too long when a socket closed; cleanup goes on without it", what)


class AgentConsumer(AsyncWebsocketConsumer):
    """Talks the agentapp wire protocol (see ``docs/protocol.md``) for one conversation."""

    conversation: Any = None
    conversation_id: str | None = None
    # "owner", "member" or "viewer" (see agentapp.access); None once access is revoked.
    role: str | None = None
    group: str | None = None
    agent: Any = None
    # The run this connection's prompt started, from the accepted prompt until its end (agentapp.registry).
    run_slot: registry.Slot | None = None
    outbox: Outbox | None = None
    # How this connection follows its conversation's runs (agentapp.following); None until it may.
    watch: Watch | None = None
    # Counts the connections open on the conversation (agentapp.presence); None until access is granted.
    presence: Presence | None = None
    # True once the connection left its group and presence (``disconnect``, or the last cleanup of a killed one).
    cleaned_up: bool = False
    # The process's subscription to the conversation's group this connection gets group messages from (agentapp.hub).
    room: Room | None = None

    ### Connection ###

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve the connection; the writer task ends with it, even when the server cancels the connection.

        A server that kills the application before ``disconnect`` ran or finished (daphne does after its application
        close timeout) still gets it counted out of presence, out of the group and its run stopped, in one bounded step.
        """
        self.inbox = Inbox()
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.inbox.stop()
            if self.outbox is not None:
                self.outbox.stop()
                await asyncio.gather(self.outbox.task, return_exceptions=True)
            if not self.cleaned_up:
                await asyncio.gather(self._last_cleanup(), return_exceptions=True)

    async def _last_cleanup(self) -> None:
        """What ``disconnect`` would have done, none of it waited for longer than one layer call."""
        if self.run_slot is not None and not app_settings.RUNS_CONTINUE_ON_DISCONNECT:
            self.run_slot.cancel()
        for task in getattr(self, "tasks", ()):
            task.cancel()
        bound = app_settings.BROADCAST_SEND_TIMEOUT_SECONDS
        if self.presence is not None:
            await _until(asyncio.get_running_loop().time() + bound, self.presence.stop(), "counting the connection out")
        await self._leave_room()
        self.cleaned_up = True

    async def _leave_room(self) -> None:
        room, self.room = self.room, None
        if room is not None:
            await hub_for(self.channel_layer).leave(room, self)

    async def connect(self) -> None:
        """Authorize the user, join the conversation's group, then send its history (and any run in progress)."""
        self.user = self.scope.get("user")
        self.tasks: set[asyncio.Task[None]] = set()
        self.pace = FramePace(app_settings.CLIENT_FRAME_BURST, app_settings.CLIENT_FRAMES_PER_SECOND)
        # When a cancel last found nothing to stop (see request_cancel); None once a run may have started since.
        self.nothing_to_cancel_at: float | None = None
        session_key = await self._session_key()
        conversation_id = self.scope.get("url_route", {}).get("kwargs", {}).get("conversation_id")
        opened = await db_call(open_with_role)(self.user, session_key, conversation_id)
        await self.accept()
        self.outbox = Outbox(
            self.base_send,
            app_settings.SOCKET_QUEUE_FRAMES,
            flow=write_flow(self.scope),
            stall_seconds=app_settings.SOCKET_WRITE_STALL_SECONDS,
            on_stall=self._close_slow_consumer,
        )
        if isinstance(opened, Denied):
            await self.send_frame(protocol.error_frame(None, opened.code, opened.message))
            await self.close(code=opened.close_code)
            return
        self.conversation, self.role = opened.conversation, opened.role
        self.conversation_id = str(opened.conversation.pk)
        self.group = group_name(self.conversation_id)
        if self.channel_layer is not None:
            # Join before reading the history: a frame sent after the read is then sure to arrive.
            self.room = await hub_for(self.channel_layer).join(self.conversation_id, self)
        # A fresh conversation has no row yet, so nothing to read: no database hop.
        args = (self.conversation, self.user, session_key, self.role)
        if is_stored(self.conversation):
            opened_now = await db_call(opening.read)(*args)
        else:
            opened_now = opening.read(*args)
        if opened_now is None:
            # Removed (or the conversation deleted) between the access check and joining the group: the announcement
            # of it went out before this connection listened, so it is applied here.
            await self.send_frame(protocol.error_frame(None, FORBIDDEN.code, FORBIDDEN.message))
            await self.close(code=FORBIDDEN.close_code)
            self.role = None  # nothing more is forwarded; disconnect leaves the group
            return
        self.role = opened_now.role
        self.watch = watch = Watch(self, opened_now.settled_runs())
        refused: list[dict[str, Any]] = []
        try:
            resume = resume_point(self.scope)
        except protocol.ProtocolError as error:
            resume = None
            refused.append(protocol.error_frame(self.conversation_id, error.code, error.message))
        # Started with no await before the conversation frame is sent or held below, so its frames come after it.
        self.presence = Presence(
            self.channel_layer,
            self.group,
            self.channel_name,
            self.conversation_id,
            (lambda frame: watch.deliver([frame])) if wants_presence(self.scope) else None,
        )
        self.presence.start()
        if opened_now.active_run_id is not None and self.channel_layer is not None:
            await watch.open_mid_run(opened_now.hello, resume, refused)
            return
        await watch.deliver([opened_now.hello, *refused])
        for run_id in opened_now.ended:  # runs whose process died, ended by this connection: the others are told
            await self.announce_dead(run_id)
        if resume is not None:
            await self.resume_run(*resume)

    async def _session_key(self) -> str | None:
        session = self.scope.get("session")
        if session is None or is_authenticated(self.scope.get("user")):
            return None
        if not session.session_key and app_settings.ALLOW_ANONYMOUS:
            await database_sync_to_async(session.save)()
        return session.session_key

    async def disconnect(self, code: int) -> None:
        """Stop this connection's run (its stream is closed and the run saved), then leave the group.

        Every step is bounded: the whole takes at most ``DISCONNECT_TIMEOUT_SECONDS`` (keep it under the server's
        application close timeout, 10 s for daphne, or the server kills the connection before it is counted out).
        """
        if self.outbox is not None:
            self.outbox.stop()
        for task in getattr(self, "tasks", ()):
            task.cancel()
        leave = app_settings.BROADCAST_SEND_TIMEOUT_SECONDS  # group_discard's own bound, kept for last
        deadline = asyncio.get_running_loop().time() + max(0.0, app_settings.DISCONNECT_TIMEOUT_SECONDS - leave)
        if self.presence is not None:
            await _until(deadline, self.presence.stop(), "counting the connection out")
        slot, self.run_slot = self.run_slot, None
        # With RUNS_CONTINUE_ON_DISCONNECT the run goes on without this socket: its frames still reach the group, and
        # any connection cancels it.
        running = slot is not None and slot.task is not None and not slot.task.done()
        if running and not app_settings.RUNS_CONTINUE_ON_DISCONNECT:
            slot.cancel()
            # Shielded: past the deadline the run still ends and saves in its task (the registry keeps it).
            await _until(deadline, asyncio.shield(slot.task), "saving the cancelled run")
        await self._leave_room()
        self.cleaned_up = True

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the message's handler, without Channels' hop to the database thread before each one.

        ``AsyncConsumer.dispatch`` closes stale connections in the database thread before every handler: once per
        group frame of a run, on the thread every connection's queries share. Every query here runs through
        ``database_sync_to_async``, which closes stale connections itself around each call.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    ### Group messages from the room, and this connection's own channel ###

    @property
    def channel_receive(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        """What Channels' dispatch loop awaits for channel-layer messages: this connection's inbox."""
        return lambda: self.inbox.get(self.channel_layer, self._layer_receive)

    @channel_receive.setter
    def channel_receive(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        # Set by AsyncConsumer.__call__: the receive of this connection's own channel, which the inbox reads.
        self._layer_receive = receive

    def hub_deliver(self, message: dict[str, Any]) -> None:
        """A group message from the room: a run's frame is forwarded at once when nothing waits before it."""
        if message["type"] == FRAME_MESSAGE_TYPE:
            self.nothing_to_cancel_at = None  # a run of the conversation is (or was) going on
            if self.inbox.empty() and self.watch is not None and self.watch.forward_now(message):
                return
        self.inbox.put(message)

    def inbox_put(self, message: dict[str, Any]) -> None:
        """Queue a message for this connection's handlers, after those waiting."""
        self.inbox.put(message)

    async def agentapp_requests(self, message: dict[str, Any]) -> None:
        """Frames forwarded at once showed a gap: ask for the missing ones."""
        if self.watch is not None:
            await self.watch.request_replays()

    async def agentapp_rejoined(self, message: dict[str, Any]) -> None:
        """Back in the group after the layer failed: ask for what was missed of the runs being followed."""
        if self.watch is None:
            return
        _, active = await database_sync_to_async(runlog.snapshot)(self.conversation_id, 1)
        streams_here = registry.slot_of(self.conversation_id) is not None
        await self.watch.rejoined(active["run_id"] if active is not None and not streams_here else None)
        if self.presence is not None:
            await self.presence.announce()  # peers that joined meanwhile, or dropped this one, answer

    ### Client frames ###

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Validate a client frame and dispatch it; bad frames get an ``error`` frame, never a traceback.

        Frames over the connection's pace are refused before parsing (see agentapp.pacing), at no database cost.
        """
        if self.conversation_id is None or self.role is None:
            return
        verdict = self.pace.check()
        if verdict is not Verdict.ACCEPT:
            await self._refuse_frame(verdict)
            return
        try:
            frame = protocol.parse_client_frame(
                text_data, bytes_data, app_settings.MAX_FRAME_BYTES, app_settings.MAX_PROMPT_CHARS
            )
        except protocol.ProtocolError as error:
            await self.send_error(error.code, error.message)
            return
        if frame.type == protocol.CLIENT_RESUME:
            await self.resume_run(frame.run_id, frame.seq)
        elif not may_prompt(self.role):
            await self.send_error(
                protocol.ERR_READ_ONLY,
                "You may watch this conversation, not prompt, cancel, answer approvals or give feedback.",
            )
        elif frame.type == protocol.CLIENT_PROMPT:
            await self.start_run(frame.prompt)
        elif frame.type == protocol.CLIENT_CANCEL:
            await self.request_cancel()
        elif frame.type == protocol.CLIENT_INTERRUPT_RESPONSE:
            await self.answer_interrupts(frame.responses or {})
        elif frame.type == protocol.CLIENT_FEEDBACK:
            await on_feedback_frame(self, frame)

    async def _refuse_frame(self, verdict: Verdict) -> None:
        if verdict is Verdict.REFUSE:
            await self.send_error(ERR_TOO_MANY_FRAMES, "Too many frames; slow down (frames are dropped until then).")
        elif verdict is Verdict.CLOSE:
            logger.info("agentapp: closing a socket of %s that kept flooding client frames", self.conversation_id)
            await self.send_error(ERR_TOO_MANY_FRAMES, "Too many frames: the connection is closed.")
            await self.close(code=CLOSE_TOO_MANY_FRAMES)
            self.role = None  # nothing more is accepted

    async def start_run(self, prompt: str, resume: dict[str, Any] | None = None) -> None:
        """Start a run in a task, so this consumer keeps reading frames (a cancel) while it streams."""
        busy = registry.slot_of(self.conversation_id)
        if busy is not None:
            mine = busy.owner == self.channel_name
            message = "A run is already in progress on this connection." if mine else BUSY_MESSAGES[protocol.ERR_BUSY]
            await self.send_error(protocol.ERR_BUSY, message)
            return
        if registry.full():
            await self.send_error(protocol.ERR_SERVER_BUSY, "The server runs too many agents now; try again shortly.")
            return
        if not is_stored(self.conversation):  # the first prompt of a fresh conversation writes its row
            refused = await db_call(store_new)(self.conversation)
            if refused is not None:
                await self.send_error(refused.code, refused.message)
                return
        slot = registry.claim(self.conversation_id, self.channel_name)
        if slot is None:  # another connection's prompt was accepted while the row was written
            await self.send_error(protocol.ERR_BUSY, BUSY_MESSAGES[protocol.ERR_BUSY])
            return
        self.nothing_to_cancel_at = None
        self.run_slot = slot
        registry.start(self.conversation_id, runs.drive(self, slot, prompt, resume), slot)

    def in_room(self) -> bool:
        """Whether this connection follows its conversation through the process's room (agentapp.hub)."""
        return self.room is not None

    async def answer_interrupts(self, responses: dict[str, dict[str, str]]) -> None:
        """Resume the run paused for approval with these answers, signed with the connection's user."""
        pending = await database_sync_to_async(pending_approval)(self.conversation_id)
        if pending is None:
            await self.send_error(protocol.ERR_NO_PENDING_APPROVAL, BUSY_MESSAGES[protocol.ERR_NO_PENDING_APPROVAL])
            return
        known = {interrupt["id"] for interrupt in pending["interrupts"]}
        if not set(responses) <= known:
            await self.send_error(protocol.ERR_UNKNOWN_INTERRUPT, "No pending approval has this interrupt id.")
            return
        user = self._user_label()
        answers = {interrupt_id: {**answer, "user": user} for interrupt_id, answer in responses.items()}
        await self.start_run("", resume={"run_id": pending["run_id"], "state": pending["state"], "responses": answers})

    def _user_label(self) -> str:
        return self.user.get_username() if is_authenticated(self.user) else "anonymous"

    async def request_cancel(self) -> None:
        """Cancel the conversation's run, here or on any other connection or process, or its wait for approval.

        A cancel repeated soon after one that found nothing is answered from memory, with no database work.
        """
        if registry.slot_of(self.conversation_id) is None and self._nothing_to_cancel_still():
            await self.send_error(protocol.ERR_NO_ACTIVE_RUN, "There is no run to cancel.")
            return
        done = await registry.cancel(self.conversation_id, self._user_label(), self.channel_layer, self.group)
        for run_id in done.ended:
            await self.announce_dead(run_id)
        if done.elsewhere:
            self.spawn(self._end_if_dead_later(), "agentapp-cancel-watch")
        elif done.cleared and not done.ended:
            frame = {
                "type": protocol.INTERRUPT_RESOLVED,
                "conversation_id": self.conversation_id,
                "run_id": done.cleared["run_id"],
                "interrupt_ids": [interrupt["id"] for interrupt in done.cleared["interrupts"]],
                "outcome": protocol.STATUS_CANCELLED,
            }
            await self.send_frame(frame)
            if self.channel_layer is not None:
                message = resolved_message(frame, self.channel_name)
                await layer_call(self.channel_layer.group_send(self.group, message), "group_send")
        elif done.nothing:
            self.nothing_to_cancel_at = time.monotonic()
            await self.send_error(protocol.ERR_NO_ACTIVE_RUN, "There is no run to cancel.")

    async def _end_if_dead_later(self) -> None:
        """A cancel went to a run of another process: if that process is dead, end the run once its lease lapses."""
        await asyncio.sleep(app_settings.RUN_LEASE_SECONDS + leases.renew_every())
        state = await database_sync_to_async(leases.running_state)(self.conversation_id)
        for run_id in state.ended:
            await self.announce_dead(run_id)

    async def announce_dead(self, run_id: str) -> None:
        """Tell this connection and the group that a run whose process died was ended ``interrupted``."""
        frame = {
            "type": protocol.RUN_FINISHED,
            "conversation_id": self.conversation_id,
            "run_id": run_id,
            "status": protocol.STATUS_INTERRUPTED,
            "stop_reason": "",
            "error": leases.DEAD_RUN_ERROR,
        }
        await self._deliver([frame])
        if self.channel_layer is not None:
            message = resolved_message(frame, self.channel_name)
            await layer_call(self.channel_layer.group_send(self.group, message), "group_send")

    def spawn(self, work: Any, name: str) -> None:
        """Run ``work`` in a task of this connection (cancelled when it closes)."""
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _nothing_to_cancel_still(self) -> bool:
        """Whether the last cancel found nothing, so recently that no run can have started unseen since."""
        at = self.nothing_to_cancel_at
        return at is not None and time.monotonic() - at < NOTHING_TO_CANCEL_MEMO_SECONDS

    async def resume_run(self, run_id: str, seq: int) -> None:
        """Send the frames of a run of this conversation past ``seq``, then its live ones (agentapp.following).

        The run this connection streams itself needs nothing: its socket has every frame.
        """
        slot = self.run_slot
        own = slot.run if slot is not None and registry.slot_of(self.conversation_id) is slot else None
        if self.watch is not None and (own is None or own.run_id != run_id):
            await self.watch.resume(run_id, seq)

    ### Group messages ###

    async def agentapp_frame(self, message: dict[str, Any]) -> None:
        """A frame of a run started on another connection to this conversation."""
        if self.watch is not None:
            await self.watch.on_frame(message)

    async def agentapp_cancel(self, message: dict[str, Any]) -> None:
        """Another connection asked to cancel the conversation's run; the process running it obeys."""
        registry.cancel_here(self.conversation_id)

    async def agentapp_resolved(self, message: dict[str, Any]) -> None:
        """A wait for approval ended without a new run (another connection cancelled it)."""
        self.nothing_to_cancel_at = None
        if message.get("origin") != self.channel_name:
            await self._deliver([message["frame"]])

    async def agentapp_feedback(self, message: dict[str, Any]) -> None:
        """Feedback was given, changed or taken back on another connection or through the API."""
        if message.get("origin") != self.channel_name:
            await self._deliver([message["frame"]])

    async def agentapp_presence(self, message: dict[str, Any]) -> None:
        """Another connection to the conversation joined, is still here, or left."""
        if self.presence is not None:
            await self.presence.receive(message)

    async def agentapp_title(self, message: dict[str, Any]) -> None:
        """The conversation was renamed (the API, or the title generator after its first answer)."""
        await self.send_frame(message["frame"])

    async def agentapp_access(self, message: dict[str, Any]) -> None:
        """The owner changed a user's role; this connection follows if it is that user's."""
        if self.role in (None, OWNER) or not is_authenticated(self.user) or message.get("user_id") != self.user.pk:
            return
        self.role = message.get("role")
        if self.role is None:
            await self.send_error(protocol.ERR_FORBIDDEN, "The conversation is no longer shared with you.")
            await self.close(code=protocol.CLOSE_FORBIDDEN)

    async def agentapp_deleted(self, message: dict[str, Any]) -> None:
        """The conversation was deleted: nothing more can be read or stored in it."""
        if self.role is None:
            return
        self.role = None
        registry.cancel_here(self.conversation_id)
        await self.send_frame(
            protocol.error_frame(self.conversation_id, NOT_FOUND.code, "The conversation was deleted.")
        )
        await self.close(code=NOT_FOUND.close_code)

    async def agentapp_sync(self, message: dict[str, Any]) -> None:
        """A connection asks for a run's frames; the room gave the request to this connection to answer for the
        process, from its log of the run."""
        await answer_sync(self.channel_layer, self.conversation_id, self.channel_name, message)

    async def agentapp_replay(self, message: dict[str, Any]) -> None:
        """A chunk of a replay this connection asked for."""
        if self.watch is not None:
            await self.watch.on_replay(message)

    async def _deliver(self, frames: list[dict[str, Any]]) -> None:
        """Forward frames outside any run this connection streams (held while its conversation frame waits)."""
        if self.watch is not None:
            await self.watch.deliver(frames)
        elif self.role is not None:
            for frame in frames:
                await self.send_frame(frame)

    ### Sending ###

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue one frame for the socket as JSON text; a socket too far behind is closed as a slow consumer."""
        outbox = self.outbox
        if outbox is None:
            await self.send(text_data=protocol.encode_frame(frame))
            return
        if self.queue_frame(frame) and outbox.backlog > outbox.limit // 2:
            await asyncio.sleep(0)  # let the writer task run before a burst of frames fills the queue

    def queue_frame(self, frame: dict[str, Any]) -> bool:
        """Put a frame in the outbox; False (and the socket closed as a slow consumer) when it is too far behind."""
        outbox = self.outbox
        assert outbox is not None
        if outbox.put(frame):
            return True
        if outbox.overflowed and not outbox.closed:
            self._close_slow_consumer(outbox)
        return False

    def _close_slow_consumer(self, outbox: Outbox) -> None:
        """Close a socket whose client does not read: drop the frames waiting, send ``slow_consumer`` and 4429."""
        if outbox.stalled:
            logger.info(
                "agentapp: closing a slow consumer socket of %s: its writes waited %ss for the client to read",
                self.conversation_id,
                outbox.stall_seconds,
            )
        else:
            logger.info(
                "agentapp: closing a slow consumer socket of %s: it fell %d frames behind",
                self.conversation_id,
                outbox.limit,
            )
        error = protocol.error_frame(
            self.conversation_id, protocol.ERR_SLOW_CONSUMER, "This connection fell too far behind and is closed."
        )
        outbox.finish(
            [
                {"type": "websocket.send", "text": protocol.encode_frame(error)},
                {"type": "websocket.close", "code": protocol.CLOSE_SLOW_CONSUMER},
            ],
            drop_waiting=True,
        )
        self.role = None  # nothing more is forwarded or accepted

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the socket after the frames already queued for it."""
        if self.outbox is None or self.outbox.closed:
            if self.outbox is None:
                await super().close(code, reason)
            return
        message: dict[str, Any] = {"type": "websocket.close"}
        if code is not None and code is not True:
            message["code"] = code
        if reason:
            message["reason"] = reason
        self.outbox.finish([message])

    async def send_error(self, code: str, message: str) -> None:
        """Send an ``error`` frame outside any run."""
        await self.send_frame(protocol.error_frame(self.conversation_id, code, message))
