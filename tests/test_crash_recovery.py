"""Runs whose process died: leases end them within seconds, their turn is closed, their streamed text is kept."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db.backends.utils import CursorWrapper
from django.utils import timezone
from strands import Agent

from agentapp import leases, protocol, runlog
from agentapp.history import INTERRUPTED_TOOL_TEXT, load_messages
from agentapp.models import Conversation, Message, Run, ToolResult
from agentapp.recorder import ConversationBusy, create_run, run_in_progress
from agentapp.runner import AgentRun
from agentapp.tools import calculator
from agentapp.transcript import write_message
from tests.test_history import assert_valid_history
from tests.test_persistence import MODEL_CALLS, RecordingModel

LEASE_SECONDS = 10


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


def instant_agent() -> Agent:
    return Agent(model=RecordingModel(), tools=[calculator], callback_handler=None)


def paced_agent(tokens_per_second: float) -> Agent:
    return Agent(model=RecordingModel(tokens_per_second=tokens_per_second), tools=[calculator], callback_handler=None)


def kill_process_of(run_id: str) -> None:
    """What a SIGKILL leaves behind, as seen from the database: a running row nobody renews any more."""
    Run.objects.filter(pk=run_id).update(heartbeat_at=timezone.now() - timedelta(seconds=LEASE_SECONDS + 1))


def start_dead_run(conversation: Conversation, prompt: str) -> str:
    """Store a run's start as its process would, then let that process die."""
    run_id = str(Run._meta.get_field("id").default())
    create_run(conversation.pk, run_id, conversation.owner_id, prompt)
    kill_process_of(run_id)
    return run_id


def start(
    agent: Agent, conversation: Conversation, prompt: str, prepare: Any = None
) -> tuple[AgentRun, list[dict[str, Any]], asyncio.Task[str]]:
    """Start a run in a task; its frames are collected in the list returned."""
    frames: list[dict[str, Any]] = []

    async def emit(frame: dict[str, Any]) -> None:
        frames.append(frame)

    run = AgentRun(agent, prompt, str(conversation.pk), emit, user_id=conversation.owner_id, prepare=prepare)
    return run, frames, asyncio.create_task(run.execute(time_limit=60))


async def execute(
    agent: Agent, conversation: Conversation, prompt: str, prepare: Any = None
) -> tuple[AgentRun, list[dict[str, Any]]]:
    run, frames, task = start(agent, conversation, prompt, prepare)
    await task
    return run, frames


def texts(content: list[dict[str, Any]]) -> str:
    return "".join(block.get("text", "") for block in content)


### Leases ###


@pytest.mark.django_db(transaction=True)
def test_a_live_run_keeps_the_conversation_busy(user, settings):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": LEASE_SECONDS}
    conversation = Conversation.objects.create(owner=user)
    create_run(conversation.pk, str(Run._meta.get_field("id").default()), user.pk, "first")
    with pytest.raises(ConversationBusy):
        create_run(conversation.pk, str(Run._meta.get_field("id").default()), user.pk, "second")
    assert run_in_progress(conversation.pk)


@pytest.mark.django_db(transaction=True)
def test_a_dead_run_is_ended_by_a_cancel_check_and_its_prompt_closed(user, settings):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": LEASE_SECONDS}
    conversation = Conversation.objects.create(owner=user)
    run_id = start_dead_run(conversation, "Stream 400 tokens")

    state = leases.running_state(conversation.pk)

    assert (state.live, state.ended) == (False, [run_id])
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.error) == (Run.Status.INTERRUPTED, leases.DEAD_RUN_ERROR)
    rows = list(Message.objects.filter(conversation=conversation).order_by("position"))
    assert [(row.role, texts(row.content)) for row in rows] == [
        ("user", "Stream 400 tokens"),
        ("assistant", leases.DEAD_RUN_NOTE),
    ]
    assert rows[-1].partial
    assert leases.running_state(conversation.pk) == leases.RunningState(live=False, ended=[])


