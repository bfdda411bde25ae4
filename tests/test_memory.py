"""An agent's memory between prompts: its conversation manager's state (a summary) and ``agent.state`` are saved.

A prompt restores them and reads only the stored messages the manager keeps, however long the conversation.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from strands import Agent
from strands.agent.conversation_manager import SlidingWindowConversationManager, SummarizingConversationManager
from strands.hooks import BeforeInvocationEvent, HookProvider, HookRegistry
from strands.types.exceptions import ContextWindowOverflowException

from agentapp import history, preparing
from agentapp.models import AgentState, Conversation, Message
from agentapp.offline_model import OfflineModel
from agentapp.session import session_manager_for
from agentapp.tools import calculator
from tests.test_history import assert_valid_history
from tests.test_history_window import store, turns
from tests.wsclient import Client

SUMMARIZE = "Please summarize this conversation."
# The most messages the model takes; past it, it overflows and the manager summarizes.
CONTEXT_MESSAGES = 8
# Every ``messages`` list the agent gave the model, and every list it was asked to summarize, oldest first.
AGENT_CALLS: list[list[dict[str, Any]]] = []
SUMMARY_CALLS: list[list[dict[str, Any]]] = []


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


class SmallContextModel(OfflineModel):
    """The offline model with a context of ``CONTEXT_MESSAGES`` messages; it answers a summary request with one."""

    async def stream(self, messages: Any, tool_specs: Any = None, system_prompt: Any = None, **kwargs: Any) -> Any:
        last = messages[-1]["content"][-1] if messages else {}
        if tool_specs is None and last.get("text") == SUMMARIZE:
            SUMMARY_CALLS.append(copy.deepcopy(messages[:-1]))
            text = f"Summary {len(SUMMARY_CALLS)} of {len(messages) - 1} messages."
            for event in (
                {"messageStart": {"role": "assistant"}},
                {"contentBlockStart": {"start": {}}},
                {"contentBlockDelta": {"delta": {"text": text}}},
                {"contentBlockStop": {}},
                {"messageStop": {"stopReason": "end_turn"}},
            ):
                yield event
            return
        AGENT_CALLS.append(copy.deepcopy(messages))
        if len(messages) > CONTEXT_MESSAGES:
            raise ContextWindowOverflowException(f"{len(messages)} messages do not fit in {CONTEXT_MESSAGES}")
        async for event in super().stream(messages, tool_specs, system_prompt, **kwargs):
            yield event


class CountPrompts(HookProvider):
    """Counts the agent's prompts in ``agent.state``, which only a saved state carries from one agent to the next."""

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        registry.add_callback(BeforeInvocationEvent, self.count)

    def count(self, event: BeforeInvocationEvent) -> None:
        event.agent.state.set("prompts", (event.agent.state.get("prompts") or 0) + 1)


def summarizing_factory(conversation: Any, user: Any) -> Agent:
    return Agent(
        model=SmallContextModel(),
        tools=[calculator],
        callback_handler=None,
        conversation_manager=SummarizingConversationManager(summary_ratio=0.5, preserve_recent_messages=4),
        hooks=[CountPrompts()],
    )


async def prompt_on_a_new_connection(conversation_id: Any, user: Any, text: str) -> None:
    """One prompt on a connection of its own, so each prompt has a freshly built agent."""
    client = Client(f"/ws/agent/{conversation_id}/", user=user)
    await client.hello()
    await client.prompt(text)
    frames = await client.until_finished()
    await client.close()
    assert frames[-1]["status"] == "completed", frames[-3:]


def saved(conversation_id: Any) -> dict[str, Any]:
    return AgentState.objects.get(conversation_id=conversation_id, agent_id="default").data


