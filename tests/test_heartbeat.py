"""The process's one ticker: a tick is one database hop that renews every live run's lease and saves its text."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.contrib.auth import get_user_model
from django.db.backends.utils import CursorWrapper

from agentapp import heartbeat, leases, protocol, recorder
from agentapp.history import load_messages
from agentapp.models import Conversation, Message, Run
from agentapp.recorder import create_run
from agentapp.runner import AgentRun
from tests.test_crash_recovery import paced_agent, start, texts, wait_for

RENEWAL_SQL = 'UPDATE "agentapp_run" SET "heartbeat_at"'


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], list[str]]]:
    """The run ids renewed and the run ids whose text was saved, of every hop of the ticker."""
    seen: list[tuple[list[str], list[str]]] = []
    hop = heartbeat._hop

    def recording(run_ids: list[str], writes: dict[str, Any]) -> tuple[set[str], set[str]]:
        seen.append((sorted(run_ids), sorted(writes)))
        return hop(run_ids, writes)

    monkeypatch.setattr(heartbeat, "_hop", recording)
    return seen


@pytest.fixture
def renewals() -> Iterator[list[str]]:
    """Every statement that renewed leases, from any thread."""
    found: list[str] = []
    execute = CursorWrapper.execute

    def counting(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        if sql.startswith(RENEWAL_SQL):
            found.append(sql)
        return execute(self, sql, params)

    CursorWrapper.execute = counting
    try:
        yield found
    finally:
        CursorWrapper.execute = execute


async def start_runs(owner: Any, count: int, prompt: str, tokens_per_second: float) -> list[tuple[AgentRun, list, Any]]:
    """Start ``count`` paced runs of ``prompt``, each in a conversation of its own, once all are stored."""
    runs = []
    for _ in range(count):
        conversation = await Conversation.objects.acreate(owner=owner)
        runs.append(start(paced_agent(tokens_per_second), conversation, prompt))
    await wait_for(lambda: Run.objects.filter(pk__in=[run.run_id for run, _, _ in runs]).count() == count)
    return runs


def storage_errors(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == protocol.ERROR]


### Lifecycle ###


class Member:
    """A stand-in for a run: counts its ticks, never has text to save."""

    def __init__(self, run_id: str, ticks: int) -> None:
        self.run_id = run_id
        self.ticks = 0
        self.ticked = asyncio.Event()
        self._wanted = ticks

    def beat(self, done: asyncio.Event, renewing: bool) -> None:
        self.ticks += 1
        if self.ticks >= self._wanted:
            self.ticked.set()

    def beaten(self, lost: bool, failed: bool) -> None:
        raise AssertionError("no hop was due")  # logged by the ticker, which goes on: the test checks ``hops``


def test_the_ticker_runs_while_a_run_is_registered_and_each_loop_has_its_own(settings, hops):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 600, "PARTIAL_SAVE_SECONDS": 0.01}

    async def scenario() -> heartbeat.Ticker:
        ticker = heartbeat.ticker()
        assert ticker.task is None and ticker.members == {}
        first, second = Member("a", 3), Member("b", 2)
        heartbeat.register(first)
        task = ticker.task
        assert task is not None
        heartbeat.register(second)
        assert ticker.task is task  # one task for every run of the loop
        await asyncio.wait_for(asyncio.gather(first.ticked.wait(), second.ticked.wait()), 10)
        heartbeat.unregister(first)
        assert ticker.task is task
        heartbeat.unregister(second)
        assert ticker.task is None  # no task while no run is left
        await asyncio.gather(task, return_exceptions=True)
        assert task.done()
        third = Member("c", 1)
        heartbeat.register(third)
        assert ticker.task is not None and ticker.task is not task
        await asyncio.wait_for(third.ticked.wait(), 10)
        heartbeat.unregister(third)
        return ticker

    first_loop = asyncio.run(scenario())
    second_loop = asyncio.run(scenario())
    assert first_loop is not second_loop
    assert hops == []  # nothing to save and no lease due: a tick costs no hop


### One hop, one statement, for every run ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_one_hop_renews_every_live_run_in_one_statement_and_saves_their_text(user, settings, hops, renewals):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 0.4, "PARTIAL_SAVE_SECONDS": 0.1}
    runs = await start_runs(user, 4, "Stream 200 tokens", 100)
    ids = sorted(run.run_id for run, _, _ in runs)

    statuses = await asyncio.wait_for(asyncio.gather(*(task for _, _, task in runs)), 30)

    assert statuses == [protocol.STATUS_COMPLETED] * 4
    assert (ids, ids) in hops  # one hop renewed all four and saved the text of all four
    renewing = [run_ids for run_ids, _ in hops if run_ids]
    assert len(renewals) == len(renewing)  # one UPDATE per hop, whatever the number of runs
    assert max(len(run_ids) for run_ids in renewing) == 4
    ticker = heartbeat.ticker()
    assert ticker.members == {} and ticker.task is None
    for run, _, _ in runs:
        rows = [row async for row in Message.objects.filter(run_id=run.run_id).order_by("position")]
        assert [(row.role, row.partial) for row in rows] == [("user", False), ("assistant", False)]
        assert len(texts(rows[-1].content).split()) == 200


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_frequent_ticks_while_tool_calls_and_answers_complete_leave_exactly_the_messages(user, settings):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 600, "PARTIAL_SAVE_SECONDS": 0.02}
    runs = await start_runs(user, 4, "Calculate 15 * 23 and then add 100", 30)

    statuses = await asyncio.wait_for(asyncio.gather(*(task for _, _, task in runs)), 60)

    assert statuses == [protocol.STATUS_COMPLETED] * 4
    for run, _, _ in runs:
        stored = await sync_to_async(load_messages)(run.conversation_id)
        assert stored == [{"role": message["role"], "content": message["content"]} for message in run.agent.messages]
        assert not await Message.objects.filter(run_id=run.run_id, partial=True).aexists()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_message_waits_for_the_tick_that_saves_its_text_even_from_another_thread(user, settings, monkeypatch):
    """The run's writes go to a thread of their own (a thread-sensitive context), the ticker's to Channels' thread:
    the complete message, which replaces the saved text, is written only once that save ended."""
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 600, "PARTIAL_SAVE_SECONDS": 600}  # ticks only when the test says
    entered, release = threading.Event(), threading.Event()
    hop = heartbeat._hop

    def held(run_ids: list[str], writes: dict[str, Any]) -> tuple[set[str], set[str]]:
        entered.set()
        assert release.wait(10)
        return hop(run_ids, writes)

    monkeypatch.setattr(heartbeat, "_hop", held)
    conversation = await Conversation.objects.acreate(owner=user)
    run_id = str(Run._meta.get_field("id").default())
    async with ThreadSensitiveContext():
        run = recorder.RunRecorder(conversation.pk, run_id, user.pk, "Say hello")
        await run.start()
        run.note({"type": "data", "data": "Hello "})
        tick = asyncio.create_task(heartbeat.ticker().tick(), context=contextvars.Context())  # as the ticker's own
        assert await asyncio.to_thread(entered.wait, 10)  # the text is being saved, in the ticker's hop
        run.note({"type": "data", "data": "world."})
        run.added({"role": "assistant", "content": [{"text": "Hello world."}]})
        finished = asyncio.create_task(run.finish({"status": protocol.STATUS_COMPLETED}))
        done, _ = await asyncio.wait([finished], timeout=0.3)
        assert not done  # the message waits for the save it replaces
        release.set()
        await asyncio.wait_for(asyncio.gather(tick, finished), 10)

    rows = [row async for row in Message.objects.filter(conversation=conversation).order_by("position")]
    assert [(row.role, texts(row.content), row.partial) for row in rows] == [
        ("user", "Say hello", False),
        ("assistant", "Hello world.", False),
    ]
    assert (await Run.objects.aget(pk=run_id)).status == Run.Status.COMPLETED
    assert run.failed_writes == 0


### Leases lost and writes failed ###


@pytest.mark.django_db(transaction=True)
def test_renew_all_renews_running_runs_and_names_those_ended_elsewhere(user):
    ids = []
    for _ in range(3):
        conversation = Conversation.objects.create(owner=user)
        ids.append(str(Run._meta.get_field("id").default()))
        create_run(conversation.pk, ids[-1], user.pk, "Stream 10 tokens")
    Run.objects.filter(pk=ids[1]).update(status=Run.Status.INTERRUPTED)
    before = dict(Run.objects.values_list("pk", "heartbeat_at"))

    assert leases.renew_all(ids) == {ids[1]}
    assert leases.renew_all([ids[0], ids[2]]) == set()

    after = dict(Run.objects.values_list("pk", "heartbeat_at"))
    assert [after[pk] > before[pk] for pk in before] == [str(pk) != ids[1] for pk in before]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_only_the_run_whose_lease_another_process_ended_fails(user, settings):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 0.4, "PARTIAL_SAVE_SECONDS": 0.1}
    runs = await start_runs(user, 3, "Stream 150 tokens", 100)
    (lost, lost_frames, _), *others = runs
    await Run.objects.filter(pk=lost.run_id).aupdate(status=Run.Status.INTERRUPTED)

    statuses = await asyncio.wait_for(asyncio.gather(*(task for _, _, task in runs)), 30)

    assert statuses == [protocol.STATUS_FAILED, protocol.STATUS_COMPLETED, protocol.STATUS_COMPLETED]
    assert [error["code"] for error in storage_errors(lost_frames)] == [protocol.ERR_STORAGE_FAILED]
    assert (await Run.objects.aget(pk=lost.run_id)).status == Run.Status.INTERRUPTED
    assert all(not storage_errors(frames) for _, frames, _ in others)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_renewal_that_fails_fails_every_run_it_held(user, settings, monkeypatch):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 0.4, "PARTIAL_SAVE_SECONDS": 0.1}
    failing = threading.Event()

    def renew_all(run_ids: Any) -> set[str]:
        failing.set()
        raise RuntimeError("the database went away")

    monkeypatch.setattr(leases, "renew_all", renew_all)
    runs = await start_runs(user, 2, "Stream 400 tokens", 50)

    statuses = await asyncio.wait_for(asyncio.gather(*(task for _, _, task in runs)), 30)

    assert failing.is_set()
    assert statuses == [protocol.STATUS_FAILED] * 2
    for run, frames, _ in runs:
        assert [error["code"] for error in storage_errors(frames)] == [protocol.ERR_STORAGE_FAILED]
        assert frames[-1]["type"] == protocol.RUN_FINISHED and frames[-1]["status"] == protocol.STATUS_FAILED
        assert (await Run.objects.aget(pk=run.run_id)).status == Run.Status.FAILED


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_text_save_that_fails_fails_only_its_run(user, settings, monkeypatch):
    settings.AGENTAPP = {"RUN_LEASE_SECONDS": 600, "PARTIAL_SAVE_SECONDS": 0.1}
    doomed: list[str] = []
    write_message = recorder.write_message

    def failing_for_one(conversation_id: Any, run_id: Any, *args: Any, **kwargs: Any) -> None:
        if str(run_id) in doomed:
            raise RuntimeError("the disk is full")
        write_message(conversation_id, run_id, *args, **kwargs)

    monkeypatch.setattr(recorder, "write_message", failing_for_one)
    runs = await start_runs(user, 2, "Stream 150 tokens", 100)
    (failed, failed_frames, _), (fine, fine_frames, _) = runs
    doomed.append(failed.run_id)  # its prompt is stored: what fails is the text saved while it streams

    statuses = await asyncio.wait_for(asyncio.gather(*(task for _, _, task in runs)), 30)

    assert statuses == [protocol.STATUS_FAILED, protocol.STATUS_COMPLETED]
    assert [error["code"] for error in storage_errors(failed_frames)] == [protocol.ERR_STORAGE_FAILED]
    assert (await Run.objects.aget(pk=failed.run_id)).status == Run.Status.FAILED
    assert not storage_errors(fine_frames)
    assert (await Run.objects.aget(pk=fine.run_id)).status == Run.Status.COMPLETED
