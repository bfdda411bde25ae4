"""Fault injection on queued prompts and worker runs: deletes, cancels by other roles, bad ``if_busy``, approvals,
full queues, broken agent factories, malformed channel messages, lapsed leases and quotas through the queue.

Most tests set ``WORKER_CHANNEL`` with no worker listening, so a prompt stays queued for as long as the test needs;
those that need a worker run a Channels worker in this process on the in-memory layer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from channels.layers import channel_layers, get_channel_layer
from channels.routing import ChannelNameRouter
from channels.worker import Worker
from django.test import Client as HttpClient
from django.utils import timezone

from agentapp import attachments, protocol, queueing, registry
from agentapp.models import Conversation, Run
from agentapp.recorder import RateLimited, cancel_approval, create_run
from agentapp.routing import channel_routes
from agentapp.workers import WAKE_MESSAGE_TYPE, RunWorkerConsumer
from tests import attachment_files as files
from tests.wsclient import Client

CHANNEL = "agentapp.runs"
LONG = "Stream 3000 tokens"
MEMORY = {"default": {"BACKEND": "agentapp.layers.InMemoryChannelLayer"}}


def configure(settings: Any, **values: Any) -> None:
    """Merge ``values`` into ``AGENTAPP`` over a paced offline model (a long run lasts seconds)."""
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 600, **values}


def broken_factory(conversation: Any, user: Any) -> Any:
    """An agent factory that always fails, as one with a bad API key or a missing model does."""
    raise RuntimeError("the model provider is down")


@pytest.fixture
def memory(settings: Any) -> Any:
    """The in-memory channel layer, fresh for the test."""
    settings.CHANNEL_LAYERS = MEMORY
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def unserved(settings: Any, memory: Any) -> None:
    """Workers run prompts (``WORKER_CHANNEL``) but none listens: every prompt stays queued."""
    configure(settings, WORKER_CHANNEL=CHANNEL)


async def until(client: Client, check: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Frames up to and including the first that ``check`` accepts."""
    frames = []
    while True:
        frame = await client.receive()
        frames.append(frame)
        if check(frame):
            return frames


def finished(run_id: str) -> Callable[[dict[str, Any]], bool]:
    """A check for the ``run_finished`` frame of ``run_id``."""
    return lambda frame: frame["type"] == "run_finished" and frame["run_id"] == run_id


def run_status(run_id: str) -> str:
    """The stored status of a run."""
    return Run.objects.get(pk=run_id).status


async def queue_one(client: Client, text: str = "Say hi") -> tuple[str, str]:
    """Open a fresh conversation on ``client``, queue one prompt in it; return the conversation and run ids."""
    hello = await client.hello()
    await client.prompt(text)
    queued = (await client.until("run_queued"))[-1]
    return hello["conversation_id"], queued["run_id"]


def paused_run(user: Any) -> Run:
    """A new conversation of ``user`` whose run waits for the approval of one tool call (``i1``)."""
    conversation = Conversation.objects.create(owner=user, title="t")
    return Run.objects.create(
        conversation=conversation,
        user=user,
        prompt="Calculate 2+2",
        status="awaiting_approval",
        started_at=timezone.now(),
        interrupts=[{"id": "i1"}],
        interrupt_state={"activated": True},
    )


def answer(paused: Run, decision: str = "deny") -> queueing.Submitted:
    """Queue the answer to ``paused``'s approval, as a web process with workers does."""
    responses = {"i1": {"decision": decision}}
    return queueing.enqueue(
        paused.conversation_id, paused.user_id, "", "enqueue", True, "ada", (str(paused.pk), responses)
    )


