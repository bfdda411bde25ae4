"""The WebSocket consumer: one agent per connection, runs in a task, frames to the socket and the group.

Every connection to a conversation joins its channel-layer group. The connection running a prompt sends
each frame to its own socket at once and hands it to a ``GroupBroadcaster``; the others forward the
group's (merged) frames through a ``Follower``, which keeps them in order, drops repeats and asks for a
replay when frames are missing. A connection opened mid-run gets the run from its first frame that way.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import leases, preparing, protocol, runlog, titles
from .access import (
    FORBIDDEN,
    NOT_FOUND,
    OWNER,
    Denied,
    is_authenticated,
    is_stored,
    may_prompt,
    open_with_role,
    role_of,
    store_new,
)
from .approvals import StaleApprovalState
from .broadcast import (
    CANCEL_MESSAGE_TYPE,
    REJOINED_MESSAGE_TYPE,
    REPLAY_MESSAGE_TYPE,
    SYNC_MESSAGE_TYPE,
    Follower,
    GroupBroadcaster,
    SyncRequest,
    _Followed,
    group_name,
    layer_call,
    layer_health,
    watch_receive_cleaners,
)
from .conf import app_settings
from .feedback import listing as feedback_listing
from .feedback import on_frame as on_feedback_frame
from .outbox import Outbox, write_flow
from .pacing import CLOSE_TOO_MANY_FRAMES, ERR_TOO_MANY_FRAMES, FramePace, Verdict
from .presence import Presence, wants_presence
from .recorder import AgentUnavailable, ConversationBusy, QuotaExceeded, cancel_approval, pending_approval
from .runner import AgentRun

logger = logging.getLogger(__name__)

# Group message telling every connection that a wait for approval ended without a new run (a cancel).
RESOLVED_MESSAGE_TYPE = "agentapp.resolved"

# The run tasks of this process, from an accepted prompt to their end (MAX_CONCURRENT_RUNS counts them), and
# each conversation's run streaming here, so any connection of the process can cancel it (even one whose socket
# closed while RUNS_CONTINUE_ON_DISCONNECT keeps it going).
process_runs: set[asyncio.Task[None]] = set()
runs_here: dict[str, AgentRun] = {}

_SEQ_RE = re.compile(r"-?[0-9]{1,16}")
# How long a cancel that found nothing to stop answers a repeated cancel from memory, with no database work.
NOTHING_TO_CANCEL_MEMO_SECONDS = 1.0


async def _until(deadline: float, step: Awaitable[Any], what: str) -> None:
    """Await a cleanup step until the loop time ``deadline``; past it, log and go on without it."""
    try:
        async with asyncio.timeout_at(deadline):
            await step
    except TimeoutError:
        logger.warning("agentapp: %s took too long when a socket closed; cleanup goes on without it", what)


def _first_position(history: list[dict[str, Any]]) -> int:
    """The position of the first message the conversation frame carries (feedback before it is left out)."""
    return history[0]["position"] if history else 0


def _opening(
    conversation: Any, user: Any, session_key: str | None, ended: list[str]
) -> tuple[str, list, Any, Any, list] | None:
    """What a connection reads once it joined its conversation's group, in one database hop: the role again (a
    change made before the join was announced to a group this connection was not in yet), the history, the run in
    progress, the wait for approval and the feedback; None when it may no longer open the conversation at all. Runs
    whose process died are ended on the way, their ids added to ``ended``."""
    role = role_of(conversation, user, session_key)
    if role is None or not type(conversation).objects.filter(pk=conversation.pk).exists():
        return None
    history, active = runlog.snapshot(conversation.pk, app_settings.HISTORY_FRAME_MESSAGES, ended)
    pending = pending_approval(conversation.pk)
    return role, history, active, pending, feedback_listing(conversation.pk, _first_position(history))


@dataclass(frozen=True)
class StoredCancel:
    """What a cancel found in the database: a live run elsewhere, dead runs it ended, or a wait it cleared."""

    running: bool
    ended: list[str]
    cleared: dict[str, Any] | None


def _cancel_stored(conversation_id: str, user: str, other_processes: bool) -> StoredCancel:
    """One database hop for a cancel: runs whose process died are ended; then whether a live run is in progress
    (asked only with ``other_processes``, where another process may run it), else the wait for approval it cancelled.
    """
    state = leases.running_state(conversation_id)
    if other_processes and state.live:
        return StoredCancel(True, state.ended, None)
    return StoredCancel(False, state.ended, cancel_approval(conversation_id, user))


_BUSY_MESSAGES = {
    protocol.ERR_BUSY: "Another run is in progress in this conversation.",
    protocol.ERR_AWAITING_APPROVAL: "A tool call waits for approval: answer it (interrupt_response) or cancel.",
    protocol.ERR_NO_PENDING_APPROVAL: "No tool call of this conversation is waiting for approval.",
    protocol.ERR_RATE_LIMITED: "Too many runs in the last minute; try again shortly.",
}


class AgentConsumer(AsyncWebsocketConsumer):
    """Talks the agentapp wire protocol (see ``docs/protocol.md``) for one conversation."""

    conversation: Any = None
    conversation_id: str | None = None
    # "owner", "member" or "viewer" (see agentapp.access); None once access is revoked.
    role: str | None = None
    group: str | None = None
    agent: Any = None
    active_run: AgentRun | None = None
    run_task: asyncio.Task[None] | None = None
    # True from an accepted prompt until its run_finished is sent; the task lives on while the broadcast flushes.
    running: bool = False
    # A cancel (or disconnect) that came while the run was still starting, applied as soon as it exists.
    cancel_requested: bool = False
    outbox: Outbox | None = None
    follower: Follower | None = None
    # The conversation frame, held back while the replay of the run in progress is awaited.
    pending_hello: dict[str, Any] | None = None
    # Counts the connections open on the conversation (agentapp.presence); None until access is granted.
    presence: Presence | None = None
    # True once the connection left its group and presence (``disconnect``, or the last cleanup of a killed one).
    cleaned_up: bool = False

    ### Connection ###

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve the connection; the writer task ends with it, even when the server cancels the connection.

        A server that kills the application before ``disconnect`` ran or finished (daphne does after its application
        close timeout) still gets it counted out of presence, out of the group and its run stopped, in one bounded step.
        """
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.outbox is not None:
                self.outbox.stop()
                await asyncio.gather(self.outbox.task, return_exceptions=True)
            if not self.cleaned_up:
                await asyncio.gather(self._last_cleanup(), return_exceptions=True)

    async def _last_cleanup(self) -> None:
        """What ``disconnect`` would have done, none of it waited for longer than one layer call."""
        if self.active_run is not None and not app_settings.RUNS_CONTINUE_ON_DISCONNECT:
            self.active_run.cancel()
        for task in getattr(self, "tasks", ()):
            task.cancel()
        bound = app_settings.BROADCAST_SEND_TIMEOUT_SECONDS
        if self.presence is not None:
            await _until(asyncio.get_running_loop().time() + bound, self.presence.stop(), "counting the connection out")
        if self.group and self.channel_layer is not None:
            await layer_call(self.channel_layer.group_discard(self.group, self.channel_name), "group_discard")
        self.cleaned_up = True

    async def connect(self) -> None:
        """Authorize the user, join the conversation's group, then send its history (and any run in progress)."""
        self.user = self.scope.get("user")
        self.held: list[dict[str, Any]] = []
        self.replay_parts: dict[str, dict[int, list[dict[str, Any]]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        # Runs this connection asked to resume (a ``resume`` frame or query) and still awaits the frames of.
        self.resuming: set[str] = set()
        # Resume points (run -> seq) inside merged group frames still to come: those frames are cut there.
        self.floors: dict[str, int] = {}
        self.pace = FramePace(app_settings.CLIENT_FRAME_BURST, app_settings.CLIENT_FRAMES_PER_SECOND)
        # When a cancel last found nothing to stop (see request_cancel); None once a run may have started since.
        self.nothing_to_cancel_at: float | None = None
        session_key = await self._session_key()
        conversation_id = self.scope.get("url_route", {}).get("kwargs", {}).get("conversation_id")
        opened = await database_sync_to_async(open_with_role)(self.user, session_key, conversation_id)
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
            await layer_call(self.channel_layer.group_add(self.group, self.channel_name), "group_add")
        history: list[dict[str, Any]] = []
        active, pending, feedback = None, None, []
        ended: list[str] = []  # runs whose process died, ended by this connection: the others are told after hello
        if is_stored(self.conversation):  # a fresh conversation has no row yet, so nothing to read
            opening = await database_sync_to_async(_opening)(self.conversation, self.user, session_key, ended)
            if opening is None:
                # Removed (or the conversation deleted) between the access check and joining the group: the
                # announcement of it went out before this connection listened, so it is applied here.
                await self.send_frame(protocol.error_frame(None, FORBIDDEN.code, FORBIDDEN.message))
                await self.close(code=FORBIDDEN.close_code)
                self.role = None  # nothing more is forwarded; disconnect leaves the group
                return
            self.role, history, active, pending, feedback = opening
        hello = {
            "type": protocol.CONVERSATION,
            "conversation_id": self.conversation_id,
            "title": opened.conversation.title,
            "role": self.role,
            "messages": history,
            "active_run": active,
            "pending_approval": {"run_id": pending["run_id"], "interrupts": pending["interrupts"]} if pending else None,
            "feedback": feedback,
        }
        active_id = active["run_id"] if active else None
        self.follower = Follower(settled={m["run_id"] for m in history if m["run_id"] and m["run_id"] != active_id})
        refused: list[dict[str, Any]] = []
        try:
            resume = self._resume_point()
        except protocol.ProtocolError as error:
            resume = None
            refused.append(protocol.error_frame(self.conversation_id, error.code, error.message))
        # Started with no await before the conversation frame is sent or held below, so its frames come after it.
        self.presence = Presence(
            self.channel_layer,
            self.group,
            self.channel_name,
            self.conversation_id,
            (lambda frame: self._deliver([frame])) if wants_presence(self.scope) else None,
        )
        self.presence.start()
        if active_id is None or self.channel_layer is None:
            await self._deliver([hello, *refused])
            for run_id in ended:
                await self._announce_dead(run_id)
            if resume is not None:
                await self.resume_run(*resume)
            return
        # The run's frames come from its log, then live; the hello waits for them (see _replayed).
        self.pending_hello = hello
        if resume is not None and resume[0] == active_id:
            self._forwarded_up_to(active_id, resume[1])  # the client has its frames up to that seq
        self.follower.expect_replay(active_id)
        await self._request_replays()
        await self._deliver(refused)  # after the conversation frame, held until then
        if resume is not None and resume[0] != active_id:
            await self.resume_run(*resume)

    def _resume_point(self) -> tuple[str, int] | None:
        """The ``?resume=<run_id>&seq=<n>`` a reconnecting client put in its URL, or None."""
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        if "resume" not in query:
            return None
        seq: Any = query.get("seq", ["-1"])[-1]
        seq = int(seq) if _SEQ_RE.fullmatch(seq) else seq
        return protocol.parse_resume(query["resume"][-1], seq)

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
        self.cancel_requested = True
        if self.outbox is not None:
            self.outbox.stop()
        for task in getattr(self, "tasks", ()):
            task.cancel()
        leave = app_settings.BROADCAST_SEND_TIMEOUT_SECONDS  # group_discard's own bound, kept for last
        deadline = asyncio.get_running_loop().time() + max(0.0, app_settings.DISCONNECT_TIMEOUT_SECONDS - leave)
        if self.presence is not None:
            await _until(deadline, self.presence.stop(), "counting the connection out")
        if app_settings.RUNS_CONTINUE_ON_DISCONNECT and self.run_task is not None and not self.run_task.done():
            # The run goes on without this socket (its frames still reach the group); process_runs keeps it.
            self.cancel_requested = False
            self.run_task = None
        elif self.active_run is not None:
            self.active_run.cancel()
        if self.run_task is not None:
            # Shielded: past the deadline the run still ends and saves in its task (process_runs keeps it).
            await _until(deadline, asyncio.shield(self.run_task), "saving the cancelled run")
        if self.group and self.channel_layer is not None:
            await layer_call(self.channel_layer.group_discard(self.group, self.channel_name), "group_discard")
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

    ### Channel layer receive, surviving the layer ###

    @property
    def channel_receive(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        """What Channels' dispatch loop awaits for channel-layer messages: the layer's receive, made resilient."""
        return self._receive_from_layer

    @channel_receive.setter
    def channel_receive(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        # Set by AsyncConsumer.__call__. A raw receive that raises (Redis away) would end the consumer, and
        # with it the socket and the run it is streaming.
        self._layer_receive = receive

    async def _receive_from_layer(self) -> dict[str, Any]:
        try:
            message = await self._layer_receive()
        except Exception as exc:
            layer_health.failed("receive", exc)
        else:
            watch_receive_cleaners(self.channel_layer)
            return message
        # The layer may have lost this connection's group (a Redis restart does): join again until it works.
        while True:
            await asyncio.sleep(app_settings.BROADCAST_RETRY_SECONDS)
            if self.group is None:
                return {"type": REJOINED_MESSAGE_TYPE}
            if await layer_call(self.channel_layer.group_add(self.group, self.channel_name), "group_add"):
                return {"type": REJOINED_MESSAGE_TYPE}

    async def agentapp_rejoined(self, message: dict[str, Any]) -> None:
        """Back in the group after the layer failed: ask for what was missed of the runs being followed."""
        if self.follower is None:
            return
        for run_id in self.follower.unfinished():
            self.follower.expect_replay(run_id)
        _, active = await database_sync_to_async(runlog.snapshot)(self.conversation_id, 1)
        if active is not None and not self.running:
            self.follower.expect_replay(active["run_id"])
        await self._request_replays()
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
        if self.running:
            await self.send_error(protocol.ERR_BUSY, "A run is already in progress on this connection.")
            return
        limit = app_settings.MAX_CONCURRENT_RUNS
        if limit and len(process_runs) >= limit:
            await self.send_error(protocol.ERR_SERVER_BUSY, "The server runs too many agents now; try again shortly.")
            return
        if not is_stored(self.conversation):  # the first prompt of a fresh conversation writes its row
            refused = await database_sync_to_async(store_new)(self.conversation)
            if refused is not None:
                await self.send_error(refused.code, refused.message)
                return
        self.nothing_to_cancel_at = None
        self.running = True
        self.cancel_requested = False
        self.run_task = asyncio.create_task(
            self._run(prompt, self.run_task, resume), name=f"agentapp-run-{self.conversation_id}"
        )
        process_runs.add(self.run_task)
        self.run_task.add_done_callback(process_runs.discard)

    async def answer_interrupts(self, responses: dict[str, dict[str, str]]) -> None:
        """Resume the run paused for approval with these answers, signed with the connection's user."""
        pending = await database_sync_to_async(pending_approval)(self.conversation_id)
        if pending is None:
            await self.send_error(protocol.ERR_NO_PENDING_APPROVAL, _BUSY_MESSAGES[protocol.ERR_NO_PENDING_APPROVAL])
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
        """Cancel the conversation's active run, here or on any other connection to it, or its wait for approval.

        A run of this process is cancelled from memory; otherwise one database hop tells what to stop, and a cancel
        repeated soon after one that found nothing is answered from memory.
        """
        if self.active_run is not None:
            self.active_run.cancel()
            return
        if self.running:
            self.cancel_requested = True  # the run is still starting: it is cancelled as soon as it exists
            return
        if (elsewhere := runs_here.get(self.conversation_id)) is not None:
            elsewhere.cancel()
            return
        if self._nothing_to_cancel_still():
            await self.send_error(protocol.ERR_NO_ACTIVE_RUN, "There is no run to cancel.")
            return
        found = await database_sync_to_async(_cancel_stored)(
            self.conversation_id, self._user_label(), self.channel_layer is not None
        )
        cleared = found.cleared
        for run_id in found.ended:
            await self._announce_dead(run_id)
        if found.running:
            await layer_call(self.channel_layer.group_send(self.group, {"type": CANCEL_MESSAGE_TYPE}), "group_send")
            self._spawn(self._end_if_dead_later(), "agentapp-cancel-watch")
        elif found.ended:
            return
        elif cleared:
            frame = {
                "type": protocol.INTERRUPT_RESOLVED,
                "conversation_id": self.conversation_id,
                "run_id": cleared["run_id"],
                "interrupt_ids": [interrupt["id"] for interrupt in cleared["interrupts"]],
                "outcome": protocol.STATUS_CANCELLED,
            }
            await self.send_frame(frame)
            if self.channel_layer is not None:
                message = {"type": RESOLVED_MESSAGE_TYPE, "frame": frame, "origin": self.channel_name}
                await layer_call(self.channel_layer.group_send(self.group, message), "group_send")
        else:
            self.nothing_to_cancel_at = time.monotonic()
            await self.send_error(protocol.ERR_NO_ACTIVE_RUN, "There is no run to cancel.")

    async def _end_if_dead_later(self) -> None:
        """A cancel went to a run of another process: if that process is dead, end the run once its lease lapses."""
        await asyncio.sleep(app_settings.RUN_LEASE_SECONDS + leases.renew_every())
        state = await database_sync_to_async(leases.running_state)(self.conversation_id)
        for run_id in state.ended:
            await self._announce_dead(run_id)

    async def _announce_dead(self, run_id: str) -> None:
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
            message = {"type": RESOLVED_MESSAGE_TYPE, "frame": frame, "origin": self.channel_name}
            await layer_call(self.channel_layer.group_send(self.group, message), "group_send")

    def _spawn(self, work: Any, name: str) -> None:
        """Run ``work`` in a task of this connection (cancelled when it closes)."""
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _nothing_to_cancel_still(self) -> bool:
        """Whether the last cancel found nothing, so recently that no run can have started unseen since."""
        at = self.nothing_to_cancel_at
        return at is not None and time.monotonic() - at < NOTHING_TO_CANCEL_MEMO_SECONDS

    async def resume_run(self, run_id: str, seq: int) -> None:
        """Send the frames of a run of this conversation past ``seq`` (from its log), then its live ones.

        A run this connection follows already is only told where the client is; one it runs itself needs nothing.
        Once no process keeps the run's frames, the answer is ``resume_unavailable``: the history is the record.
        """
        if self.follower is None or (self.active_run is not None and self.active_run.run_id == run_id):
            return
        if run_id in self.follower.runs:
            self._forwarded_up_to(run_id, seq)
            return
        if self.channel_layer is None and self._local_log(run_id) is None:
            await self.send_error(protocol.ERR_RESUME_UNAVAILABLE, "The frames of this run are no longer kept.")
            return
        self.follower.settled.discard(run_id)
        self._forwarded_up_to(run_id, seq)
        self.resuming.add(run_id)
        self.follower.expect_replay(run_id)
        await self._request_replays()

    def _forwarded_up_to(self, run_id: str, seq: int) -> None:
        """Tell the follower the client has a run's frames up to ``seq``: no replay or live frame repeats them."""
        if self.follower is None:
            return
        run = self.follower.runs.setdefault(run_id, _Followed())
        run.seq = max(run.seq, seq)
        self.floors[run_id] = run.seq

    def _trim(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Cut a merged text frame that straddles a resume point (the origin's own socket saw every delta)."""
        floor = self.floors.get(frame.get("run_id", ""))
        if floor is None or "seq" not in frame:
            return frame
        if frame.get("seq_first", frame["seq"]) > floor or frame["type"] == protocol.RUN_FINISHED:
            del self.floors[frame["run_id"]]
            return frame
        log = self._local_log(frame["run_id"])
        cut = log.cut(frame, floor) if log is not None and frame["type"] == protocol.DATA else None
        return cut or frame

    ### The run ###

    async def _run(self, prompt: str, previous: asyncio.Task[None] | None, resume: dict[str, Any] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # the last run may still be flushing its group broadcast
        if self.agent is None:
            try:
                self.agent = await preparing.build_off_thread(self.conversation, self.user)
            except Exception as exc:
                self.running = False
                await self._agent_unavailable(exc)
                return
        agent = self.agent
        user_id = self.user.pk if is_authenticated(self.user) else None
        broadcaster: GroupBroadcaster | None = None
        log: runlog.RunLog | None = None

        async def emit(frame: dict[str, Any]) -> None:
            await self.send_frame(frame)
            if broadcaster is not None and log is not None:
                log.note_sent(frame)
                broadcaster.publish(frame)

        run = AgentRun(
            self.agent,
            prompt,
            self.conversation_id,
            emit,
            user_id=user_id,
            resume_of=resume["run_id"] if resume else None,
            responses=resume["responses"] if resume else None,
            runs_per_minute=app_settings.RUNS_PER_USER_PER_MINUTE,
            prepare=lambda: preparing.give_history(agent, self.conversation_id, resume["state"] if resume else None),
            announce_dead=self._announce_dead,
        )
        if self.channel_layer is not None:
            # The log exists before the run's row does, so a connection that sees the row can get a replay.
            log = runlog.start(run.run_id, self.conversation_id)
            broadcaster = GroupBroadcaster(
                self.channel_layer,
                self.group,
                self.channel_name,
                app_settings.BROADCAST_WINDOW_SECONDS,
                log=log,
                watched=lambda: self._watched(log),
            )
        self.active_run = run
        runs_here.setdefault(self.conversation_id, run)
        if self.cancel_requested:
            run.cancel()
        started = True
        try:
            titles.after_run(self.conversation_id, run.run_id, await run.execute(app_settings.RUN_TIME_LIMIT_SECONDS))
        except QuotaExceeded as spent:
            started, self.running = False, False
            await self.send_frame(
                {**protocol.error_frame(self.conversation_id, spent.code, spent.message), "resets_at": spent.resets_at}
            )
        except ConversationBusy as busy:
            started = False
            self.running = False
            await self.send_error(busy.code, _BUSY_MESSAGES.get(busy.code, _BUSY_MESSAGES[protocol.ERR_BUSY]))
        except AgentUnavailable as unavailable:
            started = False
            self.running = False
            await self._agent_unavailable(unavailable.__cause__)
        except Exception:
            # AgentRun.execute reports its own failures; whatever escapes still reaches the client, never a log only.
            logger.exception("agentapp: run %s of %s failed", run.run_id, self.conversation_id)
            await self.send_error(protocol.ERR_RUN_FAILED, "The run failed.")
        finally:
            if runs_here.get(self.conversation_id) is run:
                del runs_here[self.conversation_id]
            self.active_run = None
            self.running = False
            if broadcaster is not None:
                await broadcaster.close()
                runlog.retire(run.run_id, app_settings.RUN_LOG_KEEP_SECONDS if started else 0)

    def _watched(self, log: runlog.RunLog) -> bool:
        """Whether a connection besides this one may follow its run: others are counted, or one asked for a replay."""
        view = self.presence.view if self.presence is not None else None
        return log.followed or view is None or view.watchers > 1

    async def _agent_unavailable(self, cause: BaseException | None) -> None:
        """Tell the client why its prompt did not start: the agent could not be built or given its history."""
        if isinstance(cause, StaleApprovalState):
            logger.warning("agentapp: the approval state of %s no longer fits its history", self.conversation_id)
            await database_sync_to_async(cancel_approval)(self.conversation_id, "agentapp")
            await self.send_error(protocol.ERR_RUN_FAILED, "The pending approval no longer fits the conversation.")
            return
        logger.error("agentapp: could not build the agent for %s", self.conversation_id, exc_info=cause)
        await self.send_error(protocol.ERR_RUN_FAILED, "The agent could not be started.")

    ### Group messages ###

    async def agentapp_frame(self, message: dict[str, Any]) -> None:
        """A frame of a run started on another connection to this conversation."""
        if message.get("origin") == self.channel_name or self.follower is None:
            return
        self.nothing_to_cancel_at = None  # a run of the conversation is (or was) going on
        await self._deliver(self.follower.offer(message["frame"], message.get("origin")))
        await self._request_replays()

    async def agentapp_cancel(self, message: dict[str, Any]) -> None:
        """Another connection asked to cancel the conversation's run; the process running it obeys."""
        run = self.active_run or runs_here.get(self.conversation_id)
        if run is not None:
            run.cancel()

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
        if self.active_run is not None:
            self.active_run.cancel()
        await self.send_frame(
            protocol.error_frame(self.conversation_id, NOT_FOUND.code, "The conversation was deleted.")
        )
        await self.close(code=NOT_FOUND.close_code)

    ### Replays of runs in progress ###

    async def _request_replays(self) -> None:
        """Send the replay requests the follower made: answered from this process's log when it has the run."""
        if self.follower is None:
            return
        for request in self.follower.take_requests():
            log = self._local_log(request.run_id)
            if log is not None:
                await self._replayed(request.run_id, request.sync_id, log.replay(request.after))
            else:
                await self._send_sync(request)

    def _local_log(self, run_id: str) -> runlog.RunLog | None:
        return runlog.get(run_id, self.conversation_id)

    async def _send_sync(self, request: SyncRequest) -> None:
        message = {
            "type": SYNC_MESSAGE_TYPE,
            "run_id": request.run_id,
            "after": request.after,
            "sync_id": request.sync_id,
            "reply_to": self.channel_name,
            "conversation_id": self.conversation_id,
        }
        if request.origin is not None:
            await layer_call(self.channel_layer.send(request.origin, message), "send")
        else:
            await layer_call(self.channel_layer.group_send(self.group, message), "group_send")
        self._spawn(self._await_replay(request), f"agentapp-sync-{request.run_id}")

    async def _await_replay(self, request: SyncRequest) -> None:
        await asyncio.sleep(app_settings.SYNC_TIMEOUT_SECONDS)
        if self.follower is None or not self.follower.waiting(request.run_id, request.sync_id):
            return
        if self.follower.retry_via_group(request.run_id, request.sync_id):
            await self._request_replays()
            return
        logger.info("agentapp: no replay of run %s came; going on without it", request.run_id)
        await self._deliver_run(request.run_id, self.follower.give_up(request.run_id, request.sync_id), replayed=False)
        if request.run_id in self.resuming:
            self.resuming.discard(request.run_id)
            await self.send_error(protocol.ERR_RESUME_UNAVAILABLE, "The frames of this run are no longer kept.")

    async def agentapp_sync(self, message: dict[str, Any]) -> None:
        """A connection asks for a run's frames; one connection of the process that has the run's log answers.

        Only a run of the asker's conversation (which is this connection's) is answered; any other gets no answer,
        as an unknown run does, so the asker ends with ``resume_unavailable`` either way.
        """
        asker = message.get("conversation_id")
        if asker != self.conversation_id or message["reply_to"] == self.channel_name:
            return
        log = runlog.get(message["run_id"], asker)
        if log is None or not log.claim(message["sync_id"]):
            return
        chunks = runlog.replay_chunks(log.replay(message["after"]))
        for index, frames in enumerate(chunks):
            reply = {
                "type": REPLAY_MESSAGE_TYPE,
                "run_id": message["run_id"],
                "sync_id": message["sync_id"],
                "index": index,
                "count": len(chunks),
                "frames": frames,
            }
            if not await layer_call(self.channel_layer.send(message["reply_to"], reply), "send"):
                return

    async def agentapp_replay(self, message: dict[str, Any]) -> None:
        """A chunk of the replay this connection asked for; the frames go out when every chunk is in."""
        run_id, sync_id = message["run_id"], message["sync_id"]
        if self.follower is None or not self.follower.waiting(run_id, sync_id):
            self.replay_parts.pop(sync_id, None)
            return
        parts = self.replay_parts.setdefault(sync_id, {})
        parts[message["index"]] = message["frames"]
        if len(parts) < message["count"]:
            return
        del self.replay_parts[sync_id]
        await self._replayed(run_id, sync_id, [frame for index in sorted(parts) for frame in parts[index]])

    async def _replayed(self, run_id: str, sync_id: str, frames: list[dict[str, Any]]) -> None:
        if self.follower is None or not self.follower.waiting(run_id, sync_id):
            return
        self.resuming.discard(run_id)
        await self._deliver_run(run_id, self.follower.replayed(run_id, sync_id, frames), replayed=True)
        await self._request_replays()

    async def _deliver_run(self, run_id: str, frames: list[dict[str, Any]], replayed: bool) -> None:
        """Forward a run's frames; first the held conversation frame if it waited for this run.

        A replayed run is left out of that frame's messages, since its frames follow from its first one.
        """
        hello = self.pending_hello
        if hello is None or hello["active_run"]["run_id"] != run_id:
            await self._deliver(frames)
            return
        if replayed:
            hello = {**hello, "messages": [m for m in hello["messages"] if m["run_id"] != run_id]}
        self.pending_hello = None
        held, self.held = self.held, []
        # Frames of later runs that came while the conversation frame waited go last.
        await self._deliver([hello, *frames, *held])

    async def _deliver(self, frames: list[dict[str, Any]]) -> None:
        """Forward frames to the socket; held while the conversation frame waits for a replay."""
        if self.role is None:
            return
        if self.pending_hello is not None:
            self.held.extend(frames)
            return
        for frame in frames:
            await self.send_frame(self._trim(frame) if self.floors else frame)

    ### Sending ###

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue one frame for the socket as JSON text; a socket too far behind is closed as a slow consumer."""
        outbox = self.outbox
        if outbox is None:
            await self.send(text_data=protocol.encode_frame(frame))
            return
        if outbox.put(frame):
            if outbox.backlog > outbox.limit // 2:
                await asyncio.sleep(0)  # let the writer task run before a burst of frames fills the queue
            return
        if outbox.overflowed and not outbox.closed:
            self._close_slow_consumer(outbox)

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
