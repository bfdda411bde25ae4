"""The channel-layer messages between a conversation's connections: one TypedDict and one builder per type.

A consumer handles ``agentapp.x`` in its ``agentapp_x`` method (Channels dispatches by naming). Messages that
carry a frame to sockets name the sending connection's channel as ``origin``, so it skips its own copy; ``origin``
None (a view, a signal) reaches every connection.
"""

from __future__ import annotations

from typing import Any, Final, Literal, NotRequired, TypedDict

from .protocol import (
    FeedbackFrame,
    Frame,
    InterruptResolvedFrame,
    RunDequeuedFrame,
    RunFinishedFrame,
    RunQueuedFrame,
    TitleFrame,
)

FRAME_MESSAGE_TYPE: Final = "agentapp.frame"  # to the group: one (merged) frame of a run, with the origin's channel
CANCEL_MESSAGE_TYPE: Final = "agentapp.cancel"  # to the group: stop the conversation's run
SYNC_MESSAGE_TYPE: Final = "agentapp.sync"  # to the origin or the group: send me a run's frames after ``after``
REPLAY_MESSAGE_TYPE: Final = "agentapp.replay"  # to one channel: a chunk of the frames asked for
ACCESS_MESSAGE_TYPE: Final = "agentapp.access"  # to the group: a user's role changed (None: removed)
DELETED_MESSAGE_TYPE: Final = "agentapp.deleted"  # to the group: the conversation was deleted
PRESENCE_MESSAGE_TYPE: Final = "agentapp.presence"  # to the group or one channel: a process's count, or a query for it
RESOLVED_MESSAGE_TYPE: Final = "agentapp.resolved"  # to the group: a wait for approval ended, or a dead run was ended
TITLE_MESSAGE_TYPE: Final = "agentapp.title"  # to the group: the conversation has a new title
FEEDBACK_MESSAGE_TYPE: Final = "agentapp.feedback"  # to the group: a ``feedback`` frame
QUEUE_MESSAGE_TYPE: Final = "agentapp.queue"  # to the group: a prompt was queued, or left the queue
REJOINED_MESSAGE_TYPE: Final = "agentapp.rejoined"  # never sent: a consumer tells itself it is back in its group
REQUESTS_MESSAGE_TYPE: Final = "agentapp.requests"  # never sent: a consumer tells itself replay requests wait

# To the workers' channel (agentapp.workers, not a connection): a doorbell, a conversation has a queued run.
RUN_REQUEST_TYPE: Final = "agentapp.run"

# The two presence events: a process's count of its connections, and a query for the other processes' counts.
PRESENCE_COUNT: Final = "count"
PRESENCE_QUERY: Final = "query"


class FrameMessage(TypedDict):
    """Sent to the group by a run's broadcaster: one (merged) frame of the run."""

    type: Literal["agentapp.frame"]
    frame: Frame
    origin: str


class CancelMessage(TypedDict):
    """Sent to the group when a cancel arrives on a connection not running the run, and to the run's worker."""

    type: Literal["agentapp.cancel"]
    conversation_id: NotRequired[str]


class SyncMessage(TypedDict):
    """Sent to a run's origin (or the whole group) by a connection that needs the run's frames after ``after``."""

    type: Literal["agentapp.sync"]
    run_id: str
    after: int
    sync_id: str
    reply_to: str
    conversation_id: str


class ReplayMessage(TypedDict):
    """Sent to the asker of a ``sync``: chunk ``index`` of ``count`` of the frames it asked for."""

    type: Literal["agentapp.replay"]
    run_id: str
    sync_id: str
    index: int
    count: int
    frames: list[Frame]


class AccessMessage(TypedDict):
    """Sent to the group once a user's role on the conversation changed (``role`` None: removed)."""

    type: Literal["agentapp.access"]
    user_id: Any
    role: str | None


class DeletedMessage(TypedDict):
    """Sent to the group once the conversation is deleted: its connections close (4404)."""

    type: Literal["agentapp.deleted"]


class PresenceCountMessage(TypedDict):
    """Sent to the group (or, answering a query, to one channel) when a process's count of connections changes."""

    type: Literal["agentapp.presence"]
    event: Literal["count"]
    process: str
    count: int
    number: int


class PresenceQueryMessage(TypedDict):
    """Sent to the group by a process new to the conversation: each other process answers with its count."""

    type: Literal["agentapp.presence"]
    event: Literal["query"]
    process: str
    id: str
    reply_to: str


class ResolvedMessage(TypedDict):
    """Sent to the group with an ``interrupt_resolved`` frame, or the ``run_finished`` of a dead run."""

    type: Literal["agentapp.resolved"]
    frame: InterruptResolvedFrame | RunFinishedFrame
    origin: str


class TitleMessage(TypedDict):
    """Sent to the group once the conversation has a new title; every connection forwards the frame."""

    type: Literal["agentapp.title"]
    frame: TitleFrame


class FeedbackMessage(TypedDict):
    """Sent to the group once feedback is stored, from a socket (``origin`` its channel) or a view (None)."""

    type: Literal["agentapp.feedback"]
    frame: FeedbackFrame
    origin: str | None


