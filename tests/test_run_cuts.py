"""Runs cut short at each point: what is stored, and that the conversation goes on with a valid history."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from strands import Agent, tool
from strands.types.tools import ToolContext

from agentapp import protocol
from agentapp.history import INTERRUPTED_TOOL_TEXT, load_messages
from agentapp.models import Conversation, Message, Run, ToolResult
from agentapp.runner import AgentRun
from agentapp.tools import calculator
from tests.frames import deltas
from tests.test_history import assert_valid_history
from tests.test_persistence import MODEL_CALLS, RecordingModel
from tests.wsclient import Client, streamed_text

# Set by the slow tools when they start, so a test cancels while they run.
TOOL_STARTED = threading.Event()
STOPPED_TEXT = "stopped on request"
# How long the tools below would take if nobody stopped them.
POLITE_SECONDS = 30
STUBBORN_SECONDS = 0.3


@tool(context=True)
async def polite_wait(tool_context: ToolContext) -> dict[str, Any]:
    """Wait up to 30 s, stopping early when the run is cancelled."""
    TOOL_STARTED.set()
    deadline = time.monotonic() + POLITE_SECONDS
    while time.monotonic() < deadline:
        if tool_context.cancel_signal.is_set():
            return {"status": "error", "content": [{"text": STOPPED_TEXT}]}
        await asyncio.sleep(0.01)
    return {"status": "success", "content": [{"text": "waited"}]}


@tool
async def stubborn_wait() -> str:
    """Wait 0.3 s whatever happens."""
    TOOL_STARTED.set()
    await asyncio.sleep(STUBBORN_SECONDS)
    return "waited"


TOOLS = [calculator, polite_wait, stubborn_wait]


def paced_factory(conversation: Any, user: Any) -> Agent:
    return Agent(model=RecordingModel(tokens_per_second=200), tools=list(TOOLS), callback_handler=None)


def instant_factory(conversation: Any, user: Any) -> Agent:
    return Agent(model=RecordingModel(), tools=list(TOOLS), callback_handler=None)


def failing_factory(conversation: Any, user: Any) -> Agent:
    return Agent(model=RecordingModel(fail_after_tokens=5), tools=list(TOOLS), callback_handler=None)


def broken_factory(conversation: Any, user: Any) -> Agent:
    raise RuntimeError("secret detail of a broken factory")


def not_an_agent_factory(conversation: Any, user: Any) -> Any:
    return "not an agent"


def use_factory(settings: Any, name: str) -> None:
    settings.AGENTAPP = {"AGENT_FACTORY": f"tests.test_run_cuts.{name}", "OFFLINE_TOKENS_PER_SECOND": 0}


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.fixture(autouse=True)
def fresh_state():
    TOOL_STARTED.clear()
    MODEL_CALLS.clear()


async def until_data(client: Client, count: int) -> list[dict[str, Any]]:
    """Receive frames until ``count`` data frames have arrived."""
    frames: list[dict[str, Any]] = []
    while deltas(frames) < count:
        frames.append(await client.receive())
    return frames


async def stored(conversation_id: str) -> list[Message]:
    return [row async for row in Message.objects.filter(conversation_id=conversation_id).order_by("position")]


async def assert_repaired_history_valid(conversation_id: str) -> list[dict[str, Any]]:
    history = await sync_to_async(load_messages)(conversation_id)
    assert_valid_history(history, ends_with_user=False)
    return history


async def assert_next_prompt_succeeds(client: Client) -> list[dict[str, Any]]:
    """A new prompt completes and every model call of it got a valid history; returns the first call's."""
    MODEL_CALLS.clear()
    await client.prompt("Calculate 2+2")
    frames = await client.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert "2+2 = 4" in streamed_text(frames)
    assert len(MODEL_CALLS) == 2
    for messages in MODEL_CALLS:
        assert_valid_history(messages)
    assert MODEL_CALLS[0][-1]["content"][-1] == {"text": "Calculate 2+2"}
    return MODEL_CALLS[0]


### (a) cancel while text streams ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_during_text(layer, settings, user):
    use_factory(settings, "paced_factory")
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    await client.prompt("Stream 400 tokens")
    frames = await until_data(client, 3)
    await client.cancel()
    frames += await client.until_finished()
    received = streamed_text(frames)
    assert frames[-1]["status"] == protocol.STATUS_CANCELLED
    assert frames[-1]["stop_reason"] == "cancelled"
    assert 3 <= received.count(" ") < 400

    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == Run.Status.CANCELLED
    assert run.stop_reason == "cancelled"
    rows = await stored(conversation_id)
    assert [(row.role, row.partial) for row in rows] == [("user", False), ("assistant", True)]
    # Exactly what the client was shown, including the deltas that raced the cancel.
    assert rows[1].content == [{"text": received}]
    history = await assert_repaired_history_valid(conversation_id)
    assert history[-1] == {"role": "assistant", "content": [{"text": received}]}

    seen = await assert_next_prompt_succeeds(client)
    assert seen[:2] == history
    await client.close()