### Cancels of queued runs by each role ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_viewer_cannot_cancel_a_queued_run_and_a_member_can(unserved, people, shared) -> None:
    """A viewer's cancel of a queued run is refused ``read_only`` and leaves it queued; a member's takes it out."""
    path = f"/ws/agent/{shared.pk}/"
    owner, viewer, member = Client(path, user=people["owner"]), Client(path, user=people["vera"]), None
    await owner.hello()
    await viewer.hello()
    await owner.prompt("Say hi")
    run_id = (await owner.until("run_queued"))[-1]["run_id"]
    await viewer.until("run_queued")
    await viewer.send({"type": "cancel", "run_id": run_id})
    assert (await viewer.until("error"))[-1]["code"] == protocol.ERR_READ_ONLY
    await viewer.send({"type": "cancel"})
    assert (await viewer.until("error"))[-1]["code"] == protocol.ERR_READ_ONLY
    assert await asyncio.to_thread(run_status, run_id) == "queued"
    member = Client(path, user=people["bob"])
    hello = await member.hello()
    assert hello["queued"] == [{"run_id": run_id, "prompt": "Say hi"}]
    await member.send({"type": "cancel", "run_id": run_id})
    assert (await member.until("run_dequeued"))[-1]["reason"] == "cancelled"
    assert (await viewer.until("run_dequeued"))[-1]["run_id"] == run_id
    run = await Run.objects.aget(pk=run_id)
    assert (run.status, run.decisions) == ("cancelled", {"cancelled_by": "bob"})
    for client in (owner, viewer, member):
        await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_stranger_cannot_open_nor_cancel_a_queued_run(unserved, people, shared) -> None:
    """A stranger is refused the conversation, and a cancel of its queued run from their own conversation fails."""
    owner = Client(f"/ws/agent/{shared.pk}/", user=people["owner"])
    await owner.hello()
    await owner.prompt("Say hi")
    run_id = (await owner.until("run_queued"))[-1]["run_id"]
    intruder = Client(f"/ws/agent/{shared.pk}/", user=people["eve"])
    connected, _ = await intruder.connect()
    assert connected and (await intruder.receive())["code"] == protocol.ERR_FORBIDDEN
    await intruder.close()
    theirs = Client(user=people["eve"])
    await theirs.hello()
    await theirs.send({"type": "cancel", "run_id": run_id})
    assert (await theirs.until("error"))[-1]["code"] == protocol.ERR_NO_ACTIVE_RUN
    assert await asyncio.to_thread(run_status, run_id) == "queued"
    await theirs.close()
    await owner.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_cancel_without_run_id_with_only_queued_prompts_is_no_active_run(unserved, ada) -> None:
    """With nothing running, a plain ``cancel`` says ``no_active_run`` and leaves the queued prompt (protocol.md)."""
    client = Client(user=ada)
    conversation_id, run_id = await queue_one(client)
    await client.cancel()
    error = (await client.until("error"))[-1]
    assert (error["code"], error["conversation_id"]) == (protocol.ERR_NO_ACTIVE_RUN, conversation_id)
    assert await asyncio.to_thread(run_status, run_id) == "queued"
    await client.close()


### if_busy and a full queue ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("if_busy", ["later", None, 1, True, ["enqueue"], {"enqueue": 1}, "ENQUEUE", " enqueue"])
async def test_an_invalid_if_busy_is_an_invalid_frame_and_stores_nothing(unserved, ada, if_busy: Any) -> None:
    """``if_busy`` that is not one of the three strings gets ``invalid_frame``, and no run row is written."""
    client = Client(user=ada)
    conversation_id, _ = await queue_one(client)
    await client.send({"type": "prompt", "prompt": "second", "if_busy": if_busy})
    error = await client.receive()
    assert (error["type"], error["code"]) == ("error", protocol.ERR_INVALID_FRAME)
    assert await Run.objects.filter(conversation_id=conversation_id).acount() == 1
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_with_workers_a_full_queue_refuses_and_reject_answers_busy(settings, unserved, ada) -> None:
    """With workers every prompt is queued: past ``MAX_QUEUED_RUNS`` an ``enqueue`` prompt gets ``queue_full`` and a
    ``reject`` one ``busy``, and neither stores a row."""
    configure(settings, MAX_QUEUED_RUNS=2)
    client = Client(user=ada)
    conversation_id, _ = await queue_one(client)
    await client.send({"type": "prompt", "prompt": "two", "if_busy": "enqueue"})
    assert (await client.until("run_queued"))[-1]["position"] == 1
    await client.send({"type": "prompt", "prompt": "three", "if_busy": "enqueue"})
    full = (await client.until("error"))[-1]
    assert full["code"] == protocol.ERR_QUEUE_FULL and "queued" in full["message"]
    await client.send({"type": "prompt", "prompt": "four", "if_busy": "reject"})
    assert (await client.until("error"))[-1]["code"] == protocol.ERR_BUSY
    assert await Run.objects.filter(conversation_id=conversation_id).acount() == 2
    await client.close()


