"""The plain Strands agent of the baselines: the same model, tools and system prompt as agentapp's default agent."""

from __future__ import annotations

from strands import Agent

from agentapp.conf import DEFAULTS
from agentapp.offline_model import OfflineModel
from agentapp.tools import DEFAULT_TOOLS

# One calculator call, then a 2,000-token answer.
STREAM_PROMPT = "Calculate 2+2 and stream 2000 tokens"
STREAM_TOKENS = 2000
# Answered directly, with no tool call.
HELLO_PROMPT = "Hello"


def build_agent(tokens_per_second: float = 0, model_class: type[OfflineModel] = OfflineModel) -> Agent:
    """A fresh agent with the offline model or ``model_class`` (no delay by default), as agentapp's default factory."""
    return Agent(
        model=model_class(tokens_per_second=tokens_per_second),
        tools=list(DEFAULT_TOOLS),
        system_prompt=DEFAULTS["SYSTEM_PROMPT"],
        callback_handler=None,
        name="agentapp",
    )
