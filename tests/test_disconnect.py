"""Cleanup of a closed socket is bounded by DISCONNECT_TIMEOUT_SECONDS, whatever it waits for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from agentapp import presence, registry, runs
from agentapp.broadcast import group_name
from tests.wsclient import Client


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_run_that_does_not_end_does_not_hold_the_cleanup(settings, monkeypatch, user) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "DISCONNECT_TIMEOUT_SECONDS": 0.5}
    started, release = asyncio.Event(), asyncio.Event()

    async def stuck(self: Any, time_limit: float) -> str:
        started.set()
        await release.wait()  # deaf to cancel(): a save that hangs, a database that does not answer
        return "cancelled"

    monkeypatch.setattr(runs.AgentRun, "execute", stuck)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt("Calculate 2+2")
    await asyncio.wait_for(started.wait(), 10)
    layer = get_channel_layer()
    assert conversation_id in presence.views and layer.groups[group_name(conversation_id)]
    try:
        # The communicator cancels an application still running after 3 s: its cleanup would be cut short.
        await client.communicator.disconnect(timeout=3)
        assert conversation_id not in presence.views  # counted out
        assert not layer.groups.get(group_name(conversation_id))  # and out of the group, the cleanup's last step
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*registry.tasks), 10)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_connection_the_server_kills_mid_cleanup_still_leaves_its_group(settings, monkeypatch, user) -> None:
    """Daphne kills an application still running after its close timeout: the last cleanup leaves the group anyway."""
    settings.AGENTAPP = {**settings.AGENTAPP, "DISCONNECT_TIMEOUT_SECONDS": 30}
    started, release = asyncio.Event(), asyncio.Event()

    async def stuck(self: Any, time_limit: float) -> str:
        started.set()
        await release.wait()
        return "cancelled"

    monkeypatch.setattr(runs.AgentRun, "execute", stuck)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt("Calculate 2+2")
    await asyncio.wait_for(started.wait(), 10)
    layer = get_channel_layer()
    try:
        # The communicator kills the application 0.5 s into a cleanup that would wait 30 s for the stuck run.
        await client.communicator.disconnect(timeout=0.5)
        assert conversation_id not in presence.views
        assert not layer.groups.get(group_name(conversation_id))
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*registry.tasks), 10)
