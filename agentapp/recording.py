"""The Strands hooks that feed a run's recorder: each message as the agent adds it, real tool durations, retries.

The recorder stores what ``agent.messages`` receives (``MessageAddedEvent``), in the order it receives it, so the
stored conversation is the agent's own; a tool's duration is Strands' (``AfterToolCallEvent.duration``); a model call
that starts again (``BeforeModelCallEvent`` after a throttle or a retry) drops the text of the attempt before it.
Text deltas come from the run's frames (``RunRecorder.note``), not from the raw events a second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strands import Agent
from strands.hooks import AfterToolCallEvent, BeforeModelCallEvent, HookProvider, HookRegistry, MessageAddedEvent

from .agenthooks import attached

if TYPE_CHECKING:
    from .recorder import RunRecorder


class Recording(HookProvider):
    """An agent's hooks into the recorder of the run it is in (``recorder``; None between runs)."""

    def __init__(self) -> None:
        self.recorder: RunRecorder | None = None

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        """Follow model calls, added messages and finished tool calls."""
        registry.add_callback(BeforeModelCallEvent, self._on_model_call)
        registry.add_callback(MessageAddedEvent, self._on_message_added)
        registry.add_callback(AfterToolCallEvent, self._on_tool_call_done)

    def _on_model_call(self, event: BeforeModelCallEvent) -> None:
        if self.recorder is not None:
            self.recorder.model_call_starts()

    def _on_message_added(self, event: MessageAddedEvent) -> None:
        if self.recorder is not None:
            self.recorder.added(event.message)

    def _on_tool_call_done(self, event: AfterToolCallEvent) -> None:
        if self.recorder is not None:
            duration = getattr(event, "duration", None)
            self.recorder.tool_done(str(event.tool_use.get("toolUseId", "")), duration)


def recording_of(agent: Agent) -> Recording:
    """The agent's ``Recording`` hooks, added to it the first time."""
    return attached(agent, Recording)