def texts(message: dict[str, Any]) -> list[str]:
    return [block["text"] for block in message["content"] if "text" in block]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_summary_and_agent_state_are_kept_across_prompts(user, settings):
    settings.AGENTAPP = {"AGENT_FACTORY": "tests.test_memory.summarizing_factory", "OFFLINE_TOKENS_PER_SECOND": 0}
    conversation = await Conversation.objects.acreate(owner=user)
    AGENT_CALLS.clear()
    SUMMARY_CALLS.clear()

    for n in (1, 2):
        await prompt_on_a_new_connection(conversation.pk, user, f"Calculate {n}+{n}")
    assert SUMMARY_CALLS == []
    first = await database_sync_to_async(saved)(conversation.pk)
    assert first["state"] == {"prompts": 2}
    assert first["conversation_manager_state"]["summary_message"] is None

    # The third prompt overflows the context: the first turn (4 messages) is summarized.
    await prompt_on_a_new_connection(conversation.pk, user, "Calculate 3+3")
    assert len(SUMMARY_CALLS) == 1
    assert texts(SUMMARY_CALLS[0][0]) == ["Calculate 1+1"]
    third = await database_sync_to_async(saved)(conversation.pk)
    assert third["state"] == {"prompts": 3}
    summary = third["conversation_manager_state"]["summary_message"]
    assert summary["role"] == "user" and texts(summary) == ["Summary 1 of 4 messages."]
    assert third["conversation_manager_state"]["removed_message_count"] == 4  # the second prompt's position
    assert await Message.objects.filter(conversation=conversation).acount() == 12

    # A new agent starts from the saved summary and the messages after it, not from the whole conversation.
    AGENT_CALLS.clear()
    await prompt_on_a_new_connection(conversation.pk, user, "Calculate 4+4")
    sent = AGENT_CALLS[0]
    assert texts(sent[0]) == ["Summary 1 of 4 messages."]
    assert [texts(message) for message in sent[1::4]] == [["Calculate 2+2"], ["Calculate 3+3"], ["Calculate 4+4"]]
    assert len(sent) == 1 + 8 + 1
    # It overflows again: the new summary is made from the old one and what followed, never recomputed from row 0.
    assert len(SUMMARY_CALLS) == 2
    assert texts(SUMMARY_CALLS[1][0]) == ["Summary 1 of 4 messages."]
    assert texts(SUMMARY_CALLS[1][1]) == ["Calculate 2+2"]
    # Strands puts its user-role summary before the kept messages, as they are.
    assert_valid_history(AGENT_CALLS[-1][1:], ends_with_user=True)
    fourth = await database_sync_to_async(saved)(conversation.pk)
    assert fourth["state"] == {"prompts": 4}
    assert texts(fourth["conversation_manager_state"]["summary_message"]) == ["Summary 2 of 5 messages."]
    assert fourth["conversation_manager_state"]["removed_message_count"] == 8  # the third prompt's position


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_one_connection_keeps_its_summary_between_prompts(user, settings):
    settings.AGENTAPP = {"AGENT_FACTORY": "tests.test_memory.summarizing_factory", "OFFLINE_TOKENS_PER_SECOND": 0}
    conversation = await Conversation.objects.acreate(owner=user)
    AGENT_CALLS.clear()
    SUMMARY_CALLS.clear()
    client = Client(f"/ws/agent/{conversation.pk}/", user=user)
    await client.hello()
    for n in range(1, 5):
        await client.prompt(f"Calculate {n}+{n}")
        assert (await client.until_finished())[-1]["status"] == "completed"
    await client.close()

    assert len(SUMMARY_CALLS) == 2
    assert texts(SUMMARY_CALLS[1][0]) == ["Summary 1 of 4 messages."]
    data = await database_sync_to_async(saved)(conversation.pk)
    assert data["state"] == {"prompts": 4}
    assert data["conversation_manager_state"]["removed_message_count"] == 8


def summarized_state(count: int) -> dict[str, Any]:
    """A saved summarizing manager that keeps the last two turns (8 messages) of ``count`` after a summary."""
    return {
        "state": {"topic": "sums"},
        "conversation_manager_state": {
            "__name__": "SummarizingConversationManager",
            "removed_message_count": count - 8,
            "summary_message": {"role": "user", "content": [{"text": "Earlier: sums."}]},
        },
    }


ROWS_READ: list[int] = []


def counting_tail_rows(*args: Any, **kwargs: Any) -> list[Any]:
    """``history.tail_rows``, noting how many rows it read."""
    rows = history.tail_rows(*args, **kwargs)
    ROWS_READ.append(len(rows))
    return rows


@pytest.fixture
def rows_read(monkeypatch) -> list[int]:
    monkeypatch.setattr(preparing, "tail_rows", counting_tail_rows)
    ROWS_READ.clear()
    return ROWS_READ


