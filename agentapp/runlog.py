"""The frame log of live runs: what each run broadcast so far, kept in memory so late joiners get a replay.

A run's log lives in the process that runs it, from before ``run_started`` until ``RUN_LOG_KEEP_SECONDS``
after its broadcast is flushed; then it is dropped (the stored messages are the record). It holds the frames
exactly as the group broadcast carried them, with adjacent text deltas merged further to save memory; each
merged ``data`` frame remembers where the broadcast frames in it ended, so ``frames_after(seq)`` can start
at any broadcast frame's end without repeating text.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import leases, protocol
from .models import Message, Run

# Longest text the log merges into one ``data`` frame (each merge copies the text so far).
MAX_MERGED_CHARS = 4_000
# Target size of one replay message; a single larger frame travels alone.
REPLAY_CHUNK_BYTES = 200_000


class RunLog:
    """The frames one run has broadcast so far, in order."""

    def __init__(self, run_id: str, conversation_id: str = "") -> None:
        self.run_id = run_id
        self.conversation_id = conversation_id
        self.frames: list[dict[str, Any]] = []
        # For each merged data frame (by index): (seq, text length) at the end of each broadcast frame in it.
        self._ends: dict[int, list[tuple[int, int]]] = {}
        self._claims: set[str] = set()
        self.finished = False
        # Length of the run's text after each ``data`` frame the origin connection sent (by seq), so a resume from a
        # seq inside a merged frame (the origin's own socket saw every delta) starts exactly after that delta.
        self._text_at: dict[int, int] = {}
        self._text_total = 0
        # Set once a connection other than the origin asked for the run's frames: from then on it has an audience.
        self.followed = False

    def note_sent(self, frame: dict[str, Any]) -> None:
        """Note a frame as the origin connection sent it, unmerged (only text lengths are kept)."""
        if frame["type"] == protocol.DATA:
            self._text_total += len(frame[protocol.DATA])
            self._text_at[frame["seq"]] = self._text_total

    def append(self, frame: dict[str, Any]) -> None:
        """Add a frame as broadcast (``data`` frames carry ``seq_first``); the caller's dict is not kept.

        It merges by ``protocol.merge_into``, as the broadcast does, but text only up to ``MAX_MERGED_CHARS``.
        """
        if self.frames and protocol.merge_into(self.frames[-1], frame, max_chars=MAX_MERGED_CHARS):
            if frame["type"] == protocol.DATA:
                self._ends[len(self.frames) - 1].append((frame["seq"], len(self.frames[-1][protocol.DATA])))
        else:
            self.frames.append(protocol.merge_start(frame))
            if frame["type"] == protocol.DATA:
                self._ends[len(self.frames) - 1] = [(frame["seq"], len(frame[protocol.DATA]))]
        if frame["type"] == protocol.RUN_FINISHED:
            self.finished = True

    @property
    def last_seq(self) -> int:
        """The seq of the newest frame logged, -1 before any."""
        return self.frames[-1]["seq"] if self.frames else -1

    def frames_after(self, seq: int) -> list[dict[str, Any]]:
        """Every logged frame past ``seq`` (the end of a broadcast frame); a merged delta is cut there."""
        selected = []
        for index, frame in enumerate(self.frames):
            first, last = protocol.seq_span(frame)
            if last <= seq:
                continue
            if frame["type"] == protocol.DATA and first <= seq:
                chars = max((length for end, length in self._ends[index] if end <= seq), default=0)
                frame = self.cut(frame, seq) or dict(frame, data=frame[protocol.DATA][chars:], seq_first=seq + 1)
            selected.append(dict(frame))
        return selected

    def replay(self, after: int) -> list[dict[str, Any]]:
        """The frames past ``after`` for a connection that follows the run, which then counts as watched."""
        self.followed = True
        return self.frames_after(after)

    def cut(self, frame: dict[str, Any], seq: int) -> dict[str, Any] | None:
        """The part of a (merged) ``data`` frame past ``seq``, or None when this log cannot tell where it is."""
        if seq not in self._text_at or frame["seq"] not in self._text_at:
            return None
        chars = self._text_at[seq] - (self._text_at[frame["seq"]] - len(frame[protocol.DATA]))
        return dict(frame, data=frame[protocol.DATA][chars:], seq_first=seq + 1)

    def claim(self, sync_id: str) -> bool:
        """True the first time a replay request is seen, so one connection of this process answers it."""
        if sync_id in self._claims:
            return False
        self._claims.add(sync_id)
        return True


def replay_chunks(frames: list[dict[str, Any]], limit: int = REPLAY_CHUNK_BYTES) -> list[list[dict[str, Any]]]:
    """Split frames into lists of about ``limit`` bytes of JSON each; never returns an empty list of chunks."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for frame in frames:
        frame_size = len(protocol.encode_frame(frame))
        if chunks[-1] and size + frame_size > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(frame)
        size += frame_size
    return chunks


