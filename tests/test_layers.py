"""agentapp's in-memory channel layer: Channels' semantics, with the expiry sweep throttled."""

from __future__ import annotations

import pytest
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

from agentapp.layers import InMemoryChannelLayer


@pytest.mark.asyncio
async def test_group_send_reaches_every_member_once_and_skips_full_channels():
    layer = InMemoryChannelLayer(capacity=1)
    await layer.group_add("g", "a.one")
    await layer.group_add("g", "a.two")
    await layer.send("a.two", {"type": "filler"})  # a.two is now full
    await layer.group_send("g", {"type": "hello", "n": 1})
    assert await layer.receive("a.one") == {"type": "hello", "n": 1}
    assert await layer.receive("a.two") == {"type": "filler"}
    assert layer.channels.get("a.one") is None and layer.channels.get("a.two") is None  # nothing else queued


@pytest.mark.asyncio
async def test_expired_messages_are_swept_at_most_once_per_interval(monkeypatch):
    clock = {"wall": 1000.0, "mono": 50.0}
    monkeypatch.setattr("channels.layers.time.time", lambda: clock["wall"])
    monkeypatch.setattr("agentapp.layers.time.monotonic", lambda: clock["mono"])
    sweeps = []
    original = ChannelsInMemoryChannelLayer._clean_expired
    monkeypatch.setattr(ChannelsInMemoryChannelLayer, "_clean_expired", lambda self: sweeps.append(1) or original(self))
    layer = InMemoryChannelLayer(expiry=10, sweep_seconds=1.0)
    await layer.group_add("g", "a.stale")
    await layer.send("a.stale", {"type": "old"})
    await layer.group_send("g", {"type": "probe"})  # first call sweeps (nothing expired yet)
    assert len(sweeps) == 1

    clock["wall"] += 11  # the queued messages are past their expiry now
    clock["mono"] += 0.5
    await layer.group_send("g", {"type": "skipped"})  # within the interval: no sweep, a full scan saved
    assert len(sweeps) == 1
    clock["mono"] += 0.6
    await layer.group_send("g", {"type": "swept"})  # sweeps: the stale channel leaves the group first
    assert len(sweeps) == 2
    assert "a.stale" not in layer.groups.get("g", {})
