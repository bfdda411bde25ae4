"""Human approval of tool calls: a marked tool's call pauses the run with a Strands interrupt until someone answers.

``ApprovalHook`` raises the interrupt from ``BeforeToolCallEvent``; the run stops with stop reason ``"interrupt"``.
An answer ``{"decision": "approve" | "deny", "text": ..., "user": ...}`` goes back through ``responses_prompt``:
approve runs the tool, deny (or anything malformed) cancels it with an error toolResult the model reads.
While paused, the agent's messages end with the unanswered assistant toolUse; ``export_state`` and
``restore_state`` carry the pause to another Agent instance built from the same history, through Strands' public
snapshots (``Agent.take_snapshot`` / ``Agent.load_snapshot`` with the ``interrupt_state`` field).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strands.hooks import BeforeToolCallEvent, HookProvider, HookRegistry
from strands.interrupt import Interrupt
from strands.types.exceptions import SessionException, SnapshotException

from .protocol import from_storable, json_safe, to_storable

if TYPE_CHECKING:
    from strands import Agent

# Name of the interrupts ApprovalHook raises (``Interrupt.name``).
APPROVAL_INTERRUPT = "agentapp-approval"
# Attribute set on a tool object (or its function) by ``requires_approval``; its value is the reason text.
APPROVAL_ATTRIBUTE = "agentapp_requires_approval"
# Tools marked by name with ``requires_approval("name")``, mapped to their reason text (process-wide).
APPROVAL_NAMES: dict[str, str] = {}
APPROVE = "approve"
DENY = "deny"
# Longest reviewer text passed on to the model.
MAX_TEXT_CHARS = 4000
# The snapshot field holding an agent's interrupt state (``strands.types.SnapshotField``).
INTERRUPT_STATE_FIELD = "interrupt_state"


class StaleApprovalState(ValueError):
    """The saved interrupt state does not match the agent's history, so the run cannot resume from it."""


### Marking tools ###


def requires_approval(target: Any = None, /, *, reason: str = "") -> Any:
    """Mark a tool as needing a human's approval before each call; use above or below ``@tool``, or with a name.

    ``@requires_approval``, ``@requires_approval(reason="Deletes files")`` and ``requires_approval("mcp_tool")``
    all work; the decorated object is returned unchanged apart from the marker.
    """
    if target is None:
        return lambda marked: requires_approval(marked, reason=reason)
    if isinstance(target, str):
        APPROVAL_NAMES[target] = reason
        return target
    setattr(target, APPROVAL_ATTRIBUTE, reason)
    # A tool defined as a method is rebuilt from its function on each instance access; mark the function too.
    wrapped = getattr(target, "__wrapped__", None)
    if wrapped is not None:
        setattr(wrapped, APPROVAL_ATTRIBUTE, reason)
    return target


def _marker(tool: Any) -> str | None:
    for candidate in (tool, getattr(tool, "__wrapped__", None)):
        value = getattr(candidate, APPROVAL_ATTRIBUTE, None)
        if isinstance(value, str):
            return value
    return None


### Answers ###


@dataclass(frozen=True)
class Decision:
    """A reviewer's answer to one approval interrupt; ``valid`` is False when the answer was not understood."""

    approved: bool
    text: str = ""
    user: str = ""
    valid: bool = True

    def denial_message(self) -> str:
        """The error text the model receives in place of the tool's result."""
        if not self.valid:
            return "Denied: the approval answer was not understood, so the tool was not run."
        who = self.user or "a reviewer"
        return f"Denied by {who}: {self.text}" if self.text else f"Denied by {who}."

    def as_response(self) -> dict[str, str]:
        """The canonical response dict, as accepted by ``responses_prompt``."""
        return {"decision": APPROVE if self.approved else DENY, "text": self.text, "user": self.user}


def parse_decision(response: Any) -> Decision:
    """Read an answer ``{"decision": "approve"|"deny", "text"?: str, "user"?: str}``; anything else is a denial."""
    if not isinstance(response, Mapping) or response.get("decision") not in (APPROVE, DENY):
        return Decision(approved=False, valid=False)
    text, user = response.get("text"), response.get("user")
    if not isinstance(text, (str, type(None))) or not isinstance(user, (str, type(None))):
        return Decision(approved=False, valid=False)
    return Decision(approved=response["decision"] == APPROVE, text=(text or "")[:MAX_TEXT_CHARS], user=user or "")


