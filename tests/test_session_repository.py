"""The ORM session repository: Strands' own session manager on agentapp's rows, in and out of an event loop."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.exceptions import SynchronousOnlyOperation
from strands import Agent
from strands.session.repository_session_manager import RepositorySessionManager
from strands.types.exceptions import SessionException
from strands.types.session import SessionMessage

from agentapp import protocol
from agentapp.history import load_messages
from agentapp.models import AgentState, Conversation, Message, Run, ToolResult
from agentapp.offline_model import OfflineModel
from agentapp.runner import AgentRun
from agentapp.session import DjangoSessionRepository, session_manager_for
from agentapp.tools import calculator

pytestmark = pytest.mark.django_db(transaction=True)


def session_agent(session_id: Any) -> Agent:
    """An offline agent whose history lives in the conversation's rows, through Strands' own session manager."""
    manager = RepositorySessionManager(session_id=str(session_id), session_repository=DjangoSessionRepository())
    return Agent(model=OfflineModel(), tools=[calculator], session_manager=manager, callback_handler=None)


def channels_run(conversation: Conversation, prompt: str) -> str:
    """Run a prompt the way the WebSocket consumer does (AgentRun, RunRecorder) and return the run status."""
    agent = Agent(model=OfflineModel(), tools=[calculator], callback_handler=None)
    agent.messages = load_messages(conversation.pk)

    async def emit(frame: dict[str, Any]) -> None:
        return None

    run = AgentRun(agent, prompt, str(conversation.pk), emit, user_id=conversation.owner_id)
    return async_to_sync(run.execute)(time_limit=30)


def stored(conversation_id: Any) -> list[tuple[int, str]]:
    rows = Message.objects.filter(conversation_id=conversation_id).order_by("position")
    return list(rows.values_list("position", "role"))


def plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as role and content only (Strands adds tracking ids the rows do not keep)."""
    return [{"role": message["role"], "content": message["content"]} for message in messages]


ROLES = ["user", "assistant", "user", "assistant"]


def test_sync_call_writes_rows_and_a_new_agent_restores_them():
    conversation_id = str(uuid.uuid4())
    agent = session_agent(conversation_id)
    agent.state.set("turns", 1)
    result = agent("Calculate 2+2")
    assert "2+2 = 4" in str(result)

    conversation = Conversation.objects.get(pk=conversation_id)
    assert conversation.title == "Calculate 2+2"
    assert conversation.owner is None
    assert stored(conversation_id) == list(enumerate(ROLES))
    tool_result = ToolResult.objects.get(conversation_id=conversation_id)
    assert tool_result.tool_name == "calculator"
    assert tool_result.tool_input == {"expression": "2+2"}
    assert tool_result.status == ToolResult.Status.SUCCESS
    assert tool_result.content == [{"text": "4"}]
    assert tool_result.message.position == 2
    assert AgentState.objects.get(conversation_id=conversation_id, agent_id="default").data["state"] == {"turns": 1}

    again = session_agent(conversation_id)
    assert plain(again.messages) == plain(agent.messages)
    assert len(again.messages) == 4
    assert again.state.get("turns") == 1
    again("Calculate the square root of -1")

    assert stored(conversation_id) == list(enumerate(ROLES * 2))
    failed = ToolResult.objects.get(conversation_id=conversation_id, status=ToolResult.Status.ERROR)
    assert failed.tool_input == {"expression": "sqrt(-1)"}
    assert "math domain error" in failed.content[0]["text"]
    assert failed.message.position == 6
    assert plain(load_messages(conversation_id)) == plain(again.messages)


@pytest.mark.asyncio
async def test_invoke_async_inside_the_event_loop():
    with pytest.raises(SynchronousOnlyOperation):
        Message.objects.count()  # what the repository must avoid: the ORM in an event loop thread

    conversation_id = str(uuid.uuid4())
    agent = session_agent(conversation_id)
    result = await agent.invoke_async("Calculate 15 * 23 and then add 100")
    assert "445" in str(result)

    assert await database_sync_to_async(stored)(conversation_id) == list(enumerate(["user", "assistant"] * 3))
    names = await database_sync_to_async(list)(
        ToolResult.objects.filter(conversation_id=conversation_id).values_list("tool_input", "status")
    )
    assert names == [({"expression": "15 * 23"}, "success"), ({"expression": "345 + 100"}, "success")]

    again = session_agent(conversation_id)
    assert plain(again.messages) == plain(agent.messages)


