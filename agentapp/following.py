"""How one connection follows its conversation's runs: forwarded in order and once, replayed where frames are missing.

A connection that opens the conversation mid-run holds its ``conversation`` frame until the run's frames so far
came (from this process's run log, or another process's through the layer); frames lost on the way leave a gap in
``seq`` that asks for a replay; a client that reconnects with a resume point gets the frames past it, cut inside a
merged text frame where it has to be. ``broadcast.Follower`` decides; this module does the asking and the sending.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from typing import Any, Protocol
from urllib.parse import parse_qs

from . import protocol, runlog
from .broadcast import Follower, SyncRequest, _Followed, layer_call
from .conf import app_settings
from .messages import replay_message, requests_message, sync_message

logger = logging.getLogger(__name__)

_SEQ_RE = re.compile(r"-?[0-9]{1,16}")


def resume_point(scope: dict[str, Any]) -> tuple[str, int] | None:
    """The ``?resume=<run_id>&seq=<n>`` a reconnecting client put in its URL, or None; ProtocolError if malformed."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "resume" not in query:
        return None
    seq: Any = query.get("seq", ["-1"])[-1]
    seq = int(seq) if _SEQ_RE.fullmatch(seq) else seq
    return protocol.parse_resume(query["resume"][-1], seq)


class Connection(Protocol):
    """The socket a ``Watch`` forwards to, as the watch sees it."""

    conversation_id: str | None
    channel_name: str
    channel_layer: Any
    group: str | None
    role: str | None

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the socket."""

    def queue_frame(self, frame: dict[str, Any]) -> bool:
        """Queue a frame for the socket without waiting."""

    async def send_error(self, code: str, message: str) -> None:
        """Send an ``error`` frame outside any run."""

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` in a task that ends with the connection."""

    def inbox_put(self, message: dict[str, Any]) -> None:
        """Queue a message for the connection's own handlers, after those waiting."""