### The hook ###


class ApprovalHook(HookProvider):
    """Pauses each call of a tool needing approval until a human answers, then runs or cancels it.

    A tool needs approval when ``requires_approval`` marked it (object or name) or its name is in ``tool_names``
    (the ``AGENTAPP["APPROVAL_TOOLS"]`` setting).
    """

    def __init__(self, tool_names: Iterable[str] = ()) -> None:
        self.tool_names = frozenset(tool_names)

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        """Listen to every tool call."""
        registry.add_callback(BeforeToolCallEvent, self.before_tool_call)

    def reason_for(self, tool: Any, name: str) -> str | None:
        """The reason text if a call of this tool needs approval ("" for no particular reason), else None."""
        marker = _marker(tool)
        if marker is not None:
            return marker
        if name in APPROVAL_NAMES:
            return APPROVAL_NAMES[name]
        return "" if name in self.tool_names else None

    def before_tool_call(self, event: BeforeToolCallEvent) -> None:
        """Raise the approval interrupt, or act on its answer when the run resumes."""
        name = str(event.tool_use.get("name", ""))
        reason = self.reason_for(event.selected_tool, name)
        if reason is None or event.cancel_tool:
            return
        details = {
            "tool": name,
            "toolUseId": str(event.tool_use.get("toolUseId", "")),
            "input": json_safe(event.tool_use.get("input")),
            "message": reason or f"The agent wants to call {name}.",
        }
        decision = parse_decision(event.interrupt(APPROVAL_INTERRUPT, reason=details))
        if not decision.approved:
            event.cancel_tool = decision.denial_message()


### Helpers for the runner and the consumer ###


def _interrupts_of(source: Any) -> list[Interrupt | Mapping[str, Any]]:
    if isinstance(source, Mapping):
        if "tool_interrupt_event" in source:
            return list(source["tool_interrupt_event"].get("interrupts") or [])
        if "result" in source:
            return list(getattr(source["result"], "interrupts", None) or [])
        if "interrupts" in source and "activated" in source:
            return list(source["interrupts"].values()) if source["activated"] else []
        return []
    if hasattr(source, "take_snapshot"):
        return _interrupts_of(_snapshot_state(source))
    if hasattr(source, "interrupts") and hasattr(source, "stop_reason"):
        return list(source.interrupts or [])
    return list(source or [])


def _field(interrupt: Interrupt | Mapping[str, Any], name: str) -> Any:
    return interrupt.get(name) if isinstance(interrupt, Mapping) else getattr(interrupt, name, None)


def interrupt_payloads(source: Any) -> list[dict[str, Any]]:
    """JSON-safe ``{"id", "name", "tool", "toolUseId", "input", "reason"}`` for each unanswered interrupt.

    ``source`` is an AgentResult, a ``stream_async`` event (``result`` or ``tool_interrupt_event``), an Agent,
    a dict from ``export_state`` or a list of Interrupts. For interrupts other than approvals (for example
    Strands' ``handoff_to_user``) tool, toolUseId and input are empty and reason is the raw reason.
    """
    payloads = []
    for interrupt in _interrupts_of(source):
        if _field(interrupt, "response") is not None:
            continue
        name, reason = str(_field(interrupt, "name") or ""), _field(interrupt, "reason")
        payload = {"id": str(_field(interrupt, "id")), "name": name, "tool": "", "toolUseId": "", "input": None}
        if name == APPROVAL_INTERRUPT and isinstance(reason, Mapping):
            payload.update(
                tool=str(reason.get("tool", "")),
                toolUseId=str(reason.get("toolUseId", "")),
                input=json_safe(reason.get("input")),
                reason=str(reason.get("message", "")),
            )
        else:
            payload["reason"] = json_safe(reason)
        payloads.append(payload)
    return payloads