def test_history_is_shared_with_the_websocket_path():
    owner = get_user_model().objects.create_user("ada", password="x")
    conversation = Conversation.objects.create(owner=owner)
    assert channels_run(conversation, "Calculate 2+2") == protocol.STATUS_COMPLETED

    agent = Agent(
        model=OfflineModel(),
        tools=[calculator],
        session_manager=session_manager_for(conversation.pk),
        callback_handler=None,
    )
    assert plain(agent.messages) == load_messages(conversation.pk)
    assert len(agent.messages) == 4
    result = agent("What is 50 divided by 2, then multiply by 3?")
    assert "75" in str(result)
    assert stored(conversation.pk)[4:] == list(enumerate(["user", "assistant"] * 3, 4))

    # The WebSocket path picks up after the repository's messages.
    assert channels_run(conversation, "Calculate the square root of -1") == protocol.STATUS_COMPLETED
    assert [position for position, _ in stored(conversation.pk)] == list(range(14))
    history = load_messages(conversation.pk)
    assert history[:10] == plain(agent.messages)
    assert Run.objects.filter(conversation=conversation).count() == 2
    assert list(ToolResult.objects.filter(conversation=conversation).values_list("tool_name", "status")) == [
        ("calculator", "success"),
        ("calculator", "success"),
        ("calculator", "success"),
        ("calculator", "error"),
    ]
    conversation.refresh_from_db()
    assert conversation.owner == owner
    assert conversation.title == "Calculate 2+2"


def test_repository_reads_pages_and_redacts():
    conversation_id = str(uuid.uuid4())
    session_agent(conversation_id)("Calculate 2+2")
    repository = DjangoSessionRepository()

    page = repository.list_messages(conversation_id, "any-agent", limit=2, offset=1)
    assert [message.message_id for message in page] == [1, 2]
    assert [message.message_id for message in repository.list_messages(conversation_id, "x", offset=3)] == [3]
    assert repository.read_message(conversation_id, "x", 0).message == {
        "role": "user",
        "content": [{"text": "Calculate 2+2"}],
    }
    assert repository.read_message(conversation_id, "x", 99) is None

    tool_message = repository.read_message(conversation_id, "x", 2)
    tool_use_id = tool_message.message["content"][0]["toolResult"]["toolUseId"]
    redacted_result = {"toolResult": {"toolUseId": tool_use_id, "status": "error", "content": [{"text": "[redacted]"}]}}
    tool_message.redact_message = {"role": "user", "content": [redacted_result]}
    repository.update_message(conversation_id, "x", tool_message)
    assert Message.objects.get(conversation_id=conversation_id, position=2).content == [redacted_result]
    tool_result = ToolResult.objects.get(conversation_id=conversation_id)
    assert (tool_result.status, tool_result.content) == ("error", [{"text": "[redacted]"}])

    tool_message.redact_message = {"role": "user", "content": [{"text": "[User input redacted.]"}]}
    repository.update_message(conversation_id, "x", tool_message)
    assert not ToolResult.objects.filter(conversation_id=conversation_id).exists()

    with pytest.raises(SessionException):
        repository.update_message(conversation_id, "x", SessionMessage({"role": "user", "content": []}, 99))
    with pytest.raises(SessionException):
        repository.create_message(conversation_id, "x", SessionMessage({"role": "user", "content": []}, 3))


def test_sessions_map_to_conversations():
    repository = DjangoSessionRepository()
    assert repository.read_session(str(uuid.uuid4())) is None
    with pytest.raises(SessionException):
        repository.read_session("not-a-uuid")

    owner = get_user_model().objects.create_user("bea", password="x")
    conversation_id = uuid.uuid4()
    manager = session_manager_for(conversation_id, owner=owner)
    assert Conversation.objects.get(pk=conversation_id).owner == owner
    session = repository.read_session(str(conversation_id))
    assert session.session_id == manager.session_id == str(conversation_id)
    assert session.session_type == "AGENT"
    # An empty conversation has no agent yet; one with only WebSocket messages gets a fresh one.
    assert repository.read_agent(str(conversation_id), "default") is None
    Message.objects.create(conversation_id=conversation_id, position=0, role="user", content=[{"text": "hi"}])
    fresh = repository.read_agent(str(conversation_id), "default")
    assert (fresh.agent_id, fresh.state) == ("default", {})
    assert fresh.conversation_manager_state["__name__"] == "SlidingWindowConversationManager"
