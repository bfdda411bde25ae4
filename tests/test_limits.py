"""The AGENTAPP limits over the WebSocket: runs per user per minute, runs per process, wall-clock time, sizes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from agentapp import protocol, registry
from agentapp.models import Run
from tests.wsclient import Client


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


def configure(settings: Any, **values: Any) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 0, **values}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_runs_per_user_per_minute(settings, user) -> None:
    configure(settings, RUNS_PER_USER_PER_MINUTE=2)
    client = Client(user=user)
    await client.hello()
    for _ in range(2):
        await client.prompt("Calculate 2+2")
        assert (await client.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    await client.prompt("Calculate 2+2")
    error = await client.receive()
    assert (error["type"], error["code"]) == (protocol.ERROR, protocol.ERR_RATE_LIMITED)
    assert "run_id" not in error
    assert await Run.objects.acount() == 2

    # The count is per user, over every conversation: a new conversation is limited too; others are not.
    other_conversation = Client(user=user)
    await other_conversation.hello()
    await other_conversation.prompt("Calculate 2+2")
    assert (await other_conversation.receive())["code"] == protocol.ERR_RATE_LIMITED
    bob = await get_user_model().objects.acreate_user("bob", password="x")
    other_user = Client(user=bob)
    await other_user.hello()
    await other_user.prompt("Calculate 2+2")
    assert (await other_user.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED

    # Runs older than a minute no longer count.
    await Run.objects.filter(user=user).aupdate(started_at=timezone.now() - timedelta(seconds=61))
    await client.prompt("Calculate 2+2")
    assert (await client.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    for client_ in (client, other_conversation, other_user):
        await client_.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_max_concurrent_runs_per_process(settings, user) -> None:
    configure(settings, MAX_CONCURRENT_RUNS=1, OFFLINE_TOKENS_PER_SECOND=200)
    first, second = Client(user=user), Client(user=user)
    await first.hello()
    await second.hello()
    await first.prompt("Stream 2000 tokens")
    await first.until(protocol.DATA)
    await second.prompt("Calculate 2+2")
    error = await second.receive()
    assert (error["type"], error["code"]) == (protocol.ERROR, protocol.ERR_SERVER_BUSY)
    await first.cancel()
    assert (await first.until_finished())[-1]["status"] == protocol.STATUS_CANCELLED
    # Once the first run's task is over, the slot is free again.
    await consumers_settled()
    await second.prompt("Calculate 2+2")
    assert (await second.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    await first.close()
    await second.close()


async def consumers_settled() -> None:
    """Wait (bounded) until this process has no run task left."""
    if registry.tasks:
        await asyncio.wait_for(asyncio.gather(*registry.tasks, return_exceptions=True), timeout=10)
    assert not registry.tasks


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_wall_clock_limit_fails_the_run(settings, user) -> None:
    configure(settings, RUN_TIME_LIMIT_SECONDS=0.3, OFFLINE_TOKENS_PER_SECOND=100)
    client = Client(user=user)
    await client.hello()
    await client.prompt("Stream 2000 tokens")
    frames = await client.until_finished()
    [error] = [frame for frame in frames if frame["type"] == protocol.ERROR]
    assert error["code"] == protocol.ERR_TIME_LIMIT
    assert "0.3 seconds" in error["message"]
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    run = await Run.objects.aget()
    assert run.status == Run.Status.FAILED and "time limit" in run.error
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_prompt_and_frame_size_limits(settings, user) -> None:
    configure(settings, MAX_PROMPT_CHARS=10, MAX_FRAME_BYTES=200)
    client = Client(user=user)
    await client.hello()
    await client.prompt("x" * 11)
    assert (await client.receive())["code"] == protocol.ERR_PROMPT_TOO_LARGE
    await client.send({"type": "prompt", "prompt": "hi", "pad": "y" * 200})
    assert (await client.receive())["code"] == protocol.ERR_FRAME_TOO_LARGE
    await client.prompt("x" * 10)
    assert (await client.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    assert await Run.objects.acount() == 1
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_run_goes_on_after_disconnect_when_configured(layer, settings, user) -> None:
    configure(settings, RUNS_CONTINUE_ON_DISCONNECT=True, OFFLINE_TOKENS_PER_SECOND=400)
    asker = Client(user=user)
    hello = await asker.hello()
    watcher = Client(f"/ws/agent/{hello['conversation_id']}/", user=user)
    await watcher.hello()
    await asker.prompt("Stream 40 tokens")
    await asker.until(protocol.DATA)
    await asker.close()
    frames = await watcher.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert "w39 " in "".join(frame["data"] for frame in frames if frame["type"] == protocol.DATA)
    await consumers_settled()
    run = await Run.objects.aget()
    assert run.status == Run.Status.COMPLETED

    # A background run is still cancellable from another connection of its process.
    second = Client(f"/ws/agent/{hello['conversation_id']}/", user=user)
    await second.hello()
    await second.prompt("Stream 4000 tokens")
    await second.until(protocol.DATA)
    await second.close()
    await watcher.until(protocol.DATA)
    await watcher.cancel()
    frames = await watcher.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_CANCELLED
    await consumers_settled()
    assert not registry.slots
    await watcher.close()
