"""Queued prompts (double texting) on both layers: reject, enqueue, interrupt, cancel a queued prompt, a full queue;
and runs on a Channels worker in this process: the asker's socket closes and the run goes on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from channels.layers import get_channel_layer
from channels.routing import ChannelNameRouter
from channels.worker import Worker
from django.utils import timezone

from agentapp import attachments, registry
from agentapp.models import Conversation, Message, Run
from agentapp.routing import channel_routes
from agentapp.workers import WAKE_MESSAGE_TYPE
from tests import attachment_files as files
from tests.wsclient import Client, streamed_text

LONG = "Stream 300 tokens"


def texting(settings: Any, **values: Any) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 600, **values}


async def open_pair(user: Any) -> tuple[Client, Client, str]:
    asker = Client(user=user)
    hello = await asker.hello()
    await asker.prompt("Hello")  # stores the conversation, so a second connection can open it
    await asker.until_finished()
    conversation_id = hello["conversation_id"]
    watcher = Client(f"/ws/agent/{conversation_id}/", user=user)
    await watcher.hello()
    return asker, watcher, conversation_id


async def prompt(client: Client, text: str, if_busy: str | None = None) -> None:
    frame = {"type": "prompt", "prompt": text}
    if if_busy is not None:
        frame["if_busy"] = if_busy
    await client.send(frame)


async def frames_until(client: Client, check: Any) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await client.receive()
        frames.append(frame)
        if check(frame):
            return frames


def finished(run_id: str) -> Any:
    return lambda frame: frame["type"] == "run_finished" and frame["run_id"] == run_id


def statuses(conversation_id: str) -> list[tuple[str, str]]:
    return [(run.prompt, run.status) for run in Run.objects.filter(conversation_id=conversation_id)]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_reject_answers_busy_and_stores_nothing(layer, settings, ada) -> None:
    texting(settings)
    asker, watcher, conversation_id = await open_pair(ada)
    await prompt(asker, LONG)
    await asker.until("run_started")
    await prompt(asker, "second", "reject")
    refused = await frames_until(asker, lambda frame: frame["type"] == "error")
    assert refused[-1]["code"] == "busy"
    await frames_until(asker, lambda frame: frame["type"] == "run_finished")
    assert [prompt for prompt, _ in await asyncio.to_thread(statuses, conversation_id)] == ["Hello", LONG]
    await asker.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_enqueue_runs_the_prompt_after_the_run_and_every_connection_sees_it(layer, settings, ada) -> None:
    texting(settings, IF_BUSY="enqueue")
    asker, watcher, conversation_id = await open_pair(ada)
    await prompt(asker, LONG)
    first = (await asker.until("run_started"))[-1]["run_id"]
    await prompt(asker, "Calculate 6*7")  # the setting says enqueue
    queued = (await asker.until("run_queued"))[-1]
    assert queued["position"] == 0 and queued["prompt"] == "Calculate 6*7"
    # A connection opened now lists it in its conversation frame.
    late = Client(f"/ws/agent/{conversation_id}/", user=ada)
    late_hello = await late.hello()
    assert late_hello["queued"] == [{"run_id": queued["run_id"], "prompt": "Calculate 6*7"}]
    await late.close()
    watched = await frames_until(watcher, finished(queued["run_id"]))
    assert [frame["run_id"] for frame in watched if frame["type"] == "run_queued"] == [queued["run_id"]]
    starts = [frame["run_id"] for frame in watched if frame["type"] == "run_started"]
    assert starts == [first, queued["run_id"]]
    asked = await frames_until(asker, finished(queued["run_id"]))
    second = [frame for frame in asked if frame.get("run_id") == queued["run_id"]]
    assert second[0]["type"] == "run_started" and second[-1]["status"] == "completed"
    assert "42" in streamed_text(second)
    rows = await asyncio.to_thread(statuses, conversation_id)
    assert rows == [("Hello", "completed"), (LONG, "completed"), ("Calculate 6*7", "completed")]
    users = await asyncio.to_thread(
        lambda: list(
            Message.objects.filter(conversation_id=conversation_id, role="user")
            .order_by("position")
            .values_list("content", flat=True)
        )
    )
    assert [content[0].get("text") for content in users if "text" in content[0]][-2:] == [LONG, "Calculate 6*7"]
    await asker.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_interrupt_cancels_the_run_then_runs_the_prompt(layer, settings, ada) -> None:
    texting(settings)
    asker, watcher, conversation_id = await open_pair(ada)
    await prompt(asker, LONG)
    first = (await asker.until("run_started"))[-1]["run_id"]
    await asker.until("data")
    await prompt(watcher, "Say hi", "interrupt")
    queued = (await watcher.until("run_queued"))[-1]
    frames = await frames_until(asker, finished(queued["run_id"]))
    ends = {frame["run_id"]: frame["status"] for frame in frames if frame["type"] == "run_finished"}
    assert ends == {first: "cancelled", queued["run_id"]: "completed"}
    rows = await asyncio.to_thread(statuses, conversation_id)
    assert rows[1:] == [(LONG, "cancelled"), ("Say hi", "completed")]
    await asker.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_queued_prompt_is_cancelled_by_its_id_and_a_full_queue_refuses(layer, settings, ada) -> None:
    texting(settings, MAX_QUEUED_RUNS=2)
    asker, watcher, conversation_id = await open_pair(ada)
    await prompt(asker, LONG)
    await asker.until("run_started")
    ids = []
    for text in ("one", "two"):
        await prompt(asker, text, "enqueue")
        ids.append((await asker.until("run_queued"))[-1]["run_id"])
    await prompt(asker, "three", "enqueue")
    assert (await asker.until("error"))[-1]["code"] == "queue_full"
    await asker.send({"type": "cancel", "run_id": ids[1]})
    dequeued = (await asker.until("run_dequeued"))[-1]
    assert dequeued["run_id"] == ids[1] and dequeued["reason"] == "cancelled"
    seen = (await watcher.until("run_dequeued"))[-1]
    assert seen["run_id"] == ids[1]
    await asker.send({"type": "cancel", "run_id": ids[1]})  # not queued any more
    assert (await asker.until("error"))[-1]["code"] == "no_active_run"
    await frames_until(asker, finished(ids[0]))
    rows = await asyncio.to_thread(statuses, conversation_id)
    assert sorted(rows[1:]) == sorted([(LONG, "completed"), ("one", "completed"), ("two", "cancelled")])
    await asker.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_stranger_cannot_cancel_a_queued_prompt_of_another_conversation(layer, settings, ada) -> None:
    texting(settings)
    asker, watcher, conversation_id = await open_pair(ada)
    await prompt(asker, LONG)
    await asker.until("run_started")
    await prompt(asker, "later", "enqueue")
    queued = (await asker.until("run_queued"))[-1]
    other = Client(user=ada)
    await other.hello()
    await other.prompt("Hello")
    await other.until_finished()
    await other.send({"type": "cancel", "run_id": queued["run_id"]})
    assert (await other.until("error"))[-1]["code"] == "no_active_run"
    await frames_until(asker, finished(queued["run_id"]))
    assert (await asyncio.to_thread(statuses, conversation_id))[-1] == ("later", "completed")
    await other.close()
    await asker.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_bad_if_busy_or_queued_run_id_is_an_invalid_frame(settings, ada) -> None:
    client = Client(user=ada)
    await client.hello()
    await client.send({"type": "prompt", "prompt": "x", "if_busy": "later"})
    assert (await client.receive())["code"] == "invalid_frame"
    await client.send({"type": "cancel", "run_id": "not-a-uuid"})
    assert (await client.receive())["code"] == "invalid_frame"
    await client.close()


### A worker in this process ###


@pytest_asyncio.fixture
async def worker(settings: Any) -> AsyncIterator[Worker]:
    """A Channels worker on the ``WORKER_CHANNEL`` channel of the in-memory layer, serving agentapp's routes."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    texting(settings, WORKER_CHANNEL="agentapp.runs", WORKER_SWEEP_SECONDS=0.2, IF_BUSY="enqueue")
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    layer = get_channel_layer()
    running = Worker(ChannelNameRouter(channel_routes()), ["agentapp.runs"], layer)
    task = asyncio.create_task(running.handle())
    await layer.send("agentapp.runs", {"type": WAKE_MESSAGE_TYPE})
    yield running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for instance in list(running.application_instances.values()):
        instance["future"].cancel()
    await asyncio.gather(*registry.tasks, return_exceptions=True)
    channel_layers.backends.clear()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_with_a_worker_the_run_outlives_the_askers_socket(worker, ada) -> None:
    asker = Client(user=ada)
    hello = await asker.hello()
    conversation_id = hello["conversation_id"]
    await asker.prompt(LONG)
    queued = (await asker.until("run_queued"))[-1]
    await asker.until("data")
    await asker.close()  # the worker goes on
    again = Client(f"/ws/agent/{conversation_id}/", user=ada)
    reopened = await again.hello()
    frames = await frames_until(again, finished(queued["run_id"]))
    assert frames[-1]["status"] == "completed"
    if reopened["active_run"] is not None:  # joined mid-run: the replay from the worker gives the whole answer
        assert frames[0]["type"] == "run_started"
    run = await asyncio.to_thread(Run.objects.get, pk=queued["run_id"])
    assert run.status == "completed" and run.worker and run.queued_at is not None
    answer = await asyncio.to_thread(
        lambda: Message.objects.filter(run_id=run.pk, role="assistant").order_by("-position").first()
    )
    assert answer is not None and not answer.partial
    await again.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_with_a_worker_a_cancel_from_any_connection_stops_the_run(worker, ada) -> None:
    asker = Client(user=ada)
    hello = await asker.hello()
    await asker.prompt("Hello")
    await asker.until_finished()
    watcher = Client(f"/ws/agent/{hello['conversation_id']}/", user=ada)
    await watcher.hello()
    await asker.prompt(LONG)
    started = (await asker.until("data"))[0]
    await watcher.cancel()
    frames = await frames_until(asker, lambda frame: frame["type"] == "run_finished")
    assert frames[-1]["status"] == "cancelled"
    run = await asyncio.to_thread(Run.objects.get, pk=frames[-1]["run_id"])
    assert run.status == "cancelled" and started
    await asker.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_queued_prompt_refused_when_its_turn_comes_leaves_the_queue(layer, settings, ada) -> None:
    texting(settings, RUNS_PER_USER_PER_MINUTE=2)
    asker, watcher, conversation_id = await open_pair(ada)  # run 1
    await prompt(asker, LONG)  # run 2
    await asker.until("run_started")
    await prompt(asker, "over the limit", "enqueue")
    queued = (await asker.until("run_queued"))[-1]
    refused = (await watcher.until("run_dequeued"))[-1]
    assert refused == {
        "type": "run_dequeued",
        "conversation_id": conversation_id,
        "run_id": queued["run_id"],
        "reason": "refused",
        "code": "rate_limited",
        "message": "Too many runs in the last minute; try again shortly.",
    }
    run = await asyncio.to_thread(Run.objects.get, pk=queued["run_id"])
    assert run.status == "failed" and "minute" in run.error
    prompts = await asyncio.to_thread(
        lambda: list(Message.objects.filter(conversation_id=conversation_id, run_id=run.pk))
    )
    assert prompts == []  # nothing of it was stored in the conversation
    await asker.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_prompts_left_queued_by_a_dead_process_start_when_the_conversation_is_opened(
    layer, settings, ada
) -> None:
    texting(settings)
    asker = Client(user=ada)
    hello = await asker.hello()
    await asker.prompt("Hello")
    await asker.until_finished()
    await asker.close()
    conversation_id = hello["conversation_id"]
    # As a process leaves them when it dies mid-run: queued, with nothing going on.
    left = await asyncio.to_thread(
        lambda: Run.objects.create(
            conversation_id=conversation_id, user=ada, prompt="Say hi", status="queued", queued_at=timezone.now()
        )
    )
    again = Client(f"/ws/agent/{conversation_id}/", user=ada)
    reopened = await again.hello()
    assert reopened["queued"] == [{"run_id": str(left.pk), "prompt": "Say hi"}]
    frames = await frames_until(again, finished(str(left.pk)))
    assert frames[0]["type"] == "run_started" and frames[-1]["status"] == "completed"
    await again.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_queued_prompt_keeps_its_attachments(layer, settings, ada, tmp_path) -> None:
    texting(settings)
    settings.MEDIA_ROOT = str(tmp_path / "media")
    asker, watcher, conversation_id = await open_pair(ada)
    image = await asyncio.to_thread(
        lambda: attachments.store(Conversation.objects.get(pk=conversation_id), ada, "", "dot.png", files.png(4, 5))
    )
    await prompt(asker, LONG)
    await asker.until("run_started")
    await asker.send(
        {"type": "prompt", "prompt": "Describe this", "if_busy": "enqueue", "attachments": [str(image.pk)]}
    )
    queued = (await asker.until("run_queued"))[-1]
    frames = await frames_until(asker, finished(queued["run_id"]))
    started = next(frame for frame in frames if frame["type"] == "run_started" and frame["run_id"] == queued["run_id"])
    assert [reference["id"] for reference in started["attachments"]] == [str(image.pk)]
    assert "4x5" in streamed_text([frame for frame in frames if frame.get("run_id") == queued["run_id"]])
    await asker.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_queued_prompt_whose_attachment_was_deleted_is_refused(layer, settings, ada, tmp_path) -> None:
    texting(settings)
    settings.MEDIA_ROOT = str(tmp_path / "media")
    asker, watcher, conversation_id = await open_pair(ada)
    image = await asyncio.to_thread(
        lambda: attachments.store(Conversation.objects.get(pk=conversation_id), ada, "", "dot.png", files.png())
    )
    await prompt(asker, LONG)
    await asker.until("run_started")
    await asker.send(
        {"type": "prompt", "prompt": "Describe this", "if_busy": "enqueue", "attachments": [str(image.pk)]}
    )
    queued = (await asker.until("run_queued"))[-1]
    await asyncio.to_thread(image.delete)
    refused = (await watcher.until("run_dequeued"))[-1]
    assert refused["run_id"] == queued["run_id"] and refused["reason"] == "refused"
    assert refused["code"] == "unknown_attachment"
    await asker.close()
    await watcher.close()