### Deleting a conversation with queued or running runs ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_deleting_a_conversation_with_queued_runs_removes_them_and_tells_its_sockets(unserved, ada) -> None:
    """A delete while prompts wait for a worker succeeds (204), takes the queued rows with it, closes the sockets;
    a worker then rung for it finds nothing to claim."""
    client = Client(user=ada)
    conversation_id, run_id = await queue_one(client)

    def delete() -> int:
        http = HttpClient()
        http.force_login(ada)
        return http.delete(f"/api/conversations/{conversation_id}/").status_code

    assert await asyncio.to_thread(delete) == 204
    frames = await client.until("error")
    assert frames[-1]["code"] == "not_found"
    assert not await Run.objects.filter(pk=run_id).aexists()
    assert await asyncio.to_thread(queueing.claim_next, conversation_id, "worker") is None
    await client.close()


@pytest.mark.django_db(transaction=True)
def test_deleting_a_conversation_whose_run_a_live_worker_runs_is_busy(ada) -> None:
    """A delete while a worker's run holds a live lease gets 409 ``busy`` and deletes nothing (queued runs stay)."""
    conversation = Conversation.objects.create(owner=ada, title="t")
    now = timezone.now()
    Run.objects.create(
        conversation=conversation,
        user=ada,
        prompt="a",
        status="running",
        started_at=now,
        heartbeat_at=now,
        worker="specific.worker!1",
    )
    Run.objects.create(conversation=conversation, user=ada, prompt="b", status="queued", queued_at=now)
    http = HttpClient()
    http.force_login(ada)
    response = http.delete(f"/api/conversations/{conversation.pk}/")
    assert response.status_code == 409 and response.json()["error"] == protocol.ERR_BUSY
    assert Run.objects.filter(conversation=conversation).count() == 2


### Approvals and the queue ###


@pytest.fixture
def approvals(settings: Any, memory: Any) -> None:
    """The calculator needs approval; the offline model streams at full speed."""
    configure(settings, OFFLINE_TOKENS_PER_SECOND=0, APPROVAL_TOOLS=["calculator"])


