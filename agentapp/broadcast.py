"""Group broadcast of a run's frames through the channel layer, and how a connection follows other runs.

Sending: the run never waits on the layer. Frames go into a queue drained by one sender task, which merges
adjacent text deltas (and successive ``current_tool_use`` updates) collected within a short window, so the
cost follows time, not tokens. Each merged frame is logged (``agentapp.runlog``) before it is sent. When the
layer fails (Redis away), unsent frames wait and are sent, in order and with the same boundaries, once it
works again; the failure is logged once.

Receiving: a ``Follower`` per connection forwards each run's frames in order and once; a gap in ``seq``
(a late join, frames lost while the layer was away) makes it ask for a replay of the missing frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from . import protocol
from .conf import app_settings
from .messages import (  # noqa: F401 (message types, re-exported for the modules that import them from here)
    ACCESS_MESSAGE_TYPE,
    CANCEL_MESSAGE_TYPE,
    DELETED_MESSAGE_TYPE,
    FRAME_MESSAGE_TYPE,
    PRESENCE_MESSAGE_TYPE,
    REJOINED_MESSAGE_TYPE,
    REPLAY_MESSAGE_TYPE,
    SYNC_MESSAGE_TYPE,
    frame_message,
)

if TYPE_CHECKING:
    from .runlog import RunLog

logger = logging.getLogger(__name__)


def group_name(conversation_id: str) -> str:
    """The channel-layer group of a conversation."""
    return f"agentapp.conversation.{conversation_id}"


def coalesce(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge runs of adjacent ``data`` frames and of ``current_tool_use`` updates for one tool use.

    The frames are copied (the caller's are not changed) and every ``data`` frame carries ``seq_first``.
    """
    merged: list[dict[str, Any]] = []
    for frame in frames:
        if not (merged and protocol.merge_into(merged[-1], frame)):
            merged.append(protocol.merge_start(frame))
    return merged


### Telling a conversation's connections from anywhere ###


