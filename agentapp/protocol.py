"""The wire protocol: every frame the server sends, every frame a client may send, and the whitelist between.

Server frames are JSON objects with ``type`` and ``conversation_id``; frames inside a run also carry
``run_id`` and ``seq`` (0, 1, 2, ... per run). Strands events keep their ``stream_async`` key as both
the frame type and the payload key, so ``"data" in frame`` works as it does on the raw event.
Only the fields listed here leave the server: agent objects, spans, invocation state and exceptions
never do; ``STRANDS_EVENTS`` and ``DROPPED_EVENTS`` say what each Strands event becomes. Each server frame type has
a TypedDict here (``SERVER_FRAMES``), and ``merge_into`` / ``seq_span`` are
the one rule for merging text deltas and tool-use updates. ``docs/protocol.md`` describes the same frames for
client authors; ``agentapp.messages`` types the channel-layer messages that carry them between connections.
"""

import base64
import datetime
import decimal
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from .conf import IF_BUSY_POLICIES, app_settings

### Frame types ###

# Strands events, forwarded under their stream_async key.
INIT_EVENT_LOOP = "init_event_loop"
START = "start"
START_EVENT_LOOP = "start_event_loop"
DATA = "data"
CURRENT_TOOL_USE = "current_tool_use"
REASONING = "reasoning"
MESSAGE = "message"
TOOL_RESULT = "tool_result"
FORCE_STOP = "force_stop"
THROTTLED = "event_loop_throttled_delay"
RESULT = "result"
# A citation the model streams with its text; a tool's progress while it runs (Strands' ToolStreamEvent).
CITATION = "citation"
TOOL_STREAM = "tool_stream"
# A Strands event this module has no rule for: its JSON-safe fields (see ``STRANDS_EVENTS``).
RAW = "raw"

# Our own frames.
CONVERSATION = "conversation"
RUN_STARTED = "run_started"
RUN_FINISHED = "run_finished"
RUN_QUEUED = "run_queued"
RUN_DEQUEUED = "run_dequeued"
ERROR = "error"
# A tool call waits for a human's approval (inside the run); the wait ended without a new run (outside any run).
INTERRUPT = "interrupt"
INTERRUPT_RESOLVED = "interrupt_resolved"
# How many connections are open on the conversation (outside any run; only to clients that ask for it).
PRESENCE = "presence"
# A user's thumbs up or down on an assistant message, given or changed (outside any run; to every connection).
FEEDBACK = "feedback"
# The conversation has a new title (outside any run; to every connection).
TITLE = "title"
# A multi-agent run (a Strands Swarm or Graph): a node starts, a node ends, control passes between nodes.
NODE_STARTED = "node_started"
NODE_FINISHED = "node_finished"
HANDOFF = "handoff"

# Client frames.
CLIENT_PROMPT = "prompt"
CLIENT_CANCEL = "cancel"
CLIENT_INTERRUPT_RESPONSE = "interrupt_response"
CLIENT_RESUME = "resume"
CLIENT_FEEDBACK = "feedback"
CLIENT_FRAME_TYPES = (CLIENT_PROMPT, CLIENT_CANCEL, CLIENT_INTERRUPT_RESPONSE, CLIENT_RESUME, CLIENT_FEEDBACK)

# Error codes carried by ``error`` frames.
ERR_INVALID_JSON = "invalid_json"
# The JSON nests arrays and objects deeper than ``MAX_JSON_DEPTH``.
ERR_TOO_DEEP = "too_deep"
ERR_TOO_COMPLEX = "too_complex"
ERR_BINARY_FRAME = "binary_not_supported"
ERR_FRAME_TOO_LARGE = "frame_too_large"
ERR_INVALID_FRAME = "invalid_frame"
ERR_UNKNOWN_TYPE = "unknown_type"
ERR_MISSING_PROMPT = "missing_prompt"
ERR_PROMPT_TOO_LARGE = "prompt_too_large"
ERR_TOO_MANY_ATTACHMENTS = "too_many_attachments"
ERR_UNKNOWN_ATTACHMENT = "unknown_attachment"
ERR_BUSY = "busy"
ERR_NO_ACTIVE_RUN = "no_active_run"
ERR_RUN_FAILED = "run_failed"
ERR_MODEL_THROTTLED = "model_throttled"
ERR_TIME_LIMIT = "time_limit"
ERR_STORAGE_FAILED = "storage_failed"
ERR_FORBIDDEN = "forbidden"
ERR_NOT_FOUND = "not_found"
ERR_LOGIN_REQUIRED = "login_required"
ERR_READ_ONLY = "read_only"
ERR_SLOW_CONSUMER = "slow_consumer"
ERR_AWAITING_APPROVAL = "awaiting_approval"
ERR_NO_PENDING_APPROVAL = "no_pending_approval"
ERR_UNKNOWN_INTERRUPT = "unknown_interrupt"
ERR_INVALID_RESPONSE = "invalid_response"
ERR_INVALID_RESUME = "invalid_resume"
ERR_RESUME_UNAVAILABLE = "resume_unavailable"
ERR_RATE_LIMITED = "rate_limited"
ERR_SERVER_BUSY = "server_busy"
# The user spent a token or cost budget (agentapp.quotas); the frame also carries ``resets_at``.
ERR_QUEUE_FULL = "queue_full"
ERR_QUOTA_EXCEEDED = "quota_exceeded"
# A feedback frame with a bad position, rating or comment; one naming no assistant message.
ERR_INVALID_FEEDBACK = "invalid_feedback"
ERR_UNKNOWN_MESSAGE = "unknown_message"

# WebSocket close codes (application range 4000-4999).
CLOSE_LOGIN_REQUIRED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_SLOW_CONSUMER = 4429

# What a prompt sent while its conversation is busy may ask for (``if_busy``).
IF_BUSY_CHOICES = IF_BUSY_POLICIES

# Run statuses carried by ``run_finished``.
STATUS_COMPLETED = "completed"
STATUS_CANCELLED = "cancelled"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
STATUS_AWAITING_APPROVAL = "awaiting_approval"

# Decisions an ``interrupt_response`` may carry, and the longest text with one.
DECISIONS = ("approve", "deny")
MAX_DECISION_TEXT_CHARS = 4000
# Most interrupts one ``interrupt_response`` may answer.
MAX_RESPONSES = 100
# Ratings a ``feedback`` frame may carry (null takes the user's feedback back).
RATINGS = ("up", "down")

