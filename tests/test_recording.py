"""The recorder follows Strands' hooks: it stores what the agent adds to its history, with Strands' tool durations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from strands import Agent, tool
from strands.hooks import AfterToolCallEvent, AfterToolsEvent, BeforeInvocationEvent, HookProvider, HookRegistry

from agentapp import protocol
from agentapp.models import Conversation, Message, Run, ToolResult
from agentapp.offline_model import OfflineModel
from agentapp.protocol import from_storable
from agentapp.recording import recording_of
from agentapp.runner import AgentRun
from agentapp.tools import calculator

TOOL_SECONDS = 0.2
ENDED_BY_HOOK = "Stopped after the tools, by a hook."
DENIED_BY_HOOK = "Not today, by a hook."


@tool
async def slow_step() -> str:
    """Take a fifth of a second."""
    await asyncio.sleep(TOOL_SECONDS)
    return "done"


class Durations(HookProvider):
    """Keeps the duration Strands measured for each tool call."""

    def __init__(self) -> None:
        self.seconds: dict[str, float | None] = {}

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        registry.add_callback(AfterToolCallEvent, self._done)

    def _done(self, event: AfterToolCallEvent) -> None:
        self.seconds[str(event.tool_use["toolUseId"])] = event.duration


class EndAfterTools(HookProvider):
    """Ends the turn after the first tool batch with a message of the hook's (no ``message`` event is streamed)."""

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        registry.add_callback(AfterToolsEvent, self._end)

    def _end(self, event: AfterToolsEvent) -> None:
        event.end_turn = ENDED_BY_HOOK


class DenyInvocation(HookProvider):
    """Refuses the invocation with a message of the hook's."""

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        registry.add_callback(BeforeInvocationEvent, self._deny)

    def _deny(self, event: BeforeInvocationEvent) -> None:
        event.cancel = DENIED_BY_HOOK


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


async def run_prompt(agent: Agent, user: Any, prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """Run ``prompt`` on ``agent`` as the consumer does (AgentRun, its recorder); return its status and frames."""
    conversation = await Conversation.objects.acreate(owner=user)
    frames: list[dict[str, Any]] = []

    async def emit(frame: dict[str, Any]) -> None:
        frames.append(frame)

    run = AgentRun(agent, prompt, str(conversation.pk), emit, user_id=user.pk)
    status = await run.execute(time_limit=30)
    return status, frames


async def stored_messages(run_id: str) -> list[dict[str, Any]]:
    rows = Message.objects.filter(run_id=run_id).order_by("position")
    return [{"role": row.role, "content": from_storable(row.content)} async for row in rows]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_tool_results_row_carries_the_duration_strands_measured(user):
    durations = Durations()
    agent = Agent(model=OfflineModel(), tools=[slow_step], hooks=[durations], callback_handler=None)
    status, frames = await run_prompt(agent, user, "Call slow_step with {}")
    assert status == protocol.STATUS_COMPLETED
    row = await ToolResult.objects.aget(run_id=frames[0]["run_id"])
    assert row.tool_name == "slow_step"
    measured = durations.seconds[row.tool_use_id]
    assert measured is not None and measured >= TOOL_SECONDS
    assert row.duration_ms == int(measured * 1000)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_message_a_hook_adds_without_a_stream_event_is_stored_as_the_agent_has_it(user):
    agent = Agent(model=OfflineModel(), tools=[calculator], hooks=[EndAfterTools()], callback_handler=None)
    status, frames = await run_prompt(agent, user, "Calculate 2+2")
    assert status == protocol.STATUS_COMPLETED
    assert not any(frame.get("message", {}).get("content") == [{"text": ENDED_BY_HOOK}] for frame in frames)
    stored = await stored_messages(frames[0]["run_id"])
    assert stored == [{"role": m["role"], "content": m["content"]} for m in agent.messages]
    assert stored[-1] == {"role": "assistant", "content": [{"text": ENDED_BY_HOOK}]}
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_invocation_a_hook_denies_stores_the_prompt_once_and_the_denial(user):
    agent = Agent(model=OfflineModel(), tools=[calculator], hooks=[DenyInvocation()], callback_handler=None)
    status, frames = await run_prompt(agent, user, "Calculate 2+2")
    assert status == protocol.STATUS_COMPLETED
    stored = await stored_messages(frames[0]["run_id"])
    assert stored == [
        {"role": "user", "content": [{"text": "Calculate 2+2"}]},
        {"role": "assistant", "content": [{"text": DENIED_BY_HOOK}]},
    ]
    run = await Run.objects.aget(pk=frames[0]["run_id"])
    assert run.status == Run.Status.COMPLETED


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_agents_next_run_has_its_own_recorder_and_messages_outside_runs_are_not_stored(user):
    agent = Agent(model=OfflineModel(), tools=[calculator], callback_handler=None)
    _, first = await run_prompt(agent, user, "Calculate 2+2")
    assert recording_of(agent).recorder is None
    await agent.invoke_async("Calculate 3+3")  # outside any agentapp run: nothing of it is stored
    assert await Message.objects.filter(run_id=first[0]["run_id"]).acount() == 4
    agent.messages = []
    _, second = await run_prompt(agent, user, "Calculate 5+5")
    stored = await stored_messages(second[0]["run_id"])
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert "10" in stored[-1]["content"][0]["text"]
    assert await Message.objects.acount() == 8