async def tell_group(conversation_id: Any, message: dict[str, Any], what: str) -> None:
    """Send ``message`` to the conversation's group within the send timeout; a layer that fails is logged (what it
    announces is saved already: connections opened from now on see it)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async with asyncio.timeout(app_settings.BROADCAST_SEND_TIMEOUT_SECONDS):
            await layer.group_send(group_name(str(conversation_id)), message)
    except Exception as exc:
        logger.warning("agentapp: could not tell connections of %s about %s (%r)", conversation_id, what, exc)


def tell_group_on_commit(conversation_id: Any, message: dict[str, Any], what: str) -> None:
    """``tell_group`` from synchronous code (a view, a signal), once the current transaction commits."""
    transaction.on_commit(lambda: async_to_sync(tell_group)(conversation_id, message, what))


### Layer health ###


class LayerHealth:
    """Logs when the channel layer starts failing and when it works again: twice per outage, not per frame."""

    def __init__(self) -> None:
        self.failing = False
        self.failures = 0

    def failed(self, action: str, exc: BaseException) -> None:
        """Count a failed call; only the first of an outage is logged."""
        self.failures += 1
        if not self.failing:
            self.failing = True
            logger.warning(
                "agentapp: channel layer %s failed (%r); runs go on, broadcast resumes when the layer is back",
                action,
                exc,
            )

    def worked(self) -> None:
        """Note a successful call; the first after an outage is logged."""
        if self.failing:
            logger.warning("agentapp: broadcast restored after %d failed channel layer calls", self.failures)
            self.failing = False
            self.failures = 0


layer_health = LayerHealth()


async def layer_call(call: Awaitable[Any], action: str) -> bool:
    """Await a channel-layer call for at most ``BROADCAST_SEND_TIMEOUT_SECONDS``; False if it failed."""
    try:
        async with asyncio.timeout(app_settings.BROADCAST_SEND_TIMEOUT_SECONDS):
            await call
    except Exception as exc:
        layer_health.failed(action, exc)
        return False
    layer_health.worked()
    return True


# channels_redis backup cleaners already watched (see watch_receive_cleaners).
_watched_cleaners: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def watch_receive_cleaners(layer: Any) -> None:
    """Count failures of the tasks ``RedisChannelLayer.receive`` leaves behind as layer failures.

    Each received message starts a task that removes it from a backup queue, and nobody awaits it: when Redis
    goes away under one, asyncio would log "Task exception was never retrieved" with a traceback, per message.
    """
    for cleaner in list(getattr(layer, "receive_cleaners", ())):
        if cleaner not in _watched_cleaners:
            _watched_cleaners.add(cleaner)
            cleaner.add_done_callback(_cleaner_done)


def _cleaner_done(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        layer_health.failed("receive cleanup", exc)


### Sending ###

# How long a run's broadcaster trusts its last answer to "does anyone else watch?" (asked per frame otherwise).
WATCHED_RECHECK_SECONDS = 0.05

# Broadcasters still resending after their run ended (the layer was away); referenced so they finish.
_lingering: set[asyncio.Task[None]] = set()


class GroupBroadcaster:
    """Sends one run's frames to the conversation group from a background task, logging each as sent.

    ``watched()``, when given, tells whether any connection but the origin may follow the run: while it says
    no, merged frames are only logged, not sent, so a run nobody else watches costs the layer one message, its
    ``run_finished``. That one still goes out for a watcher this process has not counted yet (its presence
    message is on the way, or was lost): its gap makes it ask for the run's frames from the log, as a connection
    that comes later does (and that counts as watching from then on).
    """

    def __init__(
        self,
        channel_layer: Any,
        group: str,
        origin: str,
        window_seconds: float,
        log: RunLog | None = None,
        watched: Callable[[], bool] | None = None,
    ) -> None:
        self.channel_layer = channel_layer
        self.group = group
        self.origin = origin
        self.window_seconds = window_seconds
        self.log = log
        self.watched = watched
        self.sends = 0
        self.unsent = 0  # merged frames only logged, since nobody else watched
        self.failures = 0
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._settled = asyncio.Event()
        self._holding = False  # frames taken from the queue wait out the window, not logged yet
        self._watched = True
        self._recheck_at = 0.0
        self._task = asyncio.create_task(self._run(), name=f"agentapp-broadcast-{group}")

    def publish(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the group; never blocks. Unwatched, with nothing queued before it, it is only logged."""
        quiet = self.log is not None and self.watched is not None and not self._holding and self._queue.empty()
        if quiet and frame["type"] != protocol.RUN_FINISHED and not self._watched_now():
            self.log.append(frame)
            self.unsent += 1
            return
        self._queue.put_nowait(frame)

    def _watched_now(self) -> bool:
        """``watched()``, asked at most every ``WATCHED_RECHECK_SECONDS`` (a watcher that comes in between asks for
        the frames it missed, as any late joiner does)."""
        now = time.monotonic()
        if now >= self._recheck_at:
            self._watched = self.watched is None or self.watched()
            self._recheck_at = now + WATCHED_RECHECK_SECONDS
        return self._watched

    async def close(self) -> None:
        """Send what is queued, then stop; if the layer is failing, return and keep retrying in the background.

        Retrying stops ``RUN_LOG_KEEP_SECONDS`` after the close; frames still unsent then are dropped.
        """
        self._queue.put_nowait(None)
        await asyncio.shield(self._settled.wait())
        if not self._task.done():
            _lingering.add(self._task)
            self._task.add_done_callback(_lingering.discard)

    def _take_ready(self, batch: list[dict[str, Any] | None]) -> None:
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _next_batch(self, wait_limit: float | None) -> list[dict[str, Any] | None]:
        batch: list[dict[str, Any] | None] = []
        try:
            async with asyncio.timeout(wait_limit):
                batch.append(await self._queue.get())
        except TimeoutError:
            pass
        self._take_ready(batch)
        return batch

    async def _run(self) -> None:
        # Merged frames not yet sent, oldest first. Their boundaries never change once logged: a send that
        # timed out may still have been delivered, and a replay cuts text at these boundaries.
        pending: list[dict[str, Any]] = []
        last_send = 0.0
        retry_at = 0.0  # after a failure, the next attempt waits until then
        closing_deadline: float | None = None
        try:
            while True:
                if closing_deadline is None:
                    wait_limit = max(0.0, retry_at - time.monotonic()) if pending else None
                    batch = await self._next_batch(wait_limit)
                    only_deltas = bool(batch) and all(f is not None and f["type"] == protocol.DATA for f in batch)
                    wait = self.window_seconds - (time.monotonic() - last_send)
                    if only_deltas and wait > 0 and not pending:
                        self._holding = True
                        await asyncio.sleep(wait)
                        self._holding = False
                        self._take_ready(batch)
                    if None in batch:
                        closing_deadline = time.monotonic() + app_settings.RUN_LOG_KEEP_SECONDS
                        retry_at = 0.0  # one attempt now, whatever the last failure; close() returns after it
                    fresh = coalesce([frame for frame in batch if frame is not None])
                    if self.log is not None:
                        for frame in fresh:
                            self.log.append(frame)
                    pending.extend(fresh)
                elif pending:
                    await asyncio.sleep(max(0.0, retry_at - time.monotonic()))
                if pending and time.monotonic() >= retry_at:
                    if await self._flush(pending):
                        last_send = time.monotonic()
                    else:
                        retry_at = time.monotonic() + app_settings.BROADCAST_RETRY_SECONDS
                if closing_deadline is not None:
                    self._settled.set()
                    if not pending:
                        return
                    if time.monotonic() > closing_deadline:
                        logger.warning("agentapp: gave up broadcasting %d frames to %s", len(pending), self.group)
                        return
        finally:
            self._settled.set()

    async def _flush(self, pending: list[dict[str, Any]]) -> bool:
        """Send pending frames in order; stop at the first failure, keeping it and the rest."""
        if self.watched is not None and not self.watched():
            ends = [frame for frame in pending if frame["type"] == protocol.RUN_FINISHED]
            self.unsent += len(pending) - len(ends)
            pending[:] = ends
        while pending:
            message = frame_message(pending[0], self.origin)
            if not await layer_call(self.channel_layer.group_send(self.group, message), "group_send"):
                self.failures += 1
                return False
            self.sends += 1
            pending.pop(0)
        return True