def prepared(conversation: Conversation, manager: Any, count: int, state: dict[str, Any] | None) -> tuple[int, Agent]:
    """Give a fresh agent the history of a conversation of ``count`` stored messages; return the queries it took."""
    store(conversation, turns(count // 4))
    if state is not None:
        AgentState.objects.create(conversation=conversation, agent_id="default", data=state)
    agent = Agent(model=SmallContextModel(), conversation_manager=manager, callback_handler=None)
    with CaptureQueriesContext(connection) as queries:
        preparing.give_history(agent, conversation.pk, None)
    assert all("LIMIT" in query["sql"] for query in queries.captured_queries)
    return len(queries), agent


@pytest.mark.django_db
@pytest.mark.parametrize("summarizing", [False, True], ids=["sliding", "summarizing"])
def test_a_prompt_costs_the_same_with_10000_messages_as_with_12(user, settings, rows_read, summarizing):
    settings.AGENTAPP = {"MAX_HISTORY_MESSAGES": 40}
    costs = []
    for count in (12, 10_000):
        conversation = Conversation.objects.create(owner=user)
        if summarizing:
            manager: Any = SummarizingConversationManager()
            queries, agent = prepared(conversation, manager, count, summarized_state(count))
            assert texts(agent.messages[0]) == ["Earlier: sums."]
            assert agent.state.get() == {"topic": "sums"}
            assert manager.removed_message_count == count - 8
            kept = agent.messages[1:]
        else:
            queries, agent = prepared(conversation, SlidingWindowConversationManager(window_size=12), count, None)
            kept = agent.messages
        assert_valid_history(kept, ends_with_user=False)
        costs.append((queries, rows_read[-1], len(agent.messages)))
    # A summarizing manager reads only the 8 rows after its summary; a sliding window its 12.
    expected = (2, 8, 9) if summarizing else (2, 12, 12)
    assert costs == [expected, expected]


@pytest.mark.django_db
def test_a_state_saved_by_another_manager_is_ignored(user, rows_read):
    conversation = Conversation.objects.create(owner=user)
    manager = SlidingWindowConversationManager(window_size=12)
    queries, agent = prepared(conversation, manager, 40, summarized_state(40))
    assert queries == 2 and rows_read == [12]
    assert agent.state.get() == {"topic": "sums"}  # agent.state is the agent's, whatever its manager
    assert texts(agent.messages[0]) == ["question 7"]
    assert manager.removed_message_count == 28


def plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as role and content only (tracking ids differ between agents)."""
    return [{"role": message["role"], "content": message["content"]} for message in messages]


@pytest.mark.django_db(transaction=True)
def test_strands_session_manager_restores_the_same_memory(user):
    conversation = Conversation.objects.create(owner=user)
    store(conversation, turns(5))
    AgentState.objects.create(conversation=conversation, agent_id="default", data=summarized_state(20))
    prompted = Agent(model=OfflineModel(), conversation_manager=SummarizingConversationManager(), callback_handler=None)
    preparing.give_history(prompted, conversation.pk, None)

    outside = Agent(
        model=OfflineModel(),
        conversation_manager=SummarizingConversationManager(),
        session_manager=session_manager_for(conversation.pk),
        callback_handler=None,
    )

    assert plain(outside.messages) == plain(prompted.messages)
    assert texts(outside.messages[0]) == ["Earlier: sums."] and texts(outside.messages[1]) == ["question 3"]
    assert outside.state.get() == prompted.state.get() == {"topic": "sums"}
    assert outside.conversation_manager.removed_message_count == prompted.conversation_manager.removed_message_count


def stored_position(conversation_id: Any, message: dict[str, Any]) -> int:
    """The position of the stored row holding ``message``'s content."""
    rows = Message.objects.filter(conversation_id=conversation_id).values_list("position", "content")
    return next(position for position, content in rows if content == message["content"])


CUT_RUN = [
    {"role": "user", "content": [{"text": "Calculate 5+5"}]},
    {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "cut", "name": "calculator", "input": {"expression": "5+5"}}}],
    },
    {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "cut", "status": "success", "content": [{"text": "10"}]}}],
    },
]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cut", [False, True], ids=["answered", "cut-after-tool-results"])
async def test_a_summary_inside_a_run_saves_the_row_the_kept_messages_start_at(user, settings, cut):
    settings.AGENTAPP = {"AGENT_FACTORY": "tests.test_memory.summarizing_factory", "OFFLINE_TOKENS_PER_SECOND": 0}
    conversation = await Conversation.objects.acreate(owner=user)
    # A cut run leaves the history on tool results: the prompt joins that message, its row comes next.
    await database_sync_to_async(store)(conversation, turns(1) + (CUT_RUN if cut else []))
    AGENT_CALLS.clear()
    SUMMARY_CALLS.clear()

    await prompt_on_a_new_connection(
        conversation.pk, user, "Calculate 1+1 and then add 2 and then add 3 and then add 4 and then add 5"
    )

    assert len(SUMMARY_CALLS) >= 2
    first_kept = AGENT_CALLS[-1][1]
    position = await database_sync_to_async(stored_position)(conversation.pk, first_kept)
    assert position > (7 if cut else 4)  # a message of this run
    data = await database_sync_to_async(saved)(conversation.pk)
    assert data["conversation_manager_state"]["removed_message_count"] == position
