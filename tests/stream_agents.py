"""Agents for the stream parity tests: a streaming tool, and an agent with a structured output model.

Live servers load them with ``AGENTAPP["AGENT_FACTORY"] = "tests.stream_agents.structured_agent"`` (say).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel
from strands import Agent, tool

from agentapp.offline_model import OfflineModel
from agentapp.tools import calculator


class Answer(BaseModel):
    """An answer and the number in it."""

    answer: str
    value: int


@tool
async def progress(steps: int = 3) -> AsyncGenerator[Any, None]:
    """Count to ``steps``, reporting each step; the last item is the result."""
    for step in range(1, steps + 1):
        yield {"done": step, "of": steps}
    yield f"finished {steps} steps"


def streaming_agent(conversation: Any, user: Any) -> Agent:
    """The offline model with the calculator and the streaming ``progress`` tool."""
    return Agent(model=OfflineModel(), tools=[calculator, progress], callback_handler=None, name="parity")


def structured_agent(conversation: Any, user: Any) -> Agent:
    """The offline model and the calculator, answering with an ``Answer`` (Strands' structured output)."""
    return Agent(
        model=OfflineModel(), tools=[calculator], callback_handler=None, name="parity", structured_output_model=Answer
    )