### Server frames as types ###
# One TypedDict per server frame type, its docstring saying when the frame is sent; ``docs/protocol.md`` has the
# details and examples. Frames of a run carry the ``RunEnvelope`` fields, the others ``conversation_id`` only.
# (This module has no ``from __future__ import annotations``: with it, Python 3.11 takes NotRequired keys for
# required ones in ``__required_keys__``.)


class PublicMessage(TypedDict):
    """A Strands message on the wire: its role and JSON-safe content blocks."""

    role: str
    content: list[Any]


class ToolUsePayload(TypedDict):
    """A tool call as the model streams it: ``input`` is the (possibly incomplete) JSON text so far."""

    toolUseId: str
    name: str
    input: Any


class ToolResultPayload(TypedDict):
    """A tool's result, with the tool's name added to Strands' ``toolResult`` block."""

    toolUseId: str
    name: str
    status: str
    content: list[Any]


class Usage(TypedDict, total=False):
    """A run's token counts; the cache counts only when the model reports them."""

    inputTokens: int
    outputTokens: int
    totalTokens: int
    cacheReadInputTokens: int
    cacheWriteInputTokens: int


class Metrics(TypedDict):
    """A run's event-loop cycles and their durations in seconds."""

    cycles: int
    cycleDurationsS: list[float]


class ResultPayload(TypedDict):
    """Strands' AgentResult on the wire: stop reason, final message, usage, metrics, and any structured output."""

    stop_reason: str
    message: PublicMessage
    usage: Usage
    metrics: Metrics
    structured_output: NotRequired[dict[str, Any]]
    # A multi-agent run's result: the nodes that ran, in order (the message is the last one's text).
    nodes: NotRequired[list[str]]


class CitationPayload(TypedDict, total=False):
    """One Strands citation: where in a source the text comes from, the cited source text, the source's title."""

    location: dict[str, Any]
    sourceContent: list[Any]
    title: str


class ToolStreamPayload(TypedDict):
    """What a running tool yielded (``data``, JSON-safe), with its call's id and name."""

    toolUseId: str
    name: str
    data: Any


class InterruptPayload(TypedDict):
    """One tool call waiting for approval (``agentapp.approvals.interrupt_payloads``); answer it by ``id``."""

    id: str
    name: str
    tool: str
    toolUseId: str
    input: Any
    reason: Any


class AttachmentRef(TypedDict):
    """An uploaded file as a stored prompt and the wire carry it: ``{"attachment": ref}`` next to the text block.

    ``url`` opens the file for those with access to the conversation; ``width`` and ``height`` are an image's.
    """

    id: str
    name: str
    mime_type: str
    size: int
    url: str
    width: NotRequired[int]
    height: NotRequired[int]


class HistoryMessage(TypedDict):
    """A stored message in the ``conversation`` frame; ``partial`` marks text cut short by a cancel or failure."""

    position: int
    role: str
    content: list[Any]
    partial: bool
    run_id: str | None


class ActiveRun(TypedDict):
    """The run in progress when a connection opens."""

    run_id: str
    prompt: str


class PendingApproval(TypedDict):
    """The run waiting for approval when a connection opens, with its ``interrupt`` frame's interrupts."""

    run_id: str
    interrupts: list[InterruptPayload]


class FeedbackPayload(TypedDict):
    """One user's feedback on the assistant message at ``position`` (``rating`` None: taken back)."""

    position: int
    rating: str | None
    comment: str
    user_id: int | None
    user: str
    updated: str | None


class RunEnvelope(TypedDict):
    """The fields every frame of a run carries, added by ``RunFrames``: ``seq`` is 0, 1, 2, ... per run."""

    conversation_id: str
    run_id: str
    seq: int
    # In a multi-agent run: the node whose agent sent the event (a Swarm's agent name, a Graph's node id).
    node: NotRequired[str]


class QueuedPrompt(TypedDict):
    """A prompt waiting in the conversation's queue."""

    run_id: str
    prompt: str


class RunQueuedFrame(TypedDict):
    """A prompt was stored as a queued run; ``position`` counts the queued runs ahead of it (0: next)."""

    type: Literal["run_queued"]
    conversation_id: str
    run_id: str
    prompt: str
    position: int


class RunDequeuedFrame(TypedDict):
    """A queued run left the queue without running: ``cancelled`` by a user, or ``refused`` when its turn came."""

    type: Literal["run_dequeued"]
    conversation_id: str
    run_id: str
    reason: Literal["cancelled", "refused"]
    code: NotRequired[str]
    message: NotRequired[str]


class ConversationFrame(TypedDict):
    """Sent once, right after the connection is accepted: the stored history, the role, the run in progress."""

    type: Literal["conversation"]
    conversation_id: str
    title: str
    role: str
    messages: list[HistoryMessage]
    active_run: ActiveRun | None
    pending_approval: PendingApproval | None
    feedback: list[FeedbackPayload]
    queued: list[QueuedPrompt]


class RunStartedFrame(RunEnvelope):
    """The first frame of a run (seq 0), once the run and its prompt are saved; a resume names the run it resumes."""

    type: Literal["run_started"]
    prompt: str
    # The prompt's attachments, as ``AttachmentRef`` (never their bytes); left out for a prompt without any.
    attachments: NotRequired[list["AttachmentRef"]]
    resumes: NotRequired[str]
    responses: NotRequired[dict[str, dict[str, str]]]


class InitEventLoopFrame(RunEnvelope):
    """Strands' InitEventLoopEvent: the agent invocation begins, once per run."""

    type: Literal["init_event_loop"]
    init_event_loop: bool


class StartFrame(RunEnvelope):
    """Strands' (deprecated) StartEvent: an event-loop cycle begins."""

    type: Literal["start"]
    start: bool


class StartEventLoopFrame(RunEnvelope):
    """Strands' StartEventLoopEvent: a cycle starts its model call."""

    type: Literal["start_event_loop"]
    start_event_loop: bool


class DataFrame(RunEnvelope):
    """A text delta from the model; a frame that merged several carries ``seq_first``, the first one's seq."""

    type: Literal["data"]
    data: str
    seq_first: NotRequired[int]