@pytest.mark.django_db(transaction=True)
def test_a_dead_run_cut_mid_tool_gets_error_results_then_the_note(user, settings):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": LEASE_SECONDS}
    conversation = Conversation.objects.create(owner=user)
    run_id = start_dead_run(conversation, "Calculate 2+2")
    use = {"toolUse": {"toolUseId": "t1", "name": "calculator", "input": {"expression": "2+2"}}}
    write_message(conversation.pk, run_id, 1, {"role": "assistant", "content": [use]}, False, {})

    assert not run_in_progress(conversation.pk)

    tool_row = ToolResult.objects.get(conversation=conversation)
    assert (tool_row.tool_name, tool_row.status, tool_row.content) == (
        "calculator",
        ToolResult.Status.ERROR,
        [{"text": INTERRUPTED_TOOL_TEXT}],
    )
    roles = list(Message.objects.filter(conversation=conversation).order_by("position").values_list("role", flat=True))
    assert roles == ["user", "assistant", "user", "assistant"]
    assert_valid_history(load_messages(conversation.pk), ends_with_user=False)


@pytest.mark.django_db(transaction=True)
def test_a_connection_ends_a_dead_run_instead_of_joining_it(user, settings):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": LEASE_SECONDS}
    conversation = Conversation.objects.create(owner=user)
    run_id = start_dead_run(conversation, "Stream 400 tokens")

    messages, active = runlog.snapshot(conversation.pk, 50)

    assert active is None
    assert Run.objects.get(pk=run_id).status == Run.Status.INTERRUPTED
    assert [message["role"] for message in messages] == ["user", "assistant"]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_next_prompt_after_a_crash_runs_alone(user, settings):
    """The dead run's prompt is not applied again: the model sees it closed by the note, then the new prompt."""
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": LEASE_SECONDS, "OFFLINE_TOKENS_PER_SECOND": 0}
    conversation = await Conversation.objects.acreate(owner=user)
    dead = await sync_to_async(start_dead_run)(conversation, "Stream 400 tokens")
    agent = instant_agent()

    def prepare() -> Agent:
        # As the consumer does: the stored history, read in the hop that stores the run.
        agent.messages = load_messages(conversation.pk)
        return agent

    MODEL_CALLS.clear()
    _, frames = await execute(agent, conversation, "Calculate 3+3", prepare)

    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert (await Run.objects.aget(pk=dead)).status == Run.Status.INTERRUPTED
    sent = MODEL_CALLS[0]
    assert [texts(message["content"]) for message in sent[:3]] == [
        "Stream 400 tokens",
        leases.DEAD_RUN_NOTE,
        "Calculate 3+3",
    ]
    answer = "".join(frame["data"] for frame in frames if frame["type"] == protocol.DATA)
    assert "6" in answer
    assert len(answer.split()) < 100  # the 400 tokens were not streamed again


### The lease while a run streams, and its text so far ###