async def pause(client: Client) -> tuple[str, str]:
    """Open a conversation and prompt a calculation that pauses for approval; return its id and the paused run's."""
    hello = await client.hello()
    await client.prompt("Calculate 2+2")
    frames = await client.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_AWAITING_APPROVAL
    return hello["conversation_id"], frames[-1]["run_id"]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_interrupt_while_paused_for_approval_clears_the_wait_then_runs(approvals, ada) -> None:
    """An ``interrupt`` prompt while a run awaits approval ends the wait (``interrupt_resolved``), then runs."""
    client = Client(user=ada)
    _, paused = await pause(client)
    await client.send({"type": "prompt", "prompt": "Say hi", "if_busy": "interrupt"})
    resolved = (await client.until("interrupt_resolved"))[-1]
    assert (resolved["run_id"], resolved["outcome"]) == (paused, "cancelled")
    frames = await client.until_finished()
    assert frames[-1]["status"] == "completed" and frames[-1]["run_id"] != paused
    assert await asyncio.to_thread(run_status, paused) == "cancelled"
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_with_workers_interrupt_while_paused_clears_the_wait_and_queues(settings, approvals, ada) -> None:
    """With workers the same ``interrupt`` prompt clears the wait and is queued for a worker; ``enqueue`` would get
    ``awaiting_approval``."""
    client = Client(user=ada)
    conversation_id, paused = await pause(client)
    configure(settings, WORKER_CHANNEL=CHANNEL)
    await client.send({"type": "prompt", "prompt": "Say hi", "if_busy": "enqueue"})
    assert (await client.until("error"))[-1]["code"] == protocol.ERR_AWAITING_APPROVAL
    await client.send({"type": "prompt", "prompt": "Say hi", "if_busy": "interrupt"})
    resolved = (await client.until("interrupt_resolved"))[-1]
    assert (resolved["run_id"], resolved["outcome"]) == (paused, "cancelled")
    queued = (await client.until("run_queued"))[-1]
    assert queued["position"] == 0
    rows = await asyncio.to_thread(
        lambda: sorted(Run.objects.filter(conversation_id=conversation_id).values_list("prompt", "status"))
    )
    assert rows == [("Calculate 2+2", "cancelled"), ("Say hi", "queued")]
    await client.close()


@pytest.mark.django_db(transaction=True)
def test_the_answer_to_an_approval_starts_before_a_prompt_queued_during_the_paused_run(ada) -> None:
    """A prompt queued (``enqueue``) while a worker's run went on, which then paused for approval, must not block the
    resume the answer queues: the resume is claimed first, else the conversation never runs again."""
    paused = paused_run(ada)
    conversation = paused.conversation
    now = timezone.now()
    earlier = Run.objects.create(
        conversation=conversation, user=ada, prompt="later", status="queued", queued_at=now - timedelta(seconds=5)
    )
    submitted = answer(paused, "approve")
    assert submitted.queued is not None
    claimed = queueing.claim_next(conversation.pk, "worker")
    assert claimed is not None, "nothing is claimed: the conversation is stuck behind its paused run"
    assert (claimed.run_id, claimed.resume_of) == (submitted.queued.run_id, str(paused.pk))
    assert Run.objects.get(pk=earlier.pk).status == "queued"


### Quotas through the queue ###


@pytest.mark.django_db(transaction=True)
def test_a_queued_run_refused_at_its_turn_does_not_count_against_the_rate_limit(ada) -> None:
    """A queued run refused when its turn came (``rate_limited``) never ran: it must not use up the user's
    ``RUNS_PER_USER_PER_MINUTE`` and lock them out longer."""
    conversation = Conversation.objects.create(owner=ada, title="t")
    now = timezone.now()
    Run.objects.create(conversation=conversation, user=ada, prompt="ran", status="completed", started_at=now)
    refused = Run.objects.create(conversation=conversation, user=ada, prompt="waited", status="queued", queued_at=now)
    claimed = queueing.claim_next(conversation.pk, "worker")
    assert claimed is not None and claimed.run_id == str(refused.pk)
    queueing.refuse(claimed.run_id, "Too many runs in the last minute; try again shortly.")
    try:
        create_run(conversation.pk, uuid.uuid4(), ada.pk, "now", runs_per_minute=2)
    except RateLimited:
        pytest.fail("a run that was refused and never ran counted against the rate limit")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_queued_run_started_on_open_respects_max_concurrent_runs(settings, memory, ada) -> None:
    """Without workers, a process at ``MAX_CONCURRENT_RUNS`` does not start a left-over queued run when its
    conversation is opened: it is refused ``server_busy`` (``run_dequeued``) instead of running past the limit."""
    configure(settings, MAX_CONCURRENT_RUNS=1)
    busy = Client(user=ada)
    await busy.hello()
    await busy.prompt(LONG)
    await busy.until("data")
    other = await Conversation.objects.acreate(owner=ada, title="y")
    left = await Run.objects.acreate(
        conversation=other, user=ada, prompt="Say hi", status="queued", queued_at=timezone.now()
    )
    opened = Client(f"/ws/agent/{other.pk}/", user=ada)
    await opened.hello()
    first = (await until(opened, lambda frame: frame.get("run_id") == str(left.pk)))[-1]
    assert (first["type"], first.get("code")) == ("run_dequeued", protocol.ERR_SERVER_BUSY)
    assert await asyncio.to_thread(run_status, str(left.pk)) == "failed"
    await busy.cancel()
    await busy.until_finished()
    await opened.close()
    await busy.close()


