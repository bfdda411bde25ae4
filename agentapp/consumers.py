"""The WebSocket consumer: an adapter between Channels and agentapp's run path (see ``docs/design.md``).

Every connection joins its process's room of the conversation (``agentapp.hub``), which receives the group's
messages once per process. A prompt becomes a run in the process's registry (``agentapp.registry``) driven by
``agentapp.runs``: its frames go to this socket at once and to the group; the other connections forward them
through a ``following.Watch``, which keeps them in order, drops repeats and asks for a replay when frames are
missing. A connection opened mid-run gets the run from its first frame that way (``agentapp.opening``). Frames
leave through the connection's ``sending.Sender``; a cancel goes through its ``cancelling.Cancels``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import closing, opening, protocol, registry, runlog, submitting
from .access import NOT_FOUND, OWNER, is_authenticated, may_prompt
from .broadcast import FRAME_MESSAGE_TYPE
from .cancelling import Cancels
from .conf import app_settings
from .feedback import on_frame as on_feedback_frame
from .following import Watch, answer_sync
from .hub import Inbox, Room
from .pacing import CLOSE_TOO_MANY_FRAMES, ERR_TOO_MANY_FRAMES, FramePace, Verdict
from .presence import Presence
from .sending import Sender

logger = logging.getLogger(__name__)


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
        close timeout) still gets it counted out of presence, out of the group and its run stopped, in one bounded
        step: ``tests/test_disconnect.py::test_a_connection_the_server_kills_mid_cleanup_still_leaves_its_group``.
        """
        self.inbox = Inbox()
        self.sender = Sender(self)
        self.cancels = Cancels(self)
        self.tasks: set[asyncio.Task[None]] = set()
        self.pace = FramePace(app_settings.CLIENT_FRAME_BURST, app_settings.CLIENT_FRAMES_PER_SECOND)
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.inbox.stop()
            await self.sender.stopped()
            if not self.cleaned_up:
                await asyncio.gather(closing.last_cleanup(self), return_exceptions=True)

    async def connect(self) -> None:
        """Authorize the user, join the conversation's group, then send its history (and any run in progress)."""
        await opening.open_connection(self)

    async def disconnect(self, code: int) -> None:
        """Stop this connection's run, count it out and leave the group, within ``DISCONNECT_TIMEOUT_SECONDS``."""
        await closing.disconnect(self)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the message's handler, without Channels' hop to the database thread before each one.

        ``AsyncConsumer.dispatch`` closes stale connections in the database thread before every handler: once per
        group frame of a run, on the thread every connection's queries share. Every query here runs through
        ``database_sync_to_async``, which closes stale connections itself around each call
        (``tests/test_run_control.py::test_messages_skip_the_database_thread``).
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    ### Group messages from the room, and this connection's own channel ###

    @property
    def channel_receive(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        """What Channels' dispatch loop awaits for channel-layer messages: this connection's inbox, which its room
        fills (``tests/test_hub.py::test_a_group_message_is_received_once_per_process_and_reaches_every_socket``)."""
        return lambda: self.inbox.get(self.channel_layer, self._layer_receive)

    @channel_receive.setter
    def channel_receive(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        # Set by AsyncConsumer.__call__: the receive of this connection's own channel, which the inbox reads.
        self._layer_receive = receive

    def hub_deliver(self, message: dict[str, Any]) -> None:
        """A group message from the room: a run's frame is forwarded at once when nothing waits before it."""
        if message["type"] == FRAME_MESSAGE_TYPE:
            self.cancels.forget()  # a run of the conversation is (or was) going on
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
        if active is None or streams_here:
            await self.watch.rejoined(None)
        else:
            await self.watch.rejoined(active["run_id"], active["origin"] or None)
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
            await submitting.prompt(self, frame.prompt, frame.if_busy, frame.attachments)
        elif frame.type == protocol.CLIENT_CANCEL and frame.run_id:
            await submitting.cancel_queued(self, frame.run_id)
        elif frame.type == protocol.CLIENT_CANCEL:
            await self.cancels.request()
        elif frame.type == protocol.CLIENT_INTERRUPT_RESPONSE:
            await submitting.answer(self, frame.responses or {})
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

    def run_started(self, slot: registry.Slot) -> None:
        """This connection's prompt was accepted: ``disconnect`` stops its run, and a cancel looks for it again."""
        self.cancels.forget()
        self.run_slot = slot

    def in_room(self) -> bool:
        """Whether this connection follows its conversation through the process's room (agentapp.hub)."""
        return self.room is not None

    async def announce_dead(self, run_id: str) -> None:
        """Tell this connection and the group that a run whose process died was ended ``interrupted``."""
        await self.cancels.announce_dead(run_id)

    def spawn(self, work: Any, name: str) -> None:
        """Run ``work`` in a task of this connection (cancelled when it closes)."""
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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
        self.cancels.forget()
        if message.get("origin") != self.channel_name:
            await self.deliver([message["frame"]])

    async def agentapp_queue(self, message: dict[str, Any]) -> None:
        """A prompt was queued, or a queued one left the queue, on another connection or a worker."""
        if message["frame"]["type"] == protocol.RUN_QUEUED:
            registry.queue_seen.add(self.conversation_id)  # a run of it ending here starts the queue
        if message.get("origin") != self.channel_name:
            await self.deliver([message["frame"]])

    async def agentapp_feedback(self, message: dict[str, Any]) -> None:
        """Feedback was given, changed or taken back on another connection or through the API."""
        if message.get("origin") != self.channel_name:
            await self.deliver([message["frame"]])

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

    async def deliver(self, frames: list[dict[str, Any]]) -> None:
        """Forward frames outside any run this connection streams (held while its conversation frame waits)."""
        if self.watch is not None:
            await self.watch.deliver(frames)
        elif self.role is not None:
            for frame in frames:
                await self.send_frame(frame)

    ### Sending (agentapp.sending) ###

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue one frame for the socket as JSON text; a socket too far behind is closed as a slow consumer."""
        await self.sender.send_frame(frame)

    async def flush(self) -> None:
        """Let the frames queued so far leave before more are queued (``sending.Sender.flush``)."""
        await self.sender.flush()

    def queue_frame(self, frame: dict[str, Any]) -> bool:
        """Put a frame in the outbox; False (and the socket closed as a slow consumer) when it is too far behind."""
        return self.sender.queue_frame(frame)

    async def send_error(self, code: str, message: str) -> None:
        """Send an ``error`` frame outside any run."""
        await self.sender.send_error(code, message)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the socket after the frames already queued for it, not ahead of them as Channels' ``close`` would
        (``tests/test_access.py::test_anonymous_needs_login_when_anonymous_is_off``: the error frame, then 4401)."""
        await self.sender.close(code, reason)
