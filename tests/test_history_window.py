"""A prompt reads only the history its agent keeps (the sliding window), and the agent is built off the DB thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from strands import Agent
from strands.agent.conversation_manager import NullConversationManager, SlidingWindowConversationManager

from agentapp import preparing
from agentapp.history import load_messages
from agentapp.models import Conversation, Message
from tests.test_history import assert_valid_history
from tests.test_persistence import MODEL_CALLS, RecordingModel
from tests.wsclient import Client

BUILT_IN: list[str] = []


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


def store(conversation: Conversation, messages: list[dict[str, Any]]) -> None:
    Message.objects.bulk_create(
        Message(conversation=conversation, position=position, role=message["role"], content=message["content"])
        for position, message in enumerate(messages)
    )


def turns(count: int) -> list[dict[str, Any]]:
    """``count`` turns of a tool round each: prompt, tool use, tool result, answer."""
    messages: list[dict[str, Any]] = []
    for n in range(count):
        use = {"toolUse": {"toolUseId": f"t{n}", "name": "calculator", "input": {"expression": "1+1"}}}
        result = {"toolResult": {"toolUseId": f"t{n}", "status": "success", "content": [{"text": "2"}]}}
        messages += [
            {"role": "user", "content": [{"text": f"question {n}"}]},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [result]},
            {"role": "assistant", "content": [{"text": f"answer {n}"}]},
        ]
    return messages


@pytest.mark.django_db
def test_a_window_reads_the_last_whole_turns_only(user):
    conversation = Conversation.objects.create(owner=user)
    store(conversation, turns(2500))

    with CaptureQueriesContext(connection) as queries:
        window = load_messages(conversation.pk, 10)

    assert len(queries) == 1
    assert [message["content"][0].get("text") for message in window[::4]] == ["question 2498", "question 2499"]
    assert len(window) == 8
    assert_valid_history(window, ends_with_user=False)


@pytest.mark.django_db
def test_a_turn_longer_than_the_window_is_read_back_to_its_prompt(user):
    conversation = Conversation.objects.create(owner=user)
    loop = turns(1)[:3]
    for n in range(1, 30):  # one prompt, then 30 tool rounds before the answer
        use = {"toolUse": {"toolUseId": f"t{n}", "name": "calculator", "input": {"expression": "1+1"}}}
        result = {"toolResult": {"toolUseId": f"t{n}", "status": "success", "content": [{"text": "2"}]}}
        loop += [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
    loop.append({"role": "assistant", "content": [{"text": "done"}]})
    store(conversation, turns(3) + loop)  # the loop repeats turn 0's prompt text after three whole turns

    window = load_messages(conversation.pk, 10)

    assert window[0] == {"role": "user", "content": [{"text": "question 0"}]}
    assert len(window) == len(loop)
    assert_valid_history(window, ends_with_user=False)


@pytest.mark.django_db
def test_the_window_follows_the_agents_conversation_manager(user, settings):
    settings.AGENTAPP = {"MAX_HISTORY_MESSAGES": 123}
    sliding = Agent(model=RecordingModel(), conversation_manager=SlidingWindowConversationManager(window_size=8))
    keeps_all = Agent(model=RecordingModel(), conversation_manager=NullConversationManager())
    assert preparing.history_window(sliding) == 8
    assert preparing.history_window(keeps_all) == 123
    settings.AGENTAPP = {"MAX_HISTORY_MESSAGES": 0}
    assert preparing.history_window(keeps_all) is None


def recording_factory(conversation: Any, user: Any) -> Agent:
    BUILT_IN.append(threading.current_thread().name)
    return Agent(
        model=RecordingModel(),
        conversation_manager=SlidingWindowConversationManager(window_size=12),
        callback_handler=None,
    )


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_long_conversation_sends_the_model_its_window_and_builds_off_the_db_thread(user, settings):
    settings.AGENTAPP = {"AGENT_FACTORY": "tests.test_history_window.recording_factory", "OFFLINE_TOKENS_PER_SECOND": 0}
    conversation = await Conversation.objects.acreate(owner=user)
    await database_sync_to_async(store)(conversation, turns(500))
    database_thread = await database_sync_to_async(lambda: threading.current_thread().name)()
    BUILT_IN.clear()
    MODEL_CALLS.clear()

    client = Client(f"/ws/agent/{conversation.pk}/", user=user)
    await client.hello()
    await client.prompt("Calculate 2+2")
    frames = await client.until_finished()
    await client.close()

    assert frames[-1]["status"] == "completed"
    assert len(BUILT_IN) == 1 and BUILT_IN[0] != database_thread
    first_call = MODEL_CALLS[0]
    assert len(first_call) <= 12 + 1
    assert first_call[0]["content"][0]["text"].startswith("question ")
    assert first_call[-1]["content"] == [{"text": "Calculate 2+2"}]