### A worker in this process ###


@pytest_asyncio.fixture
async def worker_factory(settings: Any, memory: Any) -> AsyncIterator[Callable[[bool], Any]]:
    """Start a Channels worker on ``WORKER_CHANNEL`` (woken or not); stopped, with its runs, at the end."""
    configure(settings, WORKER_CHANNEL=CHANNEL, WORKER_SWEEP_SECONDS=0.2, IF_BUSY="enqueue")
    started: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(wake: bool = True) -> Worker:
        layer = get_channel_layer()
        running = Worker(ChannelNameRouter(channel_routes()), [CHANNEL], layer)
        started.append((running, asyncio.create_task(running.handle())))
        if wake:
            await layer.send(CHANNEL, {"type": WAKE_MESSAGE_TYPE})
        return running

    yield start
    for running, task in started:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for instance in list(running.application_instances.values()):
            instance["future"].cancel()
    await asyncio.gather(*registry.tasks, return_exceptions=True)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_claimed_run_whose_agent_factory_raises_is_refused_and_the_queue_goes_on(
    settings, worker_factory, ada
) -> None:
    """A factory that raises on a worker ends each claimed run ``failed`` with ``run_dequeued`` ``run_failed`` (no
    traceback to the client), the next queued run gets its turn, and the conversation takes prompts again."""
    configure(settings, AGENT_FACTORY="tests.test_queue_faults.broken_factory")
    client = Client(user=ada)
    await client.hello()
    await client.prompt("one")
    first = (await client.until("run_queued"))[-1]["run_id"]
    await client.send({"type": "prompt", "prompt": "two", "if_busy": "enqueue"})
    second = (await client.until("run_queued"))[-1]["run_id"]
    await worker_factory()
    refusals = []
    while len(refusals) < 2:
        frame = (await client.until("run_dequeued"))[-1]
        refusals.append((frame["run_id"], frame["reason"], frame["code"], frame["message"]))
    message = "The agent could not be started."
    assert refusals == [(first, "refused", "run_failed", message), (second, "refused", "run_failed", message)]
    assert "Traceback" not in "".join(client.raw) and "provider is down" not in "".join(client.raw)
    for run_id in (first, second):
        run = await Run.objects.aget(pk=run_id)
        assert (run.status, run.error) == ("failed", message)
    configure(settings, AGENT_FACTORY="agentapp.agents.build_default_agent")
    await client.prompt("Say hi")
    third = (await client.until("run_queued"))[-1]["run_id"]
    assert (await until(client, finished(third)))[-1]["status"] == "completed"
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_queued_run_behind_a_dead_workers_run_starts_within_lease_and_sweep(
    settings, worker_factory, ada
) -> None:
    """A run whose worker died holds the conversation until its lease lapses: then a sweep ends it ``interrupted``
    (announced) and the queued run starts, within about ``RUN_LEASE_SECONDS`` + ``WORKER_SWEEP_SECONDS``."""
    lease, sweep = 1.0, 0.2
    configure(settings, RUN_LEASE_SECONDS=lease, WORKER_SWEEP_SECONDS=sweep)
    conversation = await Conversation.objects.acreate(owner=ada, title="t")
    now = timezone.now()
    dead = await Run.objects.acreate(
        conversation=conversation,
        user=ada,
        prompt="dead",
        status="running",
        started_at=now,
        heartbeat_at=now,
        worker="gone.worker!1",
    )
    waiting = await Run.objects.acreate(
        conversation=conversation, user=ada, prompt="Say hi", status="queued", queued_at=now
    )
    client = Client(f"/ws/agent/{conversation.pk}/", user=ada)
    hello = await client.hello()
    assert hello["queued"] == [{"run_id": str(waiting.pk), "prompt": "Say hi"}]
    loop = asyncio.get_running_loop()
    began = loop.time()
    await worker_factory()
    frames = await until(client, finished(str(waiting.pk)))
    elapsed = loop.time() - began
    ended = {frame["run_id"]: frame["status"] for frame in frames if frame["type"] == "run_finished"}
    assert ended == {str(dead.pk): "interrupted", str(waiting.pk): "completed"}
    assert elapsed < lease + sweep + 3.0
    assert await asyncio.to_thread(run_status, str(dead.pk)) == "interrupted"
    await client.close()


