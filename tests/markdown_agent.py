"""A test agent whose model answers with the prompt itself, streamed a word at a time: the page gets given Markdown.

Live servers load it with ``AGENTAPP["AGENT_FACTORY"] = "tests.markdown_agent.echo_agent"`` (see
``tests/livesettings.py``); ``ECHO_TOKENS_PER_SECOND`` in the server's environment paces it.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

from strands import Agent
from strands.models.model import Model
from strands.types.content import Messages
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolSpec

# A word with the whitespace after it, or leading whitespace: joined, the chunks give the prompt back exactly.
CHUNK_RE = re.compile(r"\s+|\S+\s*")
PACE_ENV = "ECHO_TOKENS_PER_SECOND"


def last_prompt(messages: Messages) -> str:
    """The text of the last user message."""
    for message in reversed(messages):
        if message["role"] == "user":
            return "".join(block.get("text", "") for block in message["content"])
    return ""


class EchoModel(Model):
    """Streams the last prompt back as the answer, one chunk per delta, stopping when the run is cancelled."""

    def __init__(self, tokens_per_second: float = 0) -> None:
        self.config: dict[str, Any] = {"tokens_per_second": tokens_per_second}

    def update_config(self, **model_config: Any) -> None:
        """Update the configuration with the given keys."""
        self.config.update(model_config)

    def get_config(self) -> dict[str, Any]:
        """Return the configuration dict."""
        return self.config

    def structured_output(
        self, output_model: Any, prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Refuse: the echo model has no structured output."""
        raise NotImplementedError("EchoModel does not support structured output")

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        *,
        cancel_signal: threading.Event | None = None,
        **kwargs: Any,
    ) -> AsyncIterable[StreamEvent]:
        """One assistant message: the prompt's chunks as text deltas, then usage (unless cancelled first)."""
        chunks = CHUNK_RE.findall(last_prompt(messages))
        interval = 1 / self.config["tokens_per_second"] if self.config["tokens_per_second"] else 0
        yield {"messageStart": {"role": "assistant"}}
        yield {"contentBlockStart": {"start": {}}}
        for chunk in chunks:
            if interval:
                await asyncio.sleep(interval)  # pacing the stream, as a real model's tokens arrive
            if cancel_signal is not None and cancel_signal.is_set():
                return  # as a stopped model call: no usage reported
            yield {"contentBlockDelta": {"delta": {"text": chunk}}}
        yield {"contentBlockStop": {}}
        yield {"messageStop": {"stopReason": "end_turn"}}
        usage = {"inputTokens": len(chunks), "outputTokens": len(chunks), "totalTokens": 2 * len(chunks)}
        yield {"metadata": {"usage": usage, "metrics": {"latencyMs": 0}}}


def echo_agent(conversation: Any, user: Any) -> Agent:
    """An agent without tools whose answers are its prompts."""
    model = EchoModel(tokens_per_second=float(os.environ.get(PACE_ENV, "0")))
    return Agent(model=model, tools=[], callback_handler=None)