class Watch:
    """The runs one connection forwards, from its conversation frame on."""

    def __init__(self, connection: Connection, settled: set[str]) -> None:
        self.connection = connection
        self.follower = Follower(settled=settled)
        # The conversation frame, held back while the replay of the run in progress is awaited, and the frames of
        # later runs that came meanwhile.
        self.pending_hello: dict[str, Any] | None = None
        self.held: list[dict[str, Any]] = []
        self.replay_parts: dict[str, dict[int, list[dict[str, Any]]]] = {}
        # Runs the client asked to resume (a ``resume`` frame or query) whose frames are still awaited.
        self.resuming: set[str] = set()
        # Resume points (run -> seq) inside merged group frames still to come: those frames are cut there.
        self.floors: dict[str, int] = {}

    async def open_mid_run(
        self,
        hello: dict[str, Any],
        resume: tuple[str, int] | None,
        after: list[dict[str, Any]],
        origin: str | None = None,
    ) -> None:
        """Send the conversation frame, then ``after``, once the frames so far of the run in progress came (asked of
        ``origin``, the worker running it, when known; of the group otherwise)."""
        active_id = hello["active_run"]["run_id"]
        self.pending_hello = hello
        if resume is not None and resume[0] == active_id:
            self.forwarded_up_to(active_id, resume[1])  # the client has its frames up to that seq
        self.follower.expect_replay(active_id, origin)
        await self.request_replays()
        await self.deliver(after)  # after the conversation frame, held until then
        if resume is not None and resume[0] != active_id:
            await self.resume(*resume)

    ### Frames of the group ###

    def forward_now(self, message: dict[str, Any]) -> bool:
        """Forward a group frame without a handler; False when that is not possible now (waiting for a replay before
        the conversation frame, or cutting frames at a resume point): the frame then goes through the inbox."""
        if self.pending_hello is not None or self.floors:
            return False
        connection = self.connection
        if message.get("origin") == connection.channel_name or connection.role is None:
            return True
        for frame in self.follower.offer(message["frame"], message.get("origin")):
            connection.queue_frame(frame)
        if self.follower.has_requests():
            connection.inbox_put(requests_message())
        return True

    async def on_frame(self, message: dict[str, Any]) -> None:
        """A frame of a run started on another connection, that could not be forwarded at once."""
        if message.get("origin") == self.connection.channel_name:
            return
        await self.deliver(self.follower.offer(message["frame"], message.get("origin")))
        await self.request_replays()

    async def rejoined(self, active_run_id: str | None, origin: str | None = None) -> None:
        """Back in the group after the layer failed: ask for what was missed of the runs followed, and of the run
        in progress (``active_run_id``, unless it streams from this process; of ``origin``, its worker, if known)."""
        for run_id in self.follower.unfinished():
            self.follower.expect_replay(run_id)
        if active_run_id is not None:
            self.follower.expect_replay(active_run_id, origin)
        await self.request_replays()

    ### Replays ###

    async def request_replays(self) -> None:
        """Send the replay requests the follower made: answered from this process's log when it has the run."""
        for request in self.follower.take_requests():
            log = self._local_log(request.run_id)
            if log is not None:
                await self._replayed(request.run_id, request.sync_id, log.replay(request.after))
            else:
                await self._send_sync(request)

    def _local_log(self, run_id: str) -> runlog.RunLog | None:
        return runlog.get(run_id, self.connection.conversation_id)

    async def _send_sync(self, request: SyncRequest) -> None:
        connection = self.connection
        message = sync_message(
            request.run_id, request.after, request.sync_id, connection.channel_name, connection.conversation_id
        )
        layer = connection.channel_layer
        if request.origin is not None:
            await layer_call(layer.send(request.origin, message), "send")
        else:
            await layer_call(layer.group_send(connection.group, message), "group_send")
        connection.spawn(self._await_replay(request), f"agentapp-sync-{request.run_id}")

    async def _await_replay(self, request: SyncRequest) -> None:
        await asyncio.sleep(app_settings.SYNC_TIMEOUT_SECONDS)
        if not self.follower.waiting(request.run_id, request.sync_id):
            return
        if self.follower.retry_via_group(request.run_id, request.sync_id):
            await self.request_replays()
            return
        logger.info("agentapp: no replay of run %s came; going on without it", request.run_id)
        await self._deliver_run(request.run_id, self.follower.give_up(request.run_id, request.sync_id), replayed=False)
        if request.run_id in self.resuming:
            self.resuming.discard(request.run_id)
            await self.connection.send_error(
                protocol.ERR_RESUME_UNAVAILABLE, "The frames of this run are no longer kept."
            )

    async def on_replay(self, message: dict[str, Any]) -> None:
        """A chunk of a replay this connection asked for; the frames go out when every chunk is in."""
        run_id, sync_id = message["run_id"], message["sync_id"]
        if not self.follower.waiting(run_id, sync_id):
            self.replay_parts.pop(sync_id, None)
            return
        parts = self.replay_parts.setdefault(sync_id, {})
        parts[message["index"]] = message["frames"]
        if len(parts) < message["count"]:
            return
        del self.replay_parts[sync_id]
        await self._replayed(run_id, sync_id, [frame for index in sorted(parts) for frame in parts[index]])

    async def _replayed(self, run_id: str, sync_id: str, frames: list[dict[str, Any]]) -> None:
        if not self.follower.waiting(run_id, sync_id):
            return
        self.resuming.discard(run_id)
        await self._deliver_run(run_id, self.follower.replayed(run_id, sync_id, frames), replayed=True)
        await self.request_replays()

    ### Resuming ###

    async def resume(self, run_id: str, seq: int) -> None:
        """Send the frames of a run of this conversation past ``seq`` (from its log), then its live ones.

        A run followed already is only told where the client is. Once no process keeps the run's frames, the
        answer is ``resume_unavailable``: the history is the record.
        """
        if run_id in self.follower.runs:
            self.forwarded_up_to(run_id, seq)
            return
        if self.connection.channel_layer is None and self._local_log(run_id) is None:
            await self.connection.send_error(
                protocol.ERR_RESUME_UNAVAILABLE, "The frames of this run are no longer kept."
            )
            return
        self.follower.settled.discard(run_id)
        self.forwarded_up_to(run_id, seq)
        self.resuming.add(run_id)
        self.follower.expect_replay(run_id)
        await self.request_replays()

    def forwarded_up_to(self, run_id: str, seq: int) -> None:
        """Tell the follower the client has a run's frames up to ``seq``: no replay or live frame repeats them."""
        run = self.follower.runs.setdefault(run_id, _Followed())
        run.seq = max(run.seq, seq)
        self.floors[run_id] = run.seq

    def _trim(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Cut a merged text frame that straddles a resume point (the origin's own socket saw every delta)."""
        floor = self.floors.get(frame.get("run_id", ""))
        if floor is None or "seq" not in frame:
            return frame
        if protocol.seq_span(frame)[0] > floor or frame["type"] == protocol.RUN_FINISHED:
            del self.floors[frame["run_id"]]
            return frame
        log = self._local_log(frame["run_id"])
        cut = log.cut(frame, floor) if log is not None and frame["type"] == protocol.DATA else None
        return cut or frame

    ### Sending ###

    async def _deliver_run(self, run_id: str, frames: list[dict[str, Any]], replayed: bool) -> None:
        """Forward a run's frames; first the held conversation frame if it waited for this run.

        A replayed run is left out of that frame's messages, since its frames follow from its first one.
        """
        hello = self.pending_hello
        if hello is None or hello["active_run"]["run_id"] != run_id:
            await self.deliver(frames)
            return
        if replayed:
            hello = {**hello, "messages": [m for m in hello["messages"] if m["run_id"] != run_id]}
        self.pending_hello = None
        held, self.held = self.held, []
        # Frames of later runs that came while the conversation frame waited go last.
        await self.deliver([hello, *frames, *held])

    async def deliver(self, frames: list[dict[str, Any]]) -> None:
        """Forward frames to the socket; held while the conversation frame waits for a replay."""
        if self.connection.role is None:
            return
        if self.pending_hello is not None:
            self.held.extend(frames)
            return
        for frame in frames:
            await self.connection.send_frame(self._trim(frame) if self.floors else frame)


async def answer_sync(layer: Any, conversation_id: str | None, channel_name: str, message: dict[str, Any]) -> None:
    """Answer a connection that asks for a run's frames, from this process's log of the run (once per process).

    Only a run of the asker's conversation (which is the answerer's) is answered; any other gets no answer, as an
    unknown run does, so the asker ends with ``resume_unavailable`` either way.
    """
    asker = message.get("conversation_id")
    if asker != conversation_id or message["reply_to"] == channel_name:
        return
    log = runlog.get(message["run_id"], asker)
    if log is None or not log.claim(message["sync_id"]):
        return
    chunks = runlog.replay_chunks(log.replay(message["after"]))
    for index, frames in enumerate(chunks):
        reply = replay_message(message["run_id"], message["sync_id"], index, len(chunks), frames)
        if not await layer_call(layer.send(message["reply_to"], reply), "send"):
            return