MALFORMED: list[dict[str, Any]] = [
    {"type": "agentapp.run"},
    {"type": "agentapp.run", "conversation_id": None},
    {"type": "agentapp.run", "conversation_id": 12},
    {"type": "agentapp.run", "conversation_id": {"a": 1}},
    {"type": "agentapp.run", "conversation_id": "not-a-uuid"},
    {"type": "agentapp.cancel"},
    {"type": "agentapp.cancel", "conversation_id": ["x"]},
    {"type": "agentapp.sync"},
    {"type": "agentapp.sync", "conversation_id": "c"},
    {"type": "agentapp.sync", "conversation_id": "c", "reply_to": "x", "run_id": "r"},
    {"type": "agentapp.sync", "conversation_id": ["c"], "reply_to": "x", "run_id": ["r"], "sync_id": 1, "after": "x"},
    {"type": "agentapp.bogus"},
]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("message", MALFORMED, ids=[str(index) for index in range(len(MALFORMED))])
async def test_the_worker_consumer_shrugs_off_a_malformed_message(settings, memory, message: dict[str, Any]) -> None:
    """Each handler of the worker's consumer ignores a message with missing keys or wrong types (a stale web process,
    a bug elsewhere): raising would end the consumer, and with it the channel its runs' cancels come to."""
    configure(settings, WORKER_CHANNEL=CHANNEL, WORKER_SWEEP_SECONDS=3600)
    consumer = RunWorkerConsumer()
    consumer.channel_layer = get_channel_layer()
    consumer.channel_name = await consumer.channel_layer.new_channel()
    try:
        await consumer.dispatch(message)
    finally:
        if consumer.sweeper is not None:
            consumer.sweeper.cancel()
            await asyncio.gather(consumer.sweeper, return_exceptions=True)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_malformed_message_does_not_stop_the_worker_taking_runs(settings, worker_factory, ada) -> None:
    """After a malformed ``agentapp.sync`` on the worker channel, the next doorbell is still answered and the run it
    starts can be cancelled: the consumer that got the bad message must not die with its queue and its channel."""
    client = Client(user=ada)
    _, run_id = await queue_one(client, LONG)
    configure(settings, WORKER_SWEEP_SECONDS=3600)
    layer = get_channel_layer()
    ring = await layer.receive(CHANNEL)  # the prompt's doorbell: it is rung again below, after the bad message
    assert ring["type"] == "agentapp.run"
    running = await worker_factory(False)
    await layer.send(CHANNEL, {"type": "agentapp.sync"})
    conversation_id = (await Run.objects.aget(pk=run_id)).conversation_id
    await layer.send(CHANNEL, {"type": "agentapp.run", "conversation_id": str(conversation_id)})
    try:
        await until(client, lambda frame: frame["type"] == "data" and frame["run_id"] == run_id)
    except TimeoutError:
        instance = running.application_instances[CHANNEL]["future"]
        pytest.fail(f"the worker took no run after a malformed message: its consumer ended with {instance!r}")
    await client.cancel()  # reaches the worker on the channel of the consumer that got the bad message
    assert (await until(client, finished(run_id)))[-1]["status"] == "cancelled"
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_with_a_worker_an_approval_answer_runs_though_a_prompt_was_queued_behind_the_paused_run(
    settings, worker_factory, ada
) -> None:
    """A prompt queued behind a run that then pauses for approval waits; the answer's resume runs first, then the
    prompt: the conversation is not stuck."""
    configure(settings, OFFLINE_TOKENS_PER_SECOND=0, APPROVAL_TOOLS=["calculator"])
    client = Client(user=ada)
    await client.hello()
    await client.prompt("Calculate 2+2")
    first = (await client.until("run_queued"))[-1]["run_id"]
    await client.send({"type": "prompt", "prompt": "Say hi", "if_busy": "enqueue"})
    second = (await client.until("run_queued"))[-1]["run_id"]
    await worker_factory()
    frames = await until(client, finished(first))
    assert frames[-1]["status"] == protocol.STATUS_AWAITING_APPROVAL
    [interrupt] = next(frame for frame in frames if frame["type"] == protocol.INTERRUPT)["interrupts"]
    await client.send({"type": "interrupt_response", "responses": {interrupt["id"]: {"decision": "approve"}}})
    try:
        resumed = await until(client, lambda frame: frame["type"] == "run_started")
    except TimeoutError:
        rows = await asyncio.to_thread(lambda: list(Run.objects.values_list("prompt", "status", "resumed_from_id")))
        pytest.fail(f"the answer's resume never started; the runs: {rows}")
    assert resumed[-1]["resumes"] == first
    assert (await client.until_finished())[-1]["status"] == "completed"
    assert (await until(client, finished(second)))[-1]["status"] == "completed"
    await client.close()


