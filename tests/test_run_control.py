"""Run control details: messages skip Channels' per-message database cleanup; agents get the approval hook."""

from __future__ import annotations

import asyncio
from typing import Any

import channels.consumer
import pytest
from django.contrib.auth import get_user_model

from agentapp.agents import build_agent
from agentapp.approvals import interrupt_payloads
from agentapp.models import Conversation
from tests.wsclient import Client, streamed_text


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_messages_skip_the_database_thread(layer, settings, user, monkeypatch) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 0}
    real = channels.consumer.aclose_old_connections
    calls: list[int] = []

    async def counting() -> None:
        calls.append(1)
        await real()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counting)
    asker = Client(user=user)
    hello = await asker.hello()
    watcher = Client(f"/ws/agent/{hello['conversation_id']}/", user=user)
    await watcher.hello()
    calls.clear()
    await asker.prompt("Stream 200 tokens")
    asked = await asker.until_finished()
    watched = await watcher.until_finished()
    assert streamed_text(watched) == streamed_text(asked)
    assert len(watched) > 5
    # Neither the prompt's websocket.receive nor the watcher's group frames wait for the database thread.
    assert calls == []
    await asker.close()
    await watcher.close()


def test_built_agents_get_the_approval_hook(settings: Any, user) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "APPROVAL_TOOLS": ["calculator"]}
    conversation = Conversation.objects.create(owner=user)

    async def stop_reason(agent: Any) -> str:
        return [event async for event in agent.stream_async("Calculate 2+2")][-1]["result"].stop_reason

    paused = build_agent(conversation, user, [])
    assert asyncio.run(stop_reason(paused)) == "interrupt"
    assert [payload["tool"] for payload in interrupt_payloads(paused)] == ["calculator"]
    settings.AGENTAPP = {**settings.AGENTAPP, "APPROVAL_TOOLS": []}
    assert asyncio.run(stop_reason(build_agent(conversation, user, []))) == "end_turn"