class QueueMessage(TypedDict):
    """Sent to the group with a ``run_queued`` or ``run_dequeued`` frame; the connection of ``origin`` has it."""

    type: Literal["agentapp.queue"]
    frame: RunQueuedFrame | RunDequeuedFrame
    origin: str


class RunMessage(TypedDict):
    """Sent to the workers' channel: the conversation has a queued run (the database holds it; this only rings)."""

    type: Literal["agentapp.run"]
    conversation_id: str


class RejoinedMessage(TypedDict):
    """Never sent: what a consumer's receive returns once it is back in its group after the layer failed."""

    type: Literal["agentapp.rejoined"]


class RequestsMessage(TypedDict):
    """Never sent: what a connection puts in its own inbox when frames it forwarded showed a gap to replay."""

    type: Literal["agentapp.requests"]


Message = (
    FrameMessage
    | CancelMessage
    | SyncMessage
    | ReplayMessage
    | AccessMessage
    | DeletedMessage
    | PresenceCountMessage
    | PresenceQueryMessage
    | ResolvedMessage
    | TitleMessage
    | FeedbackMessage
    | QueueMessage
    | RejoinedMessage
    | RequestsMessage
)


def frame_message(frame: Frame, origin: str) -> FrameMessage:
    """One frame of a run for the group."""
    return {"type": FRAME_MESSAGE_TYPE, "frame": frame, "origin": origin}


def cancel_message(conversation_id: str | None = None) -> CancelMessage:
    """Stop the conversation's run, wherever it runs."""
    if conversation_id is None:
        return {"type": CANCEL_MESSAGE_TYPE}
    return {"type": CANCEL_MESSAGE_TYPE, "conversation_id": conversation_id}


def sync_message(run_id: str, after: int, sync_id: str, reply_to: str, conversation_id: str) -> SyncMessage:
    """Ask for a run's frames after ``after``, answered to ``reply_to``."""
    return {
        "type": SYNC_MESSAGE_TYPE,
        "run_id": run_id,
        "after": after,
        "sync_id": sync_id,
        "reply_to": reply_to,
        "conversation_id": conversation_id,
    }


def replay_message(run_id: str, sync_id: str, index: int, count: int, frames: list[Frame]) -> ReplayMessage:
    """Chunk ``index`` of ``count`` of a replay."""
    return {
        "type": REPLAY_MESSAGE_TYPE,
        "run_id": run_id,
        "sync_id": sync_id,
        "index": index,
        "count": count,
        "frames": frames,
    }


def access_message(user_id: Any, role: str | None) -> AccessMessage:
    """A user's new role (None: removed)."""
    return {"type": ACCESS_MESSAGE_TYPE, "user_id": user_id, "role": role}


def deleted_message() -> DeletedMessage:
    """The conversation is gone."""
    return {"type": DELETED_MESSAGE_TYPE}


def presence_message(process: str, count: int, number: int) -> PresenceCountMessage:
    """A process's count of its connections, numbered so that a stale count is told apart."""
    return {
        "type": PRESENCE_MESSAGE_TYPE,
        "event": PRESENCE_COUNT,
        "process": process,
        "count": count,
        "number": number,
    }


def presence_query_message(process: str, query_id: str, reply_to: str) -> PresenceQueryMessage:
    """Ask the other processes for their counts, answered to ``reply_to``."""
    return {
        "type": PRESENCE_MESSAGE_TYPE,
        "event": PRESENCE_QUERY,
        "process": process,
        "id": query_id,
        "reply_to": reply_to,
    }


def resolved_message(frame: InterruptResolvedFrame | RunFinishedFrame, origin: str) -> ResolvedMessage:
    """An ``interrupt_resolved`` frame, or a dead run's ``run_finished``, for the group."""
    return {"type": RESOLVED_MESSAGE_TYPE, "frame": frame, "origin": origin}


def title_message(frame: TitleFrame) -> TitleMessage:
    """A ``title`` frame for the group."""
    return {"type": TITLE_MESSAGE_TYPE, "frame": frame}


def feedback_message(frame: FeedbackFrame, origin: str | None) -> FeedbackMessage:
    """A ``feedback`` frame for the group; ``origin`` None when a view stored it."""
    return {"type": FEEDBACK_MESSAGE_TYPE, "frame": frame, "origin": origin}


def queue_message(frame: RunQueuedFrame | RunDequeuedFrame, origin: str) -> QueueMessage:
    """A ``run_queued`` or ``run_dequeued`` frame for the group."""
    return {"type": QUEUE_MESSAGE_TYPE, "frame": frame, "origin": origin}


def run_message(conversation_id: str) -> RunMessage:
    """The doorbell for the workers' channel."""
    return {"type": RUN_REQUEST_TYPE, "conversation_id": conversation_id}


def rejoined_message() -> RejoinedMessage:
    """What a consumer's receive returns once it rejoined its group."""
    return {"type": REJOINED_MESSAGE_TYPE}


def requests_message() -> RequestsMessage:
    """What a connection puts in its own inbox when replay requests wait to be sent."""
    return {"type": REQUESTS_MESSAGE_TYPE}