def responses_prompt(answers: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``stream_async`` prompt that resumes a paused run: one interruptResponse block per answered id.

    Unanswered pending interrupts are raised again by the resumed run. Strands raises KeyError for an id it
    does not know, so check ids against ``interrupt_payloads`` first.
    """
    if not answers:
        raise ValueError("A resume needs at least one interrupt response.")
    blocks = []
    for interrupt_id, response in answers.items():
        safe = json_safe(response)
        # Strands reads a None response as "not answered" and pauses again; an empty dict is a malformed answer.
        blocks.append(
            {"interruptResponse": {"interruptId": str(interrupt_id), "response": {} if safe is None else safe}}
        )
    return blocks


def _snapshot_state(agent: Agent) -> dict[str, Any]:
    """The agent's interrupt state as Strands serializes it in a snapshot."""
    return agent.take_snapshot(include=[INTERRUPT_STATE_FIELD]).data[INTERRUPT_STATE_FIELD]


def _load_state(agent: Agent, state: Mapping[str, Any]) -> None:
    """Give ``agent`` a serialized interrupt state through a snapshot of that one field."""
    snapshot = agent.take_snapshot(include=[INTERRUPT_STATE_FIELD])
    snapshot.data[INTERRUPT_STATE_FIELD] = dict(state)
    agent.load_snapshot(snapshot)


def _pending_message(state: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The assistant message holding the paused tool uses, in the current layout or the one before 1.55."""
    pending = state.get("pending_tool_execution")
    if isinstance(pending, Mapping):
        return pending.get("assistant_message")
    context = state.get("context")
    return context.get("tool_use_message") if isinstance(context, Mapping) else None


def export_state(agent: Agent) -> dict[str, Any]:
    """The agent's interrupt state as a JSON-safe dict (bytes as base64), for ``restore_state`` elsewhere."""
    return to_storable(_snapshot_state(agent))


def restore_state(agent: Agent, data: Mapping[str, Any] | None) -> None:
    """Give ``agent`` (built from the stored history) the interrupt state ``export_state`` saved, ready to resume.

    Error toolResults that history repair added for the pending tool uses are dropped, because Strands appends
    the real results on resume. Raises StaleApprovalState when the history no longer ends at the pending call.
    A state saved by an older Strands (before 1.55 the pending call sat in its context) restores into a newer one.
    """
    if not data:
        # Nothing pending, as ``Agent.take_snapshot`` serializes it (fresh dicts: older Strands keeps them as given).
        _load_state(agent, {"interrupts": {}, "context": {}, "activated": False})
        return
    state = from_storable(dict(data))
    if not isinstance(state, Mapping) or not {"interrupts", "context", "activated"} <= state.keys():
        raise StaleApprovalState("Not an exported interrupt state: it lacks interrupts, context or activated.")
    pending = _pending_message(state)
    keep = _resume_point(agent.messages, pending) if state["activated"] and isinstance(pending, Mapping) else None
    try:
        _load_state(agent, state)
    except (KeyError, TypeError, AttributeError, SessionException, SnapshotException) as exc:
        raise StaleApprovalState(f"Not an exported interrupt state: {exc}") from exc
    if keep is not None:
        del agent.messages[keep:]


def _resume_point(messages: list[Any], pending_message: Mapping[str, Any]) -> int:
    """How many messages to keep: up to the assistant message holding the pending tool uses."""
    pending_ids = _tool_use_ids(pending_message)
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "assistant" and _tool_use_ids(messages[index]) & pending_ids:
            break
    else:
        raise StaleApprovalState("The history has no assistant message with the pending tool calls.")
    for message in messages[index + 1 :]:
        for block in message.get("content") or []:
            result = block.get("toolResult") if isinstance(block, Mapping) else None
            if not (isinstance(result, Mapping) and result.get("toolUseId") in pending_ids):
                raise StaleApprovalState("The conversation moved on after the pending approval.")
    return index + 1


def _tool_use_ids(message: Mapping[str, Any]) -> set[str]:
    return {
        block["toolUse"].get("toolUseId")
        for block in message.get("content") or []
        if isinstance(block, Mapping) and isinstance(block.get("toolUse"), Mapping)
    }