### The logs of this process ###

_logs: dict[str, RunLog] = {}


def start(run_id: str, conversation_id: str) -> RunLog:
    """Open the log of a run of this conversation about to start in this process."""
    log = _logs[run_id] = RunLog(run_id, str(conversation_id))
    return log


def get(run_id: str, conversation_id: str | None) -> RunLog | None:
    """The log of a run of this process and of this conversation, live or finished within ``keep`` seconds.

    Every path that hands out a run's frames goes through here: for a run of any other conversation the answer is
    None, exactly as for a run nobody knows, so a run id alone never reads a run.
    """
    log = _logs.get(run_id)
    if log is None or conversation_id is None or log.conversation_id != str(conversation_id):
        return None
    return log


def retire(run_id: str, keep_seconds: float) -> None:
    """Drop a run's log ``keep_seconds`` from now (at once for 0)."""
    if keep_seconds <= 0:
        _logs.pop(run_id, None)
    else:
        asyncio.get_running_loop().call_later(keep_seconds, _logs.pop, run_id, None)


### The database's view ###


def snapshot(
    conversation_id: Any, limit: int, ended: list[str] | None = None
) -> tuple[list[dict[str, Any]], dict | None]:
    """The last ``limit`` stored messages in wire form and the run in progress, read in one query so they agree.

    The run in progress names its ``origin``: the channel of the worker running it ("" for a web process's run).

    A run still marked running whose lease lapsed died with its server: it is ended here (``leases``), its id added
    to ``ended`` (for the caller to announce), and the messages read again.
    """
    rows = _tail(conversation_id, limit)
    cutoff = leases.lapsed_before()
    running = [row for row in rows if row["run__status"] == Run.Status.RUNNING]
    if any(not leases.is_alive(row["run__heartbeat_at"], row["run__started_at"], cutoff) for row in running):
        dead = leases.end_dead_runs(conversation_id)
        if ended is not None:
            ended.extend(dead)
        rows = _tail(conversation_id, limit)
    active = next(
        (
            {"run_id": str(row["run_id"]), "prompt": row["run__prompt"], "origin": row["run__worker"]}
            for row in rows
            if row["run__status"] == Run.Status.RUNNING
            and leases.is_alive(row["run__heartbeat_at"], row["run__started_at"], cutoff)
        ),
        None,
    )
    messages = [
        {
            "position": row["position"],
            "role": row["role"],
            "content": protocol.json_safe(protocol.from_storable(row["content"])),
            "partial": row["partial"],
            "run_id": str(row["run_id"]) if row["run_id"] else None,
        }
        for row in reversed(rows)
    ]
    return messages, active


def _tail(conversation_id: Any, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` messages of a conversation, newest first, with the status of the run of each."""
    fields = ("position", "role", "content", "partial", "run_id", "run__status", "run__started_at", "run__prompt")
    return list(
        Message.objects.filter(conversation_id=conversation_id)
        .order_by("-position")
        .values(*fields, "run__heartbeat_at", "run__worker")[:limit]
    )
