"""AG-UI translation: agentapp's server frames (docs/protocol.md) in, AG-UI events (``ag_ui.core``) out.

``RunTranslator`` reads the frames that answer one AG-UI request, in order, and yields the events of one AG-UI run;
``snapshot_messages`` turns the stored history of a ``conversation`` frame into AG-UI messages; ``state_delta`` is the
JSON Patch between two ``agent.state`` values. No I/O here: the view in ``agentapp.agui`` drives it. docs/agui.md has
the mapping table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ag_ui.core import (
    AssistantMessage,
    BaseEvent,
    CustomEvent,
    FunctionCall,
    Interrupt,
    Message,
    MessagesSnapshotEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StateDeltaEvent,
    StateSnapshotEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCall,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)

from . import protocol
from .agui_tools import is_frontend_interrupt

# Prefix of the CUSTOM events' names: ``agentapp.<frame type>`` for frames AG-UI has no event for.
CUSTOM_PREFIX = "agentapp."
# The key under which events and messages carry agentapp's own ids in their ``metadata``.
METADATA_KEY = "agentapp"
# What an approval interrupt expects back (the ``payload`` of an AG-UI resume entry).
APPROVAL_RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "text": {"type": "string"}},
    "required": ["approved"],
}
# Envelope fields left out of a CUSTOM event's value: the thread and run are the AG-UI run's own.
_ENVELOPE = ("type", "conversation_id")


### History ###


def text_of(content: Iterable[Any]) -> str:
    """The text of Strands content blocks (or a tool result's content): text items joined, JSON items encoded."""
    pieces = []
    for block in content:
        if not isinstance(block, Mapping):
            continue
        if isinstance(block.get("text"), str):
            pieces.append(block["text"])
        elif "json" in block:
            pieces.append(json.dumps(block["json"]))
    return "".join(pieces)


def arguments_of(tool_input: Any) -> str:
    """A tool call's arguments as AG-UI carries them: JSON text."""
    return tool_input if isinstance(tool_input, str) else json.dumps(tool_input)


def history_message_id(conversation_id: str, position: int) -> str:
    """The id of a stored message in a MESSAGES_SNAPSHOT: its conversation and position, stable across requests."""
    return f"{conversation_id}.{position}"


def snapshot_messages(conversation_id: str, history: Iterable[Mapping[str, Any]]) -> list[Message]:
    """The ``conversation`` frame's messages as AG-UI messages: user text, assistant text and tool calls, results."""
    messages: list[Message] = []
    for stored in history:
        message_id = history_message_id(conversation_id, stored["position"])
        content = stored.get("content") or []
        if stored["role"] == "assistant":
            calls = [
                ToolCall(
                    id=block["toolUse"]["toolUseId"],
                    function=FunctionCall(
                        name=block["toolUse"]["name"], arguments=arguments_of(block["toolUse"].get("input", {}))
                    ),
                )
                for block in content
                if isinstance(block, Mapping) and isinstance(block.get("toolUse"), Mapping)
            ]
            messages.append(AssistantMessage(id=message_id, content=text_of(content) or None, tool_calls=calls or None))
            continue
        text = text_of(content)
        if text:
            messages.append(UserMessage(id=message_id, content=text))
        for block in content:
            result = block.get("toolResult") if isinstance(block, Mapping) else None
            if isinstance(result, Mapping):
                messages.append(tool_message(f"{message_id}.{result['toolUseId']}", result))
    return messages


def tool_message(message_id: str, result: Mapping[str, Any]) -> ToolMessage:
    """A tool result as an AG-UI tool message; an error result also names its text as ``error``."""
    text = text_of(result.get("content") or [])
    error = text if result.get("status") == "error" else None
    return ToolMessage(id=message_id, tool_call_id=result["toolUseId"], content=text, error=error)


### State ###


def _pointer(key: str) -> str:
    """The JSON Pointer of a top-level key (RFC 6901: ``~`` and ``/`` escaped)."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def state_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON Patch (RFC 6902) from one ``agent.state`` to the next, key by key: ``add`` (which also replaces) for
    a new or changed key, ``remove`` for a key gone; empty when nothing changed."""
    operations: list[dict[str, Any]] = [{"op": "remove", "path": _pointer(key)} for key in before if key not in after]
    operations += [
        {"op": "add", "path": _pointer(key), "value": value}
        for key, value in after.items()
        if key not in before or before[key] != value
    ]
    return operations


### Runs ###


def custom_event(frame: Mapping[str, Any]) -> CustomEvent:
    """A frame with no AG-UI event: ``CUSTOM`` named ``agentapp.<type>`` with the frame's (JSON-safe) fields."""
    value = {key: value for key, value in frame.items() if key not in _ENVELOPE}
    return CustomEvent(name=f"{CUSTOM_PREFIX}{frame.get('type')}", value=protocol.json_safe(value))


def token_usage(usage: Mapping[str, Any]) -> TokenUsage:
    """A run's token counts (the ``result`` frame's ``usage``) as AG-UI's TokenUsage."""
    return TokenUsage(
        input_tokens=usage.get("inputTokens"),
        output_tokens=usage.get("outputTokens"),
        total_tokens=usage.get("totalTokens"),
        cached_input_tokens=usage.get("cacheReadInputTokens"),
        cache_write_input_tokens=usage.get("cacheWriteInputTokens"),
    )


def approval_interrupt(payload: Mapping[str, Any]) -> Interrupt:
    """A tool call waiting for approval (an ``interrupt`` frame's entry) as an AG-UI interrupt."""
    return Interrupt(
        id=payload["id"],
        reason="tool_call",
        message=str(payload.get("reason") or f"Approve the call to {payload.get('tool')}?"),
        tool_call_id=payload.get("toolUseId"),
        response_schema=APPROVAL_RESPONSE_SCHEMA,
        metadata={METADATA_KEY: protocol.json_safe({"tool": payload.get("tool"), "input": payload.get("input")})},
    )


class RunTranslator:
    """Turns the frames answering one request into the events of one AG-UI run, in order.

    ``thread_id`` and ``run_id`` are the AG-UI ids (the conversation and the client's run id; None: agentapp's, for
    a run joined in progress); ``history`` is the ``conversation`` frame's messages, sent as MESSAGES_SNAPSHOT after
    RUN_STARTED, and ``state`` the agent's saved state, sent as STATE_SNAPSHOT after it (None: not sent). Before
    ``run_finished`` is translated, ``end_state`` may give the state the run left: a STATE_DELTA goes out if it
    changed. ``joining`` opens the AG-UI run at the first frame of any run, in case its ``run_started`` was missed.
    ``finished`` is true once RUN_FINISHED or RUN_ERROR went out; nothing follows them.
    """

    def __init__(
        self,
        thread_id: str,
        run_id: str | None,
        history: Iterable[Mapping[str, Any]] = (),
        state: Mapping[str, Any] | None = None,
        joining: bool = False,
    ) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.history = list(history)
        self.state = dict(state) if state is not None else None
        self.final_state: dict[str, Any] | None = None
        self.joining = joining
        self.started = False
        self.finished = False
        self.agentapp_run_id = ""
        self._ordinal = 1  # of the assistant message streaming now within the run (0 is the prompt)
        self._text_id: str | None = None
        self._reasoning_id: str | None = None
        self._tool_args: dict[str, str] = {}  # open tool calls: toolUseId -> arguments sent so far
        self._tool_calls: set[str] = set()  # every tool call started in this run, open or ended
        self._interrupts: list[Interrupt] = []
        self._frontend_calls: list[str] = []  # frontend tool calls the run waits for the client to run
        self._result: dict[str, Any] | None = None

    def translate(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        """The events for one frame (often none, sometimes several)."""
        if self.finished:
            return []
        frame_type = frame.get("type")
        if frame_type == protocol.ERROR:
            return self._error(frame.get("code") or protocol.ERR_RUN_FAILED, frame.get("message") or "")
        if frame_type == protocol.RUN_STARTED:
            return self._run_started(frame)
        if not self.started:
            if not (self.joining and frame.get("run_id")):
                return []  # nothing but RUN_STARTED or RUN_ERROR may open an AG-UI run
            opened = self._run_started({"run_id": frame["run_id"]})  # joined past its run_started
            return [*opened, *self.translate(frame)]
        handler = _HANDLERS.get(frame_type)
        return handler(self, frame) if handler is not None else [custom_event(frame)]

    def at_rest(self, pending: Mapping[str, Any] | None) -> list[BaseEvent]:
        """The events of a thread with no run in progress: RUN_STARTED, the snapshots and RUN_FINISHED, whose outcome
        holds the interrupts of ``pending`` (the ``conversation`` frame's ``pending_approval``) if any."""
        events = self._run_started({"run_id": (pending or {}).get("run_id") or ""})
        if pending:
            self._interrupt({"interrupts": pending.get("interrupts") or []})
            return [*events, *self._run_finished({"status": protocol.STATUS_AWAITING_APPROVAL})]
        return [*events, *self._run_finished({"status": protocol.STATUS_COMPLETED})]

    def end_state(self, state: Mapping[str, Any]) -> None:
        """The agent's state once the run ended (read before its ``run_finished`` is translated)."""
        self.final_state = dict(state)

    def end(self) -> list[BaseEvent]:
        """The events closing a stream that ended before its run did (the connection was dropped)."""
        if self.finished:
            return []
        return self._error(protocol.ERR_RUN_FAILED, "The stream ended before the run finished.")

    def message_id(self, ordinal: int) -> str:
        """The id of the run's message at ``ordinal`` (0 the prompt, then each message the run adds)."""
        return f"{self.agentapp_run_id}.{ordinal}"

    ### One method per frame type ###

    def _run_started(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        if self.started:
            return []
        self.started = True
        self.agentapp_run_id = str(frame.get("run_id") or "")
        if self.run_id is None:
            self.run_id = self.agentapp_run_id
        metadata = {METADATA_KEY: protocol.json_safe({k: v for k, v in frame.items() if k not in _ENVELOPE})}
        messages = snapshot_messages(self.thread_id, self.history)
        if frame.get("prompt"):
            messages.append(UserMessage(id=self.message_id(0), content=frame["prompt"]))
        events: list[BaseEvent] = [
            RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id, metadata=metadata),
            MessagesSnapshotEvent(messages=messages),
        ]
        if self.state is not None:
            events.append(StateSnapshotEvent(snapshot=self.state))
        return events

    def _data(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        delta = frame.get("data") or ""
        if not delta:
            return []
        events = self._close_reasoning()
        if self._text_id is None:
            self._text_id = self.message_id(self._ordinal)
            events.append(TextMessageStartEvent(message_id=self._text_id, role="assistant"))
        events.append(TextMessageContentEvent(message_id=self._text_id, delta=delta))
        return events

    def _reasoning(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        delta = frame.get("reasoningText") or ""
        if not delta:
            return []
        events = self._close_text()
        if self._reasoning_id is None:
            self._reasoning_id = f"{self.message_id(self._ordinal)}.reasoning"
            events += [
                ReasoningStartEvent(message_id=self._reasoning_id),
                ReasoningMessageStartEvent(message_id=self._reasoning_id),
            ]
        events.append(ReasoningMessageContentEvent(message_id=self._reasoning_id, delta=delta))
        return events

    def _current_tool_use(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        tool_use = frame.get("current_tool_use") or {}
        tool_call_id = tool_use.get("toolUseId")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            return []
        if tool_call_id in self._tool_calls and tool_call_id not in self._tool_args:
            return []  # an update of a call that ended already (a merged or late frame)
        events = [*self._close_text(), *self._close_reasoning()]
        if tool_call_id not in self._tool_calls:
            self._tool_calls.add(tool_call_id)
            self._tool_args[tool_call_id] = ""
            events.append(
                ToolCallStartEvent(
                    tool_call_id=tool_call_id,
                    tool_call_name=str(tool_use.get("name") or ""),
                    parent_message_id=self.message_id(self._ordinal),
                )
            )
        events += self._arguments(tool_call_id, arguments_of(tool_use.get("input", "")))
        return events

    def _arguments(self, tool_call_id: str, arguments: str) -> list[BaseEvent]:
        """TOOL_CALL_ARGS with what the cumulative input added since the last one (nothing if it is no extension)."""
        sent = self._tool_args[tool_call_id]
        if not arguments.startswith(sent) or len(arguments) == len(sent):
            return []
        self._tool_args[tool_call_id] = arguments
        return [ToolCallArgsEvent(tool_call_id=tool_call_id, delta=arguments[len(sent) :])]

    def _message(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        """A complete message: what streamed of it is closed, and tool calls it holds that never streamed are sent."""
        message = frame.get("message") or {}
        events = [*self._close_text(), *self._close_reasoning()]
        if message.get("role") == "assistant":
            for block in message.get("content") or []:
                tool_use = block.get("toolUse") if isinstance(block, Mapping) else None
                if isinstance(tool_use, Mapping) and tool_use.get("toolUseId") not in self._tool_calls:
                    events += self._current_tool_use({"current_tool_use": {**tool_use, "input": ""}})
                    events += self._arguments(tool_use["toolUseId"], arguments_of(tool_use.get("input", {})))
        events += self._close_tool_calls()
        self._ordinal += 1
        return events

    def _tool_result(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        result = frame.get("tool_result") or {}
        tool_call_id = result.get("toolUseId")
        if not isinstance(tool_call_id, str):
            return []
        events = self._close_tool_calls()
        message = tool_message(f"{self.agentapp_run_id}.{tool_call_id}.result", result)
        events.append(
            ToolCallResultEvent(message_id=message.id, tool_call_id=tool_call_id, content=message.content, role="tool")
        )
        return events

    def _interrupt(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        """Approvals become the run's AG-UI interrupts; a frontend tool's call was sent already, for the client."""
        payloads = [payload for payload in frame.get("interrupts") or [] if isinstance(payload, Mapping)]
        self._interrupts = [approval_interrupt(payload) for payload in payloads if not is_frontend_interrupt(payload)]
        self._frontend_calls = [str(p["reason"].get("toolUseId")) for p in payloads if is_frontend_interrupt(p)]
        return [custom_event(frame)]

    def _result_frame(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        self._result = dict(frame.get("result") or {})
        return []

    def _run_finished(self, frame: Mapping[str, Any]) -> list[BaseEvent]:
        status = frame.get("status")
        if status in (protocol.STATUS_FAILED, protocol.STATUS_INTERRUPTED):
            code = frame.get("error") or (protocol.ERR_RUN_FAILED if status == protocol.STATUS_FAILED else status)
            return self._error(str(code), f"The run ended {status}.")
        events = self._close_all()
        if status == protocol.STATUS_AWAITING_APPROVAL and self._interrupts:
            outcome: Any = RunFinishedInterruptOutcome(interrupts=self._interrupts)
        elif status == protocol.STATUS_CANCELLED:
            outcome = RunFinishedCancelledOutcome()
        else:
            outcome = RunFinishedSuccessOutcome()
        ended = self.final_state
        if self.state is not None and ended is not None and (delta := state_delta(self.state, ended)):
            events.append(StateDeltaEvent(delta=delta))
        usage = (self._result or {}).get("usage")
        metadata: dict[str, Any] = {
            METADATA_KEY: {"run_id": self.agentapp_run_id, "status": status, "seq": frame.get("seq")}
        }
        if status == protocol.STATUS_AWAITING_APPROVAL and self._frontend_calls:
            metadata[METADATA_KEY]["client_tool_calls"] = self._frontend_calls
        events.append(
            RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=self.run_id or self.agentapp_run_id,
                outcome=outcome,
                result=protocol.json_safe(self._result) if self._result is not None else None,
                usage=[token_usage(usage)] if isinstance(usage, Mapping) and usage else None,
                metadata=metadata,
            )
        )
        self.finished = True
        return events

    ### Closing what streams ###

    def _error(self, code: str, message: str) -> list[BaseEvent]:
        events = self._close_all() if self.started else []
        events.append(RunErrorEvent(code=code, message=message or code))
        self.finished = True
        return events

    def _close_text(self) -> list[BaseEvent]:
        if self._text_id is None:
            return []
        event = TextMessageEndEvent(message_id=self._text_id)
        self._text_id = None
        return [event]

    def _close_reasoning(self) -> list[BaseEvent]:
        if self._reasoning_id is None:
            return []
        events = [
            ReasoningMessageEndEvent(message_id=self._reasoning_id),
            ReasoningEndEvent(message_id=self._reasoning_id),
        ]
        self._reasoning_id = None
        return events

    def _close_tool_calls(self) -> list[BaseEvent]:
        events: list[BaseEvent] = [ToolCallEndEvent(tool_call_id=tool_call_id) for tool_call_id in self._tool_args]
        self._tool_args.clear()
        return events

    def _close_all(self) -> list[BaseEvent]:
        return [*self._close_text(), *self._close_reasoning(), *self._close_tool_calls()]


# Frame types with an AG-UI mapping; every other frame of the run goes out as a CUSTOM event.
_HANDLERS = {
    protocol.DATA: RunTranslator._data,
    protocol.REASONING: RunTranslator._reasoning,
    protocol.CURRENT_TOOL_USE: RunTranslator._current_tool_use,
    protocol.MESSAGE: RunTranslator._message,
    protocol.TOOL_RESULT: RunTranslator._tool_result,
    protocol.INTERRUPT: RunTranslator._interrupt,
    protocol.RESULT: RunTranslator._result_frame,
    protocol.RUN_FINISHED: RunTranslator._run_finished,
}