### Receiving ###


@dataclass(frozen=True)
class SyncRequest:
    """A connection asks for a run's frames after ``after``, from the run's origin channel or from the group."""

    run_id: str
    after: int
    origin: str | None
    sync_id: str


@dataclass
class _Followed:
    seq: int = -1  # highest seq forwarded
    origin: str | None = None  # channel of the connection running it, from its group messages
    buffer: list[dict[str, Any]] | None = None  # frames held while a replay is awaited
    sync_id: str | None = None
    syncs: int = 0


class Follower:
    """Which frames of other connections' runs one connection forwards: each run in order, each frame once.

    A frame starting past the next expected ``seq`` means frames were missed (the connection joined mid-run,
    or the layer lost some); the run's frames are then held and a replay of the missing ones is requested.
    """

    MAX_SYNCS = 3

    def __init__(self, settled: Iterable[str] = ()) -> None:
        # Runs whose frames are all known already: finished, or stored in the history sent on connect.
        self.settled: set[str] = set(settled)
        self.runs: dict[str, _Followed] = {}
        self._requests: list[SyncRequest] = []

    def offer(self, frame: dict[str, Any], origin: str | None = None) -> list[dict[str, Any]]:
        """The frames to forward now, given one received from the group."""
        run_id = frame.get("run_id")
        if run_id is None or run_id in self.settled:
            return []
        run = self.runs.setdefault(run_id, _Followed())
        run.origin = origin or run.origin
        if run.buffer is not None:
            run.buffer.append(frame)
            return []
        if frame["seq"] <= run.seq:
            return []
        if protocol.seq_span(frame)[0] > run.seq + 1 and run.syncs < self.MAX_SYNCS:
            self._request(run_id, run)
            run.buffer.append(frame)
            return []
        return [self._take(run_id, run, frame)]

    def _take(self, run_id: str, run: _Followed, frame: dict[str, Any]) -> dict[str, Any]:
        run.seq = frame["seq"]
        if frame["type"] == protocol.RUN_FINISHED:
            self.settled.add(run_id)
            self.runs.pop(run_id, None)
        return frame

    def _request(self, run_id: str, run: _Followed, via_group: bool = False) -> _Followed:
        run.syncs += 1
        if run.buffer is None:
            run.buffer = []
        run.sync_id = uuid.uuid4().hex
        self._requests.append(SyncRequest(run_id, run.seq, None if via_group else run.origin, run.sync_id))
        return run

    def expect_replay(self, run_id: str, origin: str | None = None) -> None:
        """Ask for a run's frames after those forwarded so far (all of them for a run not seen yet), of ``origin``
        when given (the channel of the process running it)."""
        if run_id in self.settled:
            return
        run = self.runs.setdefault(run_id, _Followed())
        run.origin = origin or run.origin
        if run.buffer is None:
            self._request(run_id, run)

    def has_requests(self) -> bool:
        """Whether replay requests wait to be taken."""
        return bool(self._requests)

    def take_requests(self) -> list[SyncRequest]:
        """Replay requests made since the last call; the caller sends them."""
        requests, self._requests = self._requests, []
        return requests

    def waiting(self, run_id: str, sync_id: str) -> bool:
        """Whether this replay is still the one awaited."""
        run = self.runs.get(run_id)
        return run is not None and run.buffer is not None and run.sync_id == sync_id

    def replayed(self, run_id: str, sync_id: str, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The replayed frames past what was forwarded, then the held frames that follow them."""
        if not self.waiting(run_id, sync_id):
            return []
        run = self.runs[run_id]
        held, run.buffer, run.sync_id = run.buffer or [], None, None
        forward = [self._take(run_id, run, frame) for frame in frames if frame["seq"] > run.seq]
        for frame in held:
            forward.extend(self.offer(frame))
        return forward

    def retry_via_group(self, run_id: str, sync_id: str) -> bool:
        """Re-ask the whole group after the run's origin did not answer; False if that was done already."""
        run = self.runs.get(run_id)
        if not self.waiting(run_id, sync_id) or run is None or run.origin is None or run.syncs >= self.MAX_SYNCS:
            return False
        run.origin = None
        self._request(run_id, run, via_group=True)
        return True

    def give_up(self, run_id: str, sync_id: str) -> list[dict[str, Any]]:
        """No replay came: forward the held frames as they are, and stop asking for this run."""
        if not self.waiting(run_id, sync_id):
            return []
        run = self.runs[run_id]
        held, run.buffer, run.sync_id, run.syncs = run.buffer or [], None, None, self.MAX_SYNCS
        forward: list[dict[str, Any]] = []
        for frame in held:
            forward.extend(self.offer(frame))
        return forward

    def unfinished(self) -> list[str]:
        """Runs seen but not finished, and not awaiting a replay already."""
        return [run_id for run_id, run in self.runs.items() if run.buffer is None and run.seq >= 0]