class CurrentToolUseFrame(RunEnvelope):
    """The model streams a tool call; merged updates (group, replay) carry ``seq_first`` of the first."""

    type: Literal["current_tool_use"]
    current_tool_use: ToolUsePayload
    seq_first: NotRequired[int]


class ReasoningFrame(RunEnvelope):
    """A reasoning-text delta, from models that stream reasoning."""

    type: Literal["reasoning"]
    reasoning: bool
    reasoningText: str


class CitationFrame(RunEnvelope):
    """Strands' CitationStreamEvent: a citation for the text being streamed (stored in a citationsContent block)."""

    type: Literal["citation"]
    citation: CitationPayload


class ToolStreamFrame(RunEnvelope):
    """Strands' ToolStreamEvent: a running tool reports progress (each item a streaming tool yields)."""

    type: Literal["tool_stream"]
    tool_stream: ToolStreamPayload


class RawFrame(RunEnvelope):
    """A Strands event agentapp has no frame for, as its JSON-safe fields (invocation state left out)."""

    type: Literal["raw"]
    raw: dict[str, Any]


class MessageFrame(RunEnvelope):
    """A complete message added to the conversation: the assistant's after each model call, or tool results."""

    type: Literal["message"]
    message: PublicMessage


class ToolResultFrame(RunEnvelope):
    """Follows a user-role ``message`` frame, one per toolResult block in it."""

    type: Literal["tool_result"]
    tool_result: ToolResultPayload


class ForceStopFrame(RunEnvelope):
    """Strands' ForceStopEvent: the event loop stopped on an exception (an error and a failed run follow)."""

    type: Literal["force_stop"]
    force_stop: bool
    force_stop_reason: str


class ThrottledFrame(RunEnvelope):
    """Strands' EventLoopThrottleEvent: the model throttled and Strands retries after this many seconds."""

    type: Literal["event_loop_throttled_delay"]
    event_loop_throttled_delay: float


class ResultFrame(RunEnvelope):
    """Strands' final AgentResult, the frame before ``run_finished`` when the stream ends or is cancelled."""

    type: Literal["result"]
    result: ResultPayload


class NodeStartedFrame(RunEnvelope):
    """Strands' MultiAgentNodeStartEvent: a node of a Swarm or Graph starts; its agent's frames carry ``node``."""

    type: Literal["node_started"]
    node: str
    node_type: str


class NodeFinishedFrame(RunEnvelope):
    """Strands' MultiAgentNodeStopEvent (or NodeCancelEvent): a node ended, with its status and final text."""

    type: Literal["node_finished"]
    node: str
    status: str
    text: str
    execution_time_ms: int
    usage: Usage


class HandoffFrame(RunEnvelope):
    """Strands' MultiAgentHandoffEvent: control passes from some nodes to others (a Swarm's handoff message)."""

    type: Literal["handoff"]
    from_nodes: list[str]
    to_nodes: list[str]
    message: str


class InterruptFrame(RunEnvelope):
    """Tool calls wait for a human's approval; ``run_finished`` with status ``awaiting_approval`` follows."""

    type: Literal["interrupt"]
    interrupts: list[InterruptPayload]


class InterruptResolvedFrame(TypedDict):
    """Outside any run, to every connection: a wait for approval ended without a new run (a ``cancel``)."""

    type: Literal["interrupt_resolved"]
    conversation_id: str
    run_id: str
    interrupt_ids: list[str]
    outcome: str


class RunFinishedFrame(TypedDict):
    """The last frame of every run that started; without ``seq`` (and with ``error``) when a dead run is ended."""

    type: Literal["run_finished"]
    conversation_id: str
    run_id: str
    seq: NotRequired[int]
    status: str
    stop_reason: str
    error: NotRequired[str]


class ErrorFrame(TypedDict):
    """A refusal or failure (``code``, ``message``): inside a run with its envelope, else answering one frame."""

    type: Literal["error"]
    conversation_id: str | None
    code: str
    message: str
    run_id: NotRequired[str]
    seq: NotRequired[int]
    resets_at: NotRequired[str]


class PresenceFrame(TypedDict):
    """Outside any run, only to connections that ask: how many connections watch the conversation now."""

    type: Literal["presence"]
    conversation_id: str
    watchers: int


class TitleFrame(TypedDict):
    """Outside any run, to every connection: the conversation was renamed or titled by the generator."""

    type: Literal["title"]
    conversation_id: str
    title: str


class FeedbackFrame(TypedDict):
    """Outside any run, to every connection: a user gave, changed or took back feedback on an answer."""

    type: Literal["feedback"]
    conversation_id: str
    feedback: FeedbackPayload


Frame = (
    ConversationFrame
    | RunStartedFrame
    | InitEventLoopFrame
    | StartFrame
    | StartEventLoopFrame
    | DataFrame
    | CurrentToolUseFrame
    | ReasoningFrame
    | CitationFrame
    | ToolStreamFrame
    | RawFrame
    | MessageFrame
    | ToolResultFrame
    | ForceStopFrame
    | ThrottledFrame
    | ResultFrame
    | NodeStartedFrame
    | NodeFinishedFrame
    | HandoffFrame
    | InterruptFrame
    | InterruptResolvedFrame
    | RunFinishedFrame
    | RunQueuedFrame
    | RunDequeuedFrame
    | ErrorFrame
    | PresenceFrame
    | TitleFrame
    | FeedbackFrame
)

# Each server frame type and its TypedDict.
SERVER_FRAMES: dict[str, type] = {
    CONVERSATION: ConversationFrame,
    RUN_STARTED: RunStartedFrame,
    INIT_EVENT_LOOP: InitEventLoopFrame,
    START: StartFrame,
    START_EVENT_LOOP: StartEventLoopFrame,
    DATA: DataFrame,
    CURRENT_TOOL_USE: CurrentToolUseFrame,
    REASONING: ReasoningFrame,
    CITATION: CitationFrame,
    TOOL_STREAM: ToolStreamFrame,
    RAW: RawFrame,
    MESSAGE: MessageFrame,
    TOOL_RESULT: ToolResultFrame,
    FORCE_STOP: ForceStopFrame,
    THROTTLED: ThrottledFrame,
    RESULT: ResultFrame,
    NODE_STARTED: NodeStartedFrame,
    NODE_FINISHED: NodeFinishedFrame,
    HANDOFF: HandoffFrame,
    INTERRUPT: InterruptFrame,
    INTERRUPT_RESOLVED: InterruptResolvedFrame,
    RUN_FINISHED: RunFinishedFrame,
    RUN_QUEUED: RunQueuedFrame,
    RUN_DEQUEUED: RunDequeuedFrame,
    ERROR: ErrorFrame,
    PRESENCE: PresenceFrame,
    TITLE: TitleFrame,
    FEEDBACK: FeedbackFrame,
}