@pytest.mark.django_db(transaction=True)
def test_a_sweep_finds_an_approval_answer_whose_doorbell_was_lost(ada) -> None:
    """A queued resume (the answer to a paused run) whose message to the workers was lost is found by the sweep, as
    any queued run is: ``waiting_conversations`` lists its conversation."""
    paused = paused_run(ada)
    conversation = paused.conversation
    answer(paused)
    assert queueing.waiting_conversations(10) == [str(conversation.pk)]


@pytest.mark.django_db(transaction=True)
def test_a_cancel_of_the_wait_for_approval_takes_its_queued_answer_out_of_the_queue(ada) -> None:
    """A cancel after the answer was queued for a worker, before one took it: the answer's resume leaves the queue
    with the wait, rather than being claimed later and refused ``no_pending_approval`` as a stray failed run."""
    paused = paused_run(ada)
    conversation = paused.conversation
    answer(paused)
    assert cancel_approval(conversation.pk, "ada") is not None
    assert Run.objects.get(pk=paused.pk).status == "cancelled"
    assert not queueing.has_waiting(conversation.pk)
    assert queueing.claim_next(conversation.pk, "worker") is None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_with_a_worker_a_queued_prompt_whose_attachment_was_deleted_is_refused(
    settings, worker_factory, ada, tmp_path
) -> None:
    """An attachment deleted while its prompt waits for a worker: the worker refuses the run (``run_dequeued``
    ``unknown_attachment``), stores none of it in the conversation, and runs the next queued prompt."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    client = Client(user=ada)
    conversation_id, plain = await queue_one(client, "Hello")
    image = await asyncio.to_thread(
        lambda: attachments.store(Conversation.objects.get(pk=conversation_id), ada, "", "dot.png", files.png())
    )
    await client.send({"type": "prompt", "prompt": "Describe this", "attachments": [str(image.pk)]})
    with_file = (await client.until("run_queued"))[-1]["run_id"]
    await client.send({"type": "prompt", "prompt": "Say hi"})
    last = (await client.until("run_queued"))[-1]["run_id"]
    await asyncio.to_thread(image.delete)
    await worker_factory()
    frames = await until(client, finished(last))
    refused = [frame for frame in frames if frame["type"] == "run_dequeued"]
    assert [(frame["run_id"], frame["reason"], frame["code"]) for frame in refused] == [
        (with_file, "refused", "unknown_attachment")
    ]
    ends = {frame["run_id"]: frame["status"] for frame in frames if frame["type"] == "run_finished"}
    assert ends == {plain: "completed", last: "completed"}
    assert await asyncio.to_thread(run_status, with_file) == "failed"
    assert not await asyncio.to_thread(lambda: Run.objects.get(pk=with_file).messages.exists())
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_without_workers_a_cancel_that_ends_a_dead_run_starts_the_prompts_queued_behind_it(
    settings, memory, ada
) -> None:
    """Without workers, a run of a process that died holds prompts queued behind it; a cancel once its lease lapsed
    ends it ``interrupted`` and the queue must go on, not wait for the conversation to be opened again."""
    configure(settings, RUN_LEASE_SECONDS=1, IF_BUSY="enqueue")
    client = Client(user=ada)
    hello = await client.hello()
    await client.prompt("Hello")
    await client.until_finished()
    conversation_id = hello["conversation_id"]
    lapsed = timezone.now() - timedelta(seconds=5)
    dead = await Run.objects.acreate(
        conversation_id=conversation_id,
        user=ada,
        prompt="dead",
        status="running",
        started_at=lapsed,
        heartbeat_at=lapsed,
    )
    waiting = await Run.objects.acreate(
        conversation_id=conversation_id, user=ada, prompt="Say hi", status="queued", queued_at=lapsed
    )
    await client.cancel()
    ended = (await until(client, finished(str(dead.pk))))[-1]
    assert ended["status"] == "interrupted"
    try:
        frames = await until(client, finished(str(waiting.pk)))
    except TimeoutError:
        pytest.fail(f"the queued run is still {await asyncio.to_thread(run_status, str(waiting.pk))!r}")
    assert frames[-1]["status"] == "completed"
    await client.close()


@pytest.mark.django_db(transaction=True)
def test_an_approval_answer_is_not_refused_by_a_full_queue(settings, ada) -> None:
    """An answer to a pending approval is not a new prompt: with workers it is queued even when the conversation holds
    ``MAX_QUEUED_RUNS`` prompts, else the paused run can only be cancelled."""
    configure(settings, MAX_QUEUED_RUNS=1)
    paused = paused_run(ada)
    conversation = paused.conversation
    Run.objects.create(conversation=conversation, user=ada, prompt="later", status="queued", queued_at=timezone.now())
    try:
        submitted = answer(paused, "approve")
    except queueing.QueueFull:
        pytest.fail("the answer to the approval was refused queue_full")
    assert submitted.queued is not None


@pytest.mark.django_db(transaction=True)
def test_with_workers_a_queue_of_zero_still_takes_a_prompt_of_an_idle_conversation(settings, ada) -> None:
    """``MAX_QUEUED_RUNS`` bounds the prompts waiting behind a run: with workers an idle conversation's prompt is
    queued only to be claimed, so a limit of 0 refuses the second prompt, not the first."""
    configure(settings, MAX_QUEUED_RUNS=0)
    conversation = Conversation.objects.create(owner=ada, title="t")
    first = queueing.enqueue(conversation.pk, ada.pk, "one", "enqueue", True)
    assert first.queued is not None and first.queued.position == 0
    with pytest.raises(queueing.QueueFull):
        queueing.enqueue(conversation.pk, ada.pk, "two", "enqueue", True)


@pytest.mark.parametrize("policy", ["later", "ENQUEUE", None])
def test_an_unknown_if_busy_setting_is_refused_at_start(settings, policy: Any) -> None:
    """A misspelt ``IF_BUSY`` is a configuration error, not a silent ``enqueue``."""
    from django.core.exceptions import ImproperlyConfigured

    from agentapp.conf import app_settings

    settings.AGENTAPP = {"IF_BUSY": policy}
    with pytest.raises(ImproperlyConfigured, match="IF_BUSY"):
        app_settings.IF_BUSY  # noqa: B018
