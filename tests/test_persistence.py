"""What a run leaves in the database, how many statements it costs, and how a conversation remembers."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db.backends.utils import CursorWrapper
from strands import Agent

from agentapp import protocol
from agentapp.models import Message, Run, ToolResult
from agentapp.offline_model import OfflineModel
from agentapp.tools import calculator
from tests.test_consumer_seed import SEED_PROMPTS
from tests.test_history import assert_valid_history
from tests.wsclient import Client, streamed_text

# Every ``messages`` list a RecordingModel was called with, oldest first.
MODEL_CALLS: list[list[dict[str, Any]]] = []


class RecordingModel(OfflineModel):
    """The offline model, keeping a copy of the history it is given on each call."""

    def stream(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        MODEL_CALLS.append(copy.deepcopy(messages))
        return super().stream(messages, *args, **kwargs)


def recording_factory(conversation: Any, user: Any) -> Agent:
    return Agent(model=RecordingModel(), tools=[calculator], callback_handler=None)


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement executed while the fixture is active, from any thread (Channels' DB thread too)."""
    executed: list[str] = []
    lock = threading.Lock()
    execute, executemany = CursorWrapper.execute, CursorWrapper.executemany

    def counting_execute(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        with lock:
            executed.append(sql)
        return execute(self, sql, params)

    def counting_executemany(self: CursorWrapper, sql: str, param_list: Any) -> Any:
        with lock:
            executed.append(sql)
        return executemany(self, sql, param_list)

    CursorWrapper.execute = counting_execute
    CursorWrapper.executemany = counting_executemany
    try:
        yield executed
    finally:
        CursorWrapper.execute = execute
        CursorWrapper.executemany = executemany


def texts(content: list[dict[str, Any]]) -> str:
    return "".join(block.get("text", "") for block in content)


### Rows of a run ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("prompt", "steps", "answer_contains"), SEED_PROMPTS)
async def test_seed_prompt_rows(settings, user, prompt, steps, answer_contains):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt(prompt)
    frames = await client.until_finished()
    await client.close()
    result = frames[-2]["result"]

    run = await Run.objects.aget(conversation_id=conversation_id)
    assert str(run.pk) == frames[0]["run_id"]
    assert run.status == Run.Status.COMPLETED
    assert run.stop_reason == "end_turn"
    assert run.prompt == prompt
    assert run.user_id == user.pk
    assert run.error == ""
    assert run.finished_at is not None and run.finished_at >= run.started_at
    assert run.latency_ms is not None
    assert min(run.input_tokens, run.output_tokens, run.total_tokens) > 0
    assert result["usage"]["inputTokens"] == run.input_tokens
    assert result["usage"]["outputTokens"] == run.output_tokens
    assert result["usage"]["totalTokens"] == run.total_tokens == run.input_tokens + run.output_tokens
    assert run.usage == result["usage"]
    assert run.metrics["cycles"] == len(steps) + 1

    rows = [row async for row in Message.objects.filter(conversation_id=conversation_id).order_by("position")]
    assert [row.position for row in rows] == list(range(2 * len(steps) + 2))
    assert [row.role for row in rows] == ["user"] + ["assistant", "user"] * len(steps) + ["assistant"]
    assert {str(row.run_id) for row in rows} == {str(run.pk)}
    assert not any(row.partial for row in rows)
    assert rows[0].content == [{"text": prompt}]
    assert texts(rows[-1].content) == texts(result["message"]["content"])
    assert answer_contains in texts(rows[-1].content)

    tool_rows = [row async for row in ToolResult.objects.filter(conversation_id=conversation_id).order_by("id")]
    assert len(tool_rows) == len(steps)
    for index, ((expression, status, result_text), tool_row) in enumerate(zip(steps, tool_rows, strict=True)):
        asked, answered = rows[1 + 2 * index], rows[2 + 2 * index]
        [tool_use] = [block["toolUse"] for block in asked.content]
        [tool_result] = [block["toolResult"] for block in answered.content]
        assert tool_use["input"] == {"expression": expression}
        assert tool_result["toolUseId"] == tool_use["toolUseId"] == tool_row.tool_use_id
        assert tool_row.message_id == answered.pk
        assert tool_row.run_id == run.pk
        assert tool_row.tool_name == "calculator"
        assert tool_row.tool_input == {"expression": expression}
        assert tool_row.status == status
        assert result_text in texts(tool_row.content)
        assert tool_row.content == tool_result["content"]
        assert tool_row.duration_ms is not None


### Statements per run ###


async def statements_for(prompt: str, user: Any, executed: list[str]) -> tuple[int, list[str]]:
    """Run ``prompt`` in a fresh conversation: the frames it made (merged deltas count each) and its statements."""
    client = Client(user=user)
    await client.hello()
    executed.clear()
    await client.prompt(prompt)
    frames = await client.until_finished()
    during = list(executed)
    await client.close()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    return frames[-1]["seq"] + 1, during


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_statement_count_follows_messages_not_tokens(settings, user, statements):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    short_frames, short = await statements_for("Stream 10 tokens", user, statements)
    long_frames, long = await statements_for("Stream 10000 tokens", user, statements)
    print(f"\nstatements per run: {len(short)} for 10 tokens, {len(long)} for 10000 tokens")
    print("\n".join(sql[:100] for sql in long))
    assert long_frames - short_frames == 9990
    assert len(short) == len(long)
    assert len(long) <= 16


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_tool_calls_add_a_constant_number_of_statements(settings, user, statements):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    _, plain = await statements_for("Stream 10 tokens", user, statements)
    _, one_tool = await statements_for("Calculate 2+2", user, statements)
    _, two_tools = await statements_for("Calculate 15 * 23 and then add 100", user, statements)
    print(f"\nstatements per run: {len(plain)} plain, {len(one_tool)} with 1 tool, {len(two_tools)} with 2 tools")
    per_tool = len(one_tool) - len(plain)
    # Each tool call adds two messages (assistant toolUse, user toolResult) and one ToolResult row.
    assert 0 < per_tool <= 4
    assert len(two_tools) - len(one_tool) == per_tool


### Memory ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_reconnect_shows_history_and_the_model_remembers(settings, user):
    settings.AGENTAPP = {"AGENT_FACTORY": "tests.test_persistence.recording_factory", "OFFLINE_TOKENS_PER_SECOND": 0}
    first = Client(user=user)
    conversation_id = (await first.hello())["conversation_id"]
    await first.prompt("Calculate 15 * 23")
    first_frames = await first.until_finished()
    await first.close()
    first_answer = streamed_text(first_frames)
    assert "345" in first_answer

    again = Client(f"/ws/agent/{conversation_id}/", user=user)
    hello = await again.hello()
    assert hello["conversation_id"] == conversation_id
    assert hello["title"] == "Calculate 15 * 23"
    history = hello["messages"]
    assert [message["position"] for message in history] == [0, 1, 2, 3]
    assert [message["role"] for message in history] == ["user", "assistant", "user", "assistant"]
    assert history[0]["content"] == [{"text": "Calculate 15 * 23"}]
    assert history[1]["content"][0]["toolUse"]["input"] == {"expression": "15 * 23"}
    assert history[2]["content"][0]["toolResult"]["content"] == [{"text": "345"}]
    assert texts(history[3]["content"]) == first_answer
    assert {message["run_id"] for message in history} == {first_frames[0]["run_id"]}

    MODEL_CALLS.clear()
    await again.prompt("What is 2 times 3?")
    frames = await again.until_finished()
    await again.close()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert "6" in streamed_text(frames)

    seen = MODEL_CALLS[0]
    assert_valid_history(seen)
    assert seen[0]["content"] == [{"text": "Calculate 15 * 23"}]
    assert seen[2]["content"][0]["toolResult"]["content"] == [{"text": "345"}]
    assert texts(seen[3]["content"]) == first_answer
    assert seen[4]["content"] == [{"text": "What is 2 times 3?"}]
    assert len(seen) == 5

    positions = [row.position async for row in Message.objects.filter(conversation_id=conversation_id)]
    assert positions == list(range(8))


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_history_frame_is_limited_to_the_latest_messages(settings, user):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0, "HISTORY_FRAME_MESSAGES": 3}
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt("Calculate 2+2")
    await client.until_finished()
    await client.close()

    again = Client(f"/ws/agent/{conversation_id}/", user=user)
    history = (await again.hello())["messages"]
    await again.close()
    assert [message["position"] for message in history] == [1, 2, 3]