### Merging: one rule for the socket outbox, the group broadcast and the run log ###


def seq_span(frame: Mapping[str, Any]) -> tuple[int, int]:
    """The seqs a run frame covers, first and last: ``seq_first``..``seq`` for a merged frame, else ``seq`` twice."""
    last = frame["seq"]
    return frame.get("seq_first", last), last


def continues(previous: Mapping[str, Any], frame: Mapping[str, Any], tool_uses: bool = True) -> bool:
    """Whether ``frame`` merges into ``previous``: it starts right after it in the same run, and both are text
    deltas or (when ``tool_uses``) ``current_tool_use`` updates of one tool use."""
    kind = frame["type"]
    if kind != previous["type"] or frame.get("run_id") != previous.get("run_id"):
        return False
    if frame.get("node") != previous.get("node"):
        return False  # the text of two nodes of a multi-agent run stays apart
    if kind == CURRENT_TOOL_USE:
        if not tool_uses or frame[CURRENT_TOOL_USE]["toolUseId"] != previous[CURRENT_TOOL_USE]["toolUseId"]:
            return False
    elif kind != DATA:
        return False
    return seq_span(frame)[0] == previous["seq"] + 1


def merge_start(frame: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``frame`` that later frames may merge into; a ``data`` frame gets its ``seq_first``."""
    return dict(frame, seq_first=seq_span(frame)[0]) if frame["type"] == DATA else dict(frame)


def merge_into(
    previous: dict[str, Any], frame: Mapping[str, Any], tool_uses: bool = True, max_chars: int | None = None
) -> bool:
    """Merge ``frame`` into ``previous`` in place if it ``continues`` it; False (nothing changed) if not.

    Text is appended and ``seq`` becomes the frame's; a tool-use update replaces the fields of ``previous``.
    Either way ``seq_first`` stays where ``previous`` began. ``max_chars``: text holding that many characters
    takes no more.
    """
    if not continues(previous, frame, tool_uses):
        return False
    first = seq_span(previous)[0]
    if frame["type"] == DATA:
        if max_chars is not None and len(previous[DATA]) >= max_chars:
            return False
        previous.setdefault("seq_first", first)
        previous[DATA] += frame[DATA]
        previous["seq"] = frame["seq"]
    else:
        previous.clear()
        previous.update(frame)
        previous["seq_first"] = first
    return True


### JSON safety ###

_MAX_DEPTH = 32


def json_safe(value: Any, _depth: int = 0) -> Any:
    """Return a JSON-safe copy of content-block data; anything unknown becomes a neutral placeholder."""
    if _depth > _MAX_DEPTH:
        return "[too deep]"
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item, _depth + 1) for key, item in value.items() if isinstance(key, str)}
    if isinstance(value, (list, tuple)):
        return [json_safe(item, _depth + 1) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    return "[unserializable]"


def encode_frame(frame: Mapping[str, Any]) -> str:
    """Serialize a frame built by this module to compact JSON text."""
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (from a tool, say) has no UTF-8 form: escaped, the frame is still valid JSON text.
            return json.dumps(frame, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


### Storage codec: content blocks with bytes (images, documents) survive a round trip to JSON ###

_BYTES_MARKER = "__agentapp_bytes__"


def to_storable(value: Any) -> Any:
    """Encode content blocks for a JSON column, keeping bytes as base64 so the model can be fed them again."""
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_MARKER: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(key): to_storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_storable(item) for item in value]
    return json_safe(value)


def from_storable(value: Any) -> Any:
    """Decode what ``to_storable`` wrote back into Strands content blocks."""
    if isinstance(value, dict):
        if set(value) == {_BYTES_MARKER}:
            return base64.b64decode(value[_BYTES_MARKER])
        return {key: from_storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_storable(item) for item in value]
    return value


### Server frames from Strands events ###


def public_message(message: Mapping[str, Any]) -> PublicMessage:
    """The wire form of a Strands message: role and JSON-safe content blocks only."""
    return {"role": str(message.get("role", "")), "content": json_safe(list(message.get("content") or []))}


def tool_results_in(message: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield each toolResult block of a user-role message (where Strands puts tool results)."""
    if message.get("role") != "user":
        return
    for block in message.get("content") or []:
        if isinstance(block, Mapping) and isinstance(block.get("toolResult"), Mapping):
            yield block["toolResult"]


def _public_tool_use(tool_use: Mapping[str, Any]) -> ToolUsePayload:
    return {
        "toolUseId": str(tool_use.get("toolUseId", "")),
        "name": str(tool_use.get("name", "")),
        "input": json_safe(tool_use.get("input", "")),
    }


def _usage(usage: Mapping[str, Any] | None) -> Usage:
    usage = usage or {}
    keys = ("inputTokens", "outputTokens", "totalTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
    return {key: int(usage[key]) for key in keys if isinstance(usage.get(key), (int, float))}


def result_payload(result: Any) -> ResultPayload:
    """The wire form of an AgentResult: stop reason, final message, this run's usage and metrics.

    A run with a structured output model adds ``structured_output``, the validated object as JSON.
    """
    metrics = getattr(result, "metrics", None)
    invocation = getattr(metrics, "latest_agent_invocation", None)
    cycles = list(getattr(invocation, "cycles", None) or [])
    durations = list(getattr(metrics, "cycle_durations", None) or [])[-len(cycles) :] if cycles else []
    message = getattr(result, "message", None) or {}
    payload: ResultPayload = {
        "stop_reason": str(getattr(result, "stop_reason", "") or ""),
        "message": public_message(message),
        "usage": _usage(getattr(invocation, "usage", None)),
        "metrics": {
            "cycles": len(cycles),
            "cycleDurationsS": [round(float(duration), 6) for duration in durations],
        },
    }
    structured = getattr(result, "structured_output", None)
    if structured is not None and callable(getattr(structured, "model_dump", None)):
        payload["structured_output"] = json_safe(structured.model_dump(mode="json"))
    return payload


### Strands events: the frames each becomes, or why it becomes none (docs/protocol.md, "Strands events") ###

# Each event class of ``strands.types._events`` that becomes frames, and their types.
STRANDS_EVENTS: dict[str, tuple[str, ...]] = {
    "InitEventLoopEvent": (INIT_EVENT_LOOP,),
    "StartEvent": (START,),
    "StartEventLoopEvent": (START_EVENT_LOOP,),
    "TextStreamEvent": (DATA,),
    "ToolUseStreamEvent": (CURRENT_TOOL_USE,),
    "ReasoningTextStreamEvent": (REASONING,),
    "CitationStreamEvent": (CITATION,),
    "ToolStreamEvent": (TOOL_STREAM,),
    "AgentAsToolStreamEvent": (TOOL_STREAM,),
    "ModelMessageEvent": (MESSAGE,),
    "ToolResultMessageEvent": (MESSAGE, TOOL_RESULT),
    "ForceStopEvent": (FORCE_STOP,),
    "EventLoopThrottleEvent": (THROTTLED,),
    "AgentResultEvent": (RESULT,),
    "ToolInterruptEvent": (INTERRUPT,),  # built by the runner, from the agent's interrupt state (agentapp.approvals)
    "MultiAgentNodeStartEvent": (NODE_STARTED,),
    "MultiAgentNodeStopEvent": (NODE_FINISHED,),
    "MultiAgentNodeCancelEvent": (NODE_FINISHED,),
    "MultiAgentHandoffEvent": (HANDOFF,),
    "MultiAgentNodeStreamEvent": (DATA,),  # the frames of the wrapped agent event, each with ``node``
    "MultiAgentResultEvent": (RESULT,),
}
# Each event class sent as no frame, and why. Any other event becomes a ``raw`` frame.
DROPPED_EVENTS: dict[str, str] = {
    "TypedEvent": "The base class of Strands events, never sent itself.",
    "ModelStreamEvent": "The base class of the stream events; Strands does not send an empty one.",
    "ModelStreamChunkEvent": "The model's raw chunk (`event`): the typed event sent with it is the frame.",
    "ReasoningRedactedContentStreamEvent": "Redacted reasoning has no readable text; the stored message keeps it.",
    "ReasoningSignatureStreamEvent": "A signature is for the model only; the stored message keeps it.",
    "StructuredOutputEvent": "The `result` frame carries the structured output.",
    "ToolCancelEvent": "The cancelled call's error result follows in `message` and `tool_result`.",
    "EventLoopStopEvent": "Not sent to `stream_async`; `result` follows.",
    "ModelStopReason": "Not sent to `stream_async`.",
    "ToolResultEvent": "Not sent to `stream_async`; the tool results' `message` and `tool_result` follow.",
    "MultiAgentNodeInterruptEvent": "Multi-agent runs do not pause for approval: such tool calls are refused.",
}
# Keys of the events dropped by rule (``stop``: EventLoopStopEvent's and ModelStopReason's); a tool interrupt is the
# runner's ``interrupt`` frame.
_DROPPED_KEYS = (
    "reasoningRedactedContent",
    "reasoning_signature",
    "structured_output",
    "tool_cancel_event",
    "tool_interrupt_event",
    "stop",
)
# Invocation state Strands merges into some events: never on the wire, nor in a ``raw`` frame or a tool's stream.
_INVOCATION_STATE = frozenset(
    {
        "agent",
        "model",
        "messages",
        "system_prompt",
        "tool_config",
        "request_state",
        "invocation_state",
        "event_loop_cycle_id",
        "event_loop_cycle_trace",
        "event_loop_cycle_span",
        "event_loop_parent_span",
        "event_loop_parent_cycle_id",
        "trace_span",
    }
)
# Keys of the events that become frames: an event holding one that matched no rule above is malformed.
_KNOWN_KEYS = (DATA, CURRENT_TOOL_USE, REASONING, CITATION, "tool_stream_event", MESSAGE, FORCE_STOP, THROTTLED, RESULT)
_PLAIN = (type(None), bool, int, float, str, list, tuple, Mapping, bytes, bytearray)


def public_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event's fields of plain data, made JSON-safe; invocation state and objects (agents, spans) left out."""
    return {
        key: json_safe(value)
        for key, value in event.items()
        if isinstance(key, str) and key not in _INVOCATION_STATE and isinstance(value, _PLAIN)
    }


def _citation(citation: Mapping[str, Any]) -> CitationPayload:
    payload: CitationPayload = {}
    if isinstance(citation.get("location"), Mapping):
        payload["location"] = json_safe(citation["location"])
    if isinstance(citation.get("sourceContent"), (list, tuple)):
        payload["sourceContent"] = json_safe(list(citation["sourceContent"]))
    if isinstance(citation.get("title"), str):
        payload["title"] = citation["title"]
    return payload


def _tool_stream(stream: Mapping[str, Any]) -> ToolStreamPayload:
    tool_use = stream.get("tool_use")
    tool_use = tool_use if isinstance(tool_use, Mapping) else {}
    data = stream.get("data")
    return {
        "toolUseId": str(tool_use.get("toolUseId", "")),
        "name": str(tool_use.get("name", "")),
        # A sub-agent's event (an agent as a tool) carries its invocation state: left out here too.
        "data": public_fields(data) if isinstance(data, Mapping) else json_safe(data),
    }


def payloads_for_event(event: Mapping[str, Any], tool_names: Mapping[str, str]) -> list[dict[str, Any]]:
    """Translate one stream_async event into zero or more frame payloads (frames without the ``RunEnvelope``).

    ``STRANDS_EVENTS`` and ``DROPPED_EVENTS`` say what each Strands event becomes; anything else is a ``raw`` frame.
    """
    # Most events are a text delta or the raw model chunk that comes with it: both answered at the cost of a lookup.
    text = event.get(DATA)
    if type(text) is str:
        return [{"type": DATA, DATA: text}]
    if len(event) == 1 and "event" in event:
        return []
    return list(_other_payloads(event, tool_names))


def _other_payloads(event: Mapping[str, Any], tool_names: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    kind = event.get("type")
    if event.get(INIT_EVENT_LOOP):
        yield {"type": INIT_EVENT_LOOP, INIT_EVENT_LOOP: True}
    elif event.get(START_EVENT_LOOP):
        yield {"type": START_EVENT_LOOP, START_EVENT_LOOP: True}
    elif event.get(START):
        yield {"type": START, START: True}
    elif isinstance(kind, str) and kind.startswith("multiagent_"):
        yield from _multiagent_payloads(kind, event, tool_names)
    elif isinstance(event.get(CURRENT_TOOL_USE), Mapping):
        yield {"type": CURRENT_TOOL_USE, CURRENT_TOOL_USE: _public_tool_use(event[CURRENT_TOOL_USE])}
    elif event.get(REASONING) and isinstance(event.get("reasoningText"), str):
        yield {"type": REASONING, REASONING: True, "reasoningText": event["reasoningText"]}
    elif isinstance(event.get(CITATION), Mapping):
        yield {"type": CITATION, CITATION: _citation(event[CITATION])}
    elif isinstance(event.get("tool_stream_event"), Mapping):
        # An object a tool yields (not JSON data) says nothing to a client: only its result does, later.
        if isinstance(event["tool_stream_event"].get("data"), _PLAIN):
            yield {"type": TOOL_STREAM, TOOL_STREAM: _tool_stream(event["tool_stream_event"])}
    elif isinstance(event.get(MESSAGE), Mapping):
        message = event[MESSAGE]
        yield {"type": MESSAGE, MESSAGE: public_message(message)}
        for tool_result in tool_results_in(message):
            tool_use_id = str(tool_result.get("toolUseId", ""))
            yield {
                "type": TOOL_RESULT,
                TOOL_RESULT: {
                    "toolUseId": tool_use_id,
                    "name": tool_names.get(tool_use_id, ""),
                    "status": str(tool_result.get("status", "")),
                    "content": json_safe(list(tool_result.get("content") or [])),
                },
            }
    elif event.get(FORCE_STOP):
        yield {"type": FORCE_STOP, FORCE_STOP: True, "force_stop_reason": str(event.get("force_stop_reason", ""))}
    elif isinstance(event.get(THROTTLED), (int, float)):
        yield {"type": THROTTLED, THROTTLED: event[THROTTLED]}
    elif RESULT in event and not isinstance(event.get(RESULT), (str, bytes, Mapping)):
        yield {"type": RESULT, RESULT: result_payload(event[RESULT])}
    elif any(key in event for key in _DROPPED_KEYS) or kind == TOOL_RESULT:
        return
    elif any(key in event for key in _KNOWN_KEYS):
        return  # a known event's key with a value of the wrong shape: malformed, not new
    elif fields := public_fields(event):
        yield {"type": RAW, RAW: fields}


### Multi-agent events (a Swarm or a Graph, agentapp.multiagent) ###


def node_text(node_result: Any) -> str:
    """The final text of a node's result (Strands' NodeResult); "" for a failed node (its exception stays here)."""
    result = getattr(node_result, "result", None)
    if result is None or isinstance(result, Exception):
        return ""
    return str(result).removesuffix("\n")


def _status(value: Any) -> str:
    status = getattr(value, "status", None)
    return str(getattr(status, "value", status or ""))


def multiagent_result_payload(result: Any) -> ResultPayload:
    """The wire form of a Swarm's or Graph's result: its status as ``stop_reason``, the last node's text as the
    message, the usage of every node, node executions as ``cycles``, the nodes in the order they finished."""
    results = getattr(result, "results", None)
    results = results if isinstance(results, Mapping) else {}
    last = list(results.values())[-1] if results else None
    text = node_text(last)
    return {
        "stop_reason": _status(result),
        "message": {"role": "assistant", "content": [{"text": text}] if text else []},
        "usage": _usage(getattr(result, "accumulated_usage", None)),
        "metrics": {"cycles": int(getattr(result, "execution_count", 0) or 0), "cycleDurationsS": []},
        "nodes": [str(node) for node in results],
    }


def _multiagent_payloads(
    kind: str, event: Mapping[str, Any], tool_names: Mapping[str, str]
) -> Iterator[dict[str, Any]]:
    node = str(event.get("node_id", ""))
    if kind == "multiagent_node_start":
        yield {"type": NODE_STARTED, "node": node, "node_type": str(event.get("node_type", ""))}
    elif kind == "multiagent_node_stop":
        node_result = event.get("node_result")
        yield {
            "type": NODE_FINISHED,
            "node": node,
            "status": _status(node_result),
            "text": node_text(node_result),
            "execution_time_ms": int(getattr(node_result, "execution_time", 0) or 0),
            "usage": _usage(getattr(node_result, "accumulated_usage", None)),
        }
    elif kind == "multiagent_node_cancel":
        yield {
            "type": NODE_FINISHED,
            "node": node,
            "status": "cancelled",
            "text": "",
            "execution_time_ms": 0,
            "usage": {},
        }
    elif kind == "multiagent_handoff":
        message = event.get("message")
        yield {
            "type": HANDOFF,
            "from_nodes": [str(item) for item in event.get("from_node_ids") or []],
            "to_nodes": [str(item) for item in event.get("to_node_ids") or []],
            "message": message if isinstance(message, str) else "",
        }
    elif kind == "multiagent_node_stream" and isinstance(event.get("event"), Mapping):
        for payload in payloads_for_event(event["event"], tool_names):
            if payload["type"] != RESULT:  # a node's own result is its ``node_finished``
                payload.setdefault("node", node)
                yield payload
    elif kind == "multiagent_result":
        yield {"type": RESULT, RESULT: multiagent_result_payload(event.get("result"))}
    elif kind != "multiagent_node_interrupt" and (fields := public_fields(event)):
        yield {"type": RAW, RAW: fields}  # a multi-agent event this module has no rule for


### Envelope ###


@dataclass
class RunFrames:
    """Turns one run's Strands events into payloads and adds the envelope (conversation, run, increasing seq)."""

    conversation_id: str
    run_id: str
    seq: int = 0
    # The name of each tool call seen so far, by toolUseId: its result's frame carries it.
    tool_names: dict[str, str] = field(default_factory=dict)

    def payloads(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The payloads of one ``stream_async`` event (see ``payloads_for_event``), tool calls named on the way."""
        inner = event
        while inner.get("type") == "multiagent_node_stream" and isinstance(inner.get("event"), Mapping):
            inner = inner["event"]  # a node's agent event, in a multi-agent run
        tool_use = inner.get(CURRENT_TOOL_USE)
        if isinstance(tool_use, Mapping) and tool_use.get("toolUseId"):
            self.tool_names[str(tool_use["toolUseId"])] = str(tool_use.get("name", ""))
        return payloads_for_event(event, self.tool_names)

    def know_tool_uses(self, message: Mapping[str, Any]) -> None:
        """Name the tool calls of a message stored before this run (the paused call a resume answers)."""
        for block in message.get("content") or []:
            if isinstance(block, Mapping) and isinstance(block.get("toolUse"), Mapping):
                self.tool_names[str(block["toolUse"].get("toolUseId"))] = str(block["toolUse"].get("name", ""))

    def frame(self, payload: dict[str, Any]) -> Frame:
        """Stamp a payload with this run's ids and the next seq."""
        framed: Any = {**payload, "conversation_id": self.conversation_id, "run_id": self.run_id, "seq": self.seq}
        self.seq += 1
        return framed


def error_frame(conversation_id: str | None, code: str, message: str) -> ErrorFrame:
    """An ``error`` frame outside any run."""
    return {"type": ERROR, "conversation_id": conversation_id, "code": code, "message": message}


### Client frames ###


class ProtocolError(Exception):
    """A client frame that cannot be accepted; ``code`` is the error code sent back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


### Client JSON: the one parser of every JSON text a client sends (frames, SSE and API bodies) ###

# Longest number literal accepted, in characters: longer ones cost int() or float() time and mean nothing here.
MAX_JSON_NUMBER_CHARS = 40


class _Refused(ValueError):
    """A JSON value the decoder's hooks refuse, with the reason told to the client."""


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_JSON_NUMBER_CHARS:
        raise _Refused(f"Numbers are limited to {MAX_JSON_NUMBER_CHARS} characters.")
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_JSON_NUMBER_CHARS:
        raise _Refused(f"Numbers are limited to {MAX_JSON_NUMBER_CHARS} characters.")
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused("Numbers must be finite.")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON.")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels (a scalar is 0, ``[]`` is 1), without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


# Arrays, objects and values (counted by their separators) client JSON may hold: a frame has a few dozen at most.
MAX_JSON_ITEMS = 1000
# A JSON string, or an unterminated one up to the end: possessive, so the text is read once, left to right.
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]++|\\.)*+"?')


def _structure(text: str, max_items: int) -> tuple[int, str]:
    """How many arrays, objects and separators JSON text holds, and the text it counted them in.

    Strings are taken out (in one linear pass) only when the raw count is over ``max_items``.
    """
    count = text.count("[") + text.count("{") + text.count(",")
    if count > max_items:
        text = _JSON_STRING_RE.sub("", text)
        count = text.count("[") + text.count("{") + text.count(",")
    return count, text


def _too_big(structure: str, depth_limit: int, max_items: int) -> ProtocolError:
    """The refusal of JSON over ``max_items``: ``too_deep`` when it opens more levels in a row than allowed."""
    if re.search(rf"(?:[\[{{][\s:]*+){{{depth_limit + 1}}}", structure):
        return ProtocolError(ERR_TOO_DEEP, f"JSON may nest arrays and objects at most {depth_limit} levels deep.")
    return ProtocolError(ERR_TOO_COMPLEX, f"JSON may hold at most {max_items} arrays, objects and values.")


def decode_json(data: str | bytes, max_depth: int | None = None, max_items: int = MAX_JSON_ITEMS) -> Any:
    """Parse JSON a client sent, raising ProtocolError ``invalid_json``, ``too_deep`` or ``too_complex`` only.

    Bytes must be UTF-8; NaN, Infinity, non-finite and over-long numbers are refused; ``max_depth`` defaults to
    the ``MAX_JSON_DEPTH`` setting; ``max_items`` counts arrays, objects and values before anything is parsed.
    """
    limit = app_settings.MAX_JSON_DEPTH if max_depth is None else max_depth
    too_deep = ProtocolError(ERR_TOO_DEEP, f"JSON may nest arrays and objects at most {limit} levels deep.")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        count, structure = _structure(text, max_items)
        if count > max_items:
            # Counted before parsing: thousands of tiny arrays cost tens of milliseconds to build and walk.
            raise _too_big(structure, limit, max_items) from None
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:  # the C scanner recurses per level: far deeper than any limit
        raise too_deep from None
    except _Refused as refused:
        raise ProtocolError(ERR_INVALID_JSON, str(refused)) from None
    except ValueError:  # also UnicodeDecodeError, and ints over Python's digit limit
        raise ProtocolError(ERR_INVALID_JSON, "The text is not valid JSON (UTF-8).") from None
    if isinstance(value, (dict, list)) and _deeper_than(value, limit):
        raise too_deep
    return value


@dataclass(frozen=True)
class ClientFrame:
    """A validated client frame."""

    type: str
    prompt: str = ""
    # interrupt_response: interrupt id -> {"decision": "approve" | "deny", "text": str}.
    responses: dict[str, dict[str, str]] | None = None
    # resume: the run and the last seq the client saw of it (-1 for none).
    run_id: str = ""
    seq: int = -1
    # feedback: the assistant message's position, "up", "down" or None (taken back), and a comment.
    position: int = -1
    rating: str | None = None
    comment: str = ""
    # prompt: what it does while a run goes on ("reject", "enqueue", "interrupt"); "" for the IF_BUSY setting.
    if_busy: str = ""
    # prompt: the ids of uploaded attachments it carries (agentapp.attachments), in order.
    attachments: tuple[str, ...] = ()


def parse_client_frame(
    text: str | None,
    binary: bytes | None,
    max_frame_bytes: int,
    max_prompt_chars: int,
    max_depth: int | None = None,
) -> ClientFrame:
    """Validate one raw WebSocket frame from a client, raising ProtocolError with a distinct code.

    ``max_depth`` defaults to the ``MAX_JSON_DEPTH`` setting.
    """
    if binary is not None or text is None:
        raise ProtocolError(ERR_BINARY_FRAME, "Binary frames are not supported; send JSON text.")
    if len(text.encode("utf-8", errors="surrogatepass")) > max_frame_bytes:
        raise ProtocolError(ERR_FRAME_TOO_LARGE, f"Frames are limited to {max_frame_bytes} bytes.")
    content = decode_json(text, max_depth)
    if not isinstance(content, dict):
        raise ProtocolError(ERR_INVALID_FRAME, "A frame must be a JSON object with a 'type'.")
    frame_type = content.get("type")
    if frame_type not in CLIENT_FRAME_TYPES:
        raise ProtocolError(ERR_UNKNOWN_TYPE, f"Unknown frame type; expected one of {list(CLIENT_FRAME_TYPES)}.")
    if frame_type == CLIENT_PROMPT:
        prompt = content.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ProtocolError(ERR_MISSING_PROMPT, "A prompt frame needs a non-empty string 'prompt'.")
        if len(prompt) > max_prompt_chars:
            raise ProtocolError(ERR_PROMPT_TOO_LARGE, f"Prompts are limited to {max_prompt_chars} characters.")
        if_busy = content.get("if_busy", "")
        if if_busy not in ("", *IF_BUSY_CHOICES):
            raise ProtocolError(ERR_INVALID_FRAME, f"'if_busy' must be one of {list(IF_BUSY_CHOICES)}.")
        return ClientFrame(CLIENT_PROMPT, prompt, if_busy=if_busy, attachments=_parse_attachments(content))
    if frame_type == CLIENT_CANCEL and content.get("run_id") is not None:
        if not isinstance(content["run_id"], str) or not _is_uuid(content["run_id"]):
            raise ProtocolError(ERR_INVALID_FRAME, "'run_id' must name a queued run (a UUID).")
        return ClientFrame(CLIENT_CANCEL, run_id=str(uuid.UUID(content["run_id"])))
    if frame_type == CLIENT_INTERRUPT_RESPONSE:
        return ClientFrame(CLIENT_INTERRUPT_RESPONSE, responses=_parse_responses(content))
    if frame_type == CLIENT_RESUME:
        run_id, seq = parse_resume(content.get("run_id"), content.get("seq"))
        return ClientFrame(CLIENT_RESUME, run_id=run_id, seq=seq)
    if frame_type == CLIENT_FEEDBACK:
        position, rating, comment = parse_feedback(content, app_settings.FEEDBACK_COMMENT_MAX_CHARS)
        return ClientFrame(CLIENT_FEEDBACK, position=position, rating=rating, comment=comment)
    return ClientFrame(frame_type)


def _parse_attachments(content: Mapping[str, Any]) -> tuple[str, ...]:
    """A prompt's ``attachments``: a list of distinct attachment ids (UUIDs), at most ``MAX_PROMPT_ATTACHMENTS``."""
    ids = content.get("attachments", [])
    if not isinstance(ids, list) or not all(isinstance(item, str) and _is_uuid(item) for item in ids):
        raise ProtocolError(ERR_INVALID_FRAME, "'attachments' must be a list of attachment ids.")
    limit = app_settings.MAX_PROMPT_ATTACHMENTS
    if len(ids) > limit:
        raise ProtocolError(ERR_TOO_MANY_ATTACHMENTS, f"A prompt may carry at most {limit} attachments.")
    unique = tuple(dict.fromkeys(str(uuid.UUID(item)) for item in ids))
    return unique


def parse_feedback(content: Mapping[str, Any], max_comment_chars: int) -> tuple[int, str | None, str]:
    """Validate ``{"position", "rating": "up" | "down" | null, "comment"?}``; ProtocolError ``invalid_feedback``."""
    position, rating, comment = content.get("position"), content.get("rating"), content.get("comment", "")
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < 2**31:
        raise ProtocolError(ERR_INVALID_FEEDBACK, "Feedback needs the 'position' of an assistant message.")
    if rating is not None and rating not in RATINGS:
        raise ProtocolError(ERR_INVALID_FEEDBACK, "'rating' must be 'up', 'down' or null (to take it back).")
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > max_comment_chars:
        raise ProtocolError(
            ERR_INVALID_FEEDBACK, f"'comment' must be a string of at most {max_comment_chars} characters."
        )
    return position, rating, comment.strip()


def parse_resume(run_id: Any, seq: Any) -> tuple[str, int]:
    """Validate a resume point (a run's UUID, the last seq seen or -1), raising ProtocolError ``invalid_resume``."""
    if not isinstance(run_id, str) or not _is_uuid(run_id):
        raise ProtocolError(ERR_INVALID_RESUME, "A resume needs the 'run_id' of a run.")
    if isinstance(seq, bool) or not isinstance(seq, int) or not -1 <= seq < 2**53:
        raise ProtocolError(ERR_INVALID_RESUME, "A resume needs the last 'seq' seen (an integer, -1 for none).")
    return str(uuid.UUID(run_id)), seq


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _parse_responses(content: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Read ``{"responses": {id: {"decision", "text"?}}}`` or the single form ``{"id", "decision", "text"?}``."""
    if "responses" in content:
        responses = content["responses"]
    else:
        interrupt_id = content.get("id")
        if not isinstance(interrupt_id, str):
            raise ProtocolError(ERR_INVALID_RESPONSE, "Each answer needs an interrupt 'id' and a 'decision'.")
        responses = {interrupt_id: {"decision": content.get("decision"), "text": content.get("text")}}
    if not isinstance(responses, Mapping) or not 0 < len(responses) <= MAX_RESPONSES:
        raise ProtocolError(
            ERR_INVALID_RESPONSE, f"'responses' must map 1 to {MAX_RESPONSES} interrupt ids to answers."
        )
    parsed = {}
    for interrupt_id, answer in responses.items():
        if not isinstance(interrupt_id, str) or not interrupt_id or not isinstance(answer, Mapping):
            raise ProtocolError(ERR_INVALID_RESPONSE, "Each answer needs an interrupt 'id' and a 'decision'.")
        decision, text = answer.get("decision"), answer.get("text")
        if decision not in DECISIONS:
            raise ProtocolError(ERR_INVALID_RESPONSE, "'decision' must be 'approve' or 'deny'.")
        if not isinstance(text, (str, type(None))) or len(text or "") > MAX_DECISION_TEXT_CHARS:
            raise ProtocolError(
                ERR_INVALID_RESPONSE, f"'text' must be a string of at most {MAX_DECISION_TEXT_CHARS} characters."
            )
        parsed[interrupt_id] = {"decision": decision, "text": text or ""}
    return parsed