### (b) cancel while a tool runs ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_during_a_tool_that_watches_the_cancel_signal(layer, settings, user):
    use_factory(settings, "instant_factory")
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    started = time.monotonic()
    await client.prompt("Call polite_wait with {}")
    await client.until(protocol.CURRENT_TOOL_USE)
    assert await asyncio.to_thread(TOOL_STARTED.wait, 5)
    await client.cancel()
    frames = await client.until_finished()
    assert time.monotonic() - started < POLITE_SECONDS / 3
    assert frames[-1]["status"] == protocol.STATUS_CANCELLED
    [result] = [frame["tool_result"] for frame in frames if frame["type"] == protocol.TOOL_RESULT]
    assert result["status"] == "error"
    assert result["content"] == [{"text": STOPPED_TEXT}]

    assert (await Run.objects.aget(conversation_id=conversation_id)).status == Run.Status.CANCELLED
    tool_row = await ToolResult.objects.aget(conversation_id=conversation_id)
    assert (tool_row.tool_name, tool_row.status, tool_row.content) == (
        "polite_wait",
        ToolResult.Status.ERROR,
        [{"text": STOPPED_TEXT}],
    )
    rows = await stored(conversation_id)
    assert [row.role for row in rows] == ["user", "assistant", "user"]
    await assert_repaired_history_valid(conversation_id)

    seen = await assert_next_prompt_succeeds(client)
    assert seen[2]["content"][0]["toolResult"]["status"] == "error"
    assert seen[2]["content"][-1] == {"text": "Calculate 2+2"}
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_during_a_tool_that_ignores_it(layer, settings, user):
    """Strands cannot interrupt a running tool: it finishes, then the run stops before the next model call."""
    use_factory(settings, "instant_factory")
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    await client.prompt("Call stubborn_wait with {}")
    await client.until(protocol.CURRENT_TOOL_USE)
    assert await asyncio.to_thread(TOOL_STARTED.wait, 5)
    await client.cancel()
    frames = await client.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_CANCELLED
    assert len(MODEL_CALLS) == 1
    [result] = [frame["tool_result"] for frame in frames if frame["type"] == protocol.TOOL_RESULT]
    assert (result["status"], result["content"]) == ("success", [{"text": "waited"}])
    tool_row = await ToolResult.objects.aget(conversation_id=conversation_id)
    assert tool_row.status == ToolResult.Status.SUCCESS
    await assert_repaired_history_valid(conversation_id)
    await assert_next_prompt_succeeds(client)
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_run_task_killed_during_a_tool_gets_its_tool_use_answered(user):
    """When the server kills the run's task (shutdown), the recorder answers the dangling tool use itself."""
    conversation = await Conversation.objects.acreate(owner=user)
    frames: list[dict[str, Any]] = []

    async def emit(frame: dict[str, Any]) -> None:
        frames.append(frame)

    agent = instant_factory(conversation, user)
    run = AgentRun(agent, "Call polite_wait with {}", str(conversation.pk), emit, user_id=user.pk)
    task = asyncio.create_task(run.execute(time_limit=60))
    assert await asyncio.to_thread(TOOL_STARTED.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert frames[-1]["type"] == protocol.RUN_FINISHED
    assert frames[-1]["status"] == protocol.STATUS_INTERRUPTED
    saved = await Run.objects.aget(pk=run.run_id)
    assert saved.status == Run.Status.INTERRUPTED
    assert saved.error
    tool_row = await ToolResult.objects.aget(conversation_id=conversation.pk)
    assert (tool_row.tool_name, tool_row.status) == ("polite_wait", ToolResult.Status.ERROR)
    assert tool_row.content == [{"text": INTERRUPTED_TOOL_TEXT}]
    rows = await stored(str(conversation.pk))
    assert [row.role for row in rows] == ["user", "assistant", "user"]
    await assert_repaired_history_valid(str(conversation.pk))


### (c) the client goes away mid-run ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_disconnect_during_text(layer, settings, user):
    use_factory(settings, "paced_factory")
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt("Stream 400 tokens")
    received = streamed_text(await until_data(client, 3))
    # Returns once the consumer has finished, which includes saving the run.
    await client.close()

    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == Run.Status.CANCELLED
    rows = await stored(conversation_id)
    assert [(row.role, row.partial) for row in rows] == [("user", False), ("assistant", True)]
    saved_text = rows[1].content[0]["text"]
    # Frames still in flight when the socket closed were never read, so the client saw a prefix.
    assert saved_text.startswith(received)
    assert 3 <= saved_text.count(" ") < 400
    await assert_repaired_history_valid(conversation_id)

    again = Client(f"/ws/agent/{conversation_id}/", user=user)
    hello = await again.hello()
    assert hello["messages"][-1]["partial"] is True
    assert hello["messages"][-1]["content"] == [{"text": saved_text}]
    seen = await assert_next_prompt_succeeds(again)
    assert seen[1] == {"role": "assistant", "content": [{"text": saved_text}]}
    await again.close()


### (d) the model fails mid-stream ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_model_error_mid_stream(layer, settings, user):
    use_factory(settings, "failing_factory")
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt("Stream 20 tokens")
    frames = await client.until_finished()
    await client.close()

    errors = [frame for frame in frames if frame["type"] == protocol.ERROR]
    assert [error["code"] for error in errors] == [protocol.ERR_RUN_FAILED]
    assert errors[0]["run_id"] == frames[-1]["run_id"]
    assert "Traceback" not in errors[0]["message"]
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    received = streamed_text(frames)
    assert received == "w0 w1 w2 w3 w4 "

    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == Run.Status.FAILED
    assert run.error == errors[0]["message"]
    rows = await stored(conversation_id)
    assert [(row.role, row.partial) for row in rows] == [("user", False), ("assistant", True)]
    assert rows[1].content == [{"text": received}]
    await assert_repaired_history_valid(conversation_id)

    use_factory(settings, "instant_factory")
    again = Client(f"/ws/agent/{conversation_id}/", user=user)
    await again.hello()
    seen = await assert_next_prompt_succeeds(again)
    assert seen[1] == {"role": "assistant", "content": [{"text": received}]}
    await again.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_model_error_after_a_tool(layer, settings, user):
    """The tool's messages are kept and the failed answer is saved as partial; the history stays valid."""
    use_factory(settings, "failing_factory")
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt("Calculate 2+2 and Stream 20 tokens")
    frames = await client.until_finished()
    await client.close()
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    rows = await stored(conversation_id)
    assert [(row.role, row.partial) for row in rows] == [
        ("user", False),
        ("assistant", False),
        ("user", False),
        ("assistant", True),
    ]
    assert rows[3].content == [{"text": streamed_text(frames)}]
    await assert_repaired_history_valid(conversation_id)

    use_factory(settings, "instant_factory")
    again = Client(f"/ws/agent/{conversation_id}/", user=user)
    await again.hello()
    await assert_next_prompt_succeeds(again)
    await again.close()


### (e) cancel between the tool result and the answer ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_after_a_tool_before_the_answer(layer, settings, user):
    use_factory(settings, "paced_factory")
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    await client.prompt("Calculate 2+2 and Stream 100 tokens")
    frames = await client.until(protocol.TOOL_RESULT)
    await client.cancel()
    frames += await client.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_CANCELLED
    answer = streamed_text(frames)

    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == Run.Status.CANCELLED
    rows = await stored(conversation_id)
    assert [row.role for row in rows[:3]] == ["user", "assistant", "user"]
    assert rows[2].content[0]["toolResult"]["content"] == [{"text": "4"}]
    tail = rows[3:]
    if answer:
        # The answer had begun: what the client saw is kept, marked partial.
        assert [(row.role, row.partial, row.content) for row in tail] == [("assistant", True, [{"text": answer}])]
    else:
        # Stopped before the answer's first token: nothing, or Strands' cancel note marked partial, follows.
        assert all(row.role == "assistant" and row.partial for row in tail)
        assert len(tail) <= 1
    await assert_repaired_history_valid(conversation_id)

    seen = await assert_next_prompt_succeeds(client)
    assert seen[2]["content"][0]["toolResult"]["content"] == [{"text": "4"}]
    await client.close()


### (e) the agent cannot be built ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("factory", ["broken_factory", "not_an_agent_factory"])
async def test_an_agent_that_cannot_be_built_refuses_the_prompt_and_writes_nothing(settings, user, factory):
    use_factory(settings, factory)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt("Hello")
    error = await client.receive()
    assert error["type"] == protocol.ERROR and error["code"] == protocol.ERR_RUN_FAILED
    assert "run_id" not in error and "secret detail" not in error["message"]
    assert not await Run.objects.filter(conversation_id=conversation_id).aexists()

    # The connection is still usable: with a working factory the next prompt runs.
    use_factory(settings, "instant_factory")
    await client.prompt("Hello")
    frames = await client.until_finished()
    await client.close()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