async def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    """Poll a database condition until it holds (the state under test is only visible there)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await sync_to_async(condition)()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_streamed_text_is_saved_while_it_streams_and_the_lease_renewed(user, settings):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 0.4, "PARTIAL_SAVE_SECONDS": 0.1}
    conversation = await Conversation.objects.acreate(owner=user)
    run, frames, task = start(paced_agent(100), conversation, "Stream 200 tokens")

    def draft() -> Message | None:
        return Message.objects.filter(conversation=conversation, role="assistant", partial=True).first()

    saved = await wait_for(draft)
    streamed = "".join(frame["data"] for frame in frames if frame["type"] == protocol.DATA)
    assert texts(saved.content) and streamed.startswith(texts(saved.content))
    started = await Run.objects.aget(pk=run.run_id)
    renewed = await wait_for(lambda: Run.objects.filter(pk=run.run_id, heartbeat_at__gt=started.heartbeat_at).exists())
    assert renewed
    assert await task == protocol.STATUS_COMPLETED
    rows = [row async for row in Message.objects.filter(conversation=conversation).order_by("position")]
    assert [(row.role, row.partial) for row in rows] == [("user", False), ("assistant", False)]
    assert len(texts(rows[-1].content).split()) == 200


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_run_whose_lease_another_process_ended_stops_and_fails(user, settings):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 0.4, "PARTIAL_SAVE_SECONDS": 0.1}
    conversation = await Conversation.objects.acreate(owner=user)
    run, frames, task = start(paced_agent(50), conversation, "Stream 400 tokens")
    await wait_for(lambda: Run.objects.filter(pk=run.run_id).exists())
    await Run.objects.filter(pk=run.run_id).aupdate(status=Run.Status.INTERRUPTED)

    assert await asyncio.wait_for(task, 10) == protocol.STATUS_FAILED
    errors = [frame for frame in frames if frame["type"] == protocol.ERROR]
    assert [error["code"] for error in errors] == [protocol.ERR_STORAGE_FAILED]
    assert frames[-1]["type"] == protocol.RUN_FINISHED and frames[-1]["status"] == protocol.STATUS_FAILED
    assert (await Run.objects.aget(pk=run.run_id)).status == Run.Status.INTERRUPTED


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_statements_of_a_long_run_follow_time_not_tokens(user, settings):
    """Saving text as it streams costs one write per PARTIAL_SAVE_SECONDS, whatever the number of tokens."""
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 600, "PARTIAL_SAVE_SECONDS": 0.25}
    conversation = await Conversation.objects.acreate(owner=user)
    writes: list[str] = []
    execute_sql = CursorWrapper.execute

    def counting(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        if sql.lstrip().upper().startswith("UPDATE") and "agentapp_message" in sql:
            writes.append(sql)
        return execute_sql(self, sql, params)

    CursorWrapper.execute = counting
    try:
        run, frames = await execute(paced_agent(400), conversation, "Stream 400 tokens")
    finally:
        CursorWrapper.execute = execute_sql
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    seconds = (await Run.objects.aget(pk=run.run_id)).latency_ms / 1000
    assert len(writes) <= seconds / 0.25 + 2


### Writes that must not be half done ###


@pytest.mark.django_db(transaction=True)
def test_a_tool_result_message_is_never_stored_without_its_rows(user, monkeypatch):
    """A crash between the message and its ToolResult rows left a result no repair would ever add a row for."""
    conversation = Conversation.objects.create(owner=user)
    run_id = str(Run._meta.get_field("id").default())
    create_run(conversation.pk, run_id, user.pk, "Calculate 2+2")
    result = {"toolResult": {"toolUseId": "t1", "status": "success", "content": [{"text": "4"}]}}

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the process died here")

    monkeypatch.setattr(ToolResult.objects, "bulk_create", crash)
    with pytest.raises(RuntimeError):
        write_message(conversation.pk, run_id, 1, {"role": "user", "content": [result]}, False, {})
    assert not Message.objects.filter(conversation=conversation, position=1).exists()


@pytest.mark.django_db(transaction=True)
def test_approval_answers_with_unstorable_text_are_stored(user):
    conversation = Conversation.objects.create(owner=user)
    paused = str(Run._meta.get_field("id").default())
    create_run(conversation.pk, paused, user.pk, "Calculate 2+2")
    Run.objects.filter(pk=paused).update(status=Run.Status.AWAITING_APPROVAL)
    answers = {"i1": {"decision": "deny", "text": "no\u0000way \ud800", "user": "ada"}}

    create_run(
        conversation.pk, str(Run._meta.get_field("id").default()), user.pk, "", resume_of=paused, decisions=answers
    )

    assert Run.objects.get(pk=paused).decisions == {
        "i1": {"decision": "deny", "text": "no\ufffdway \ufffd", "user": "ada"}
    }
