"""The process hub: one group subscription per conversation per process, whatever the number of sockets."""

from __future__ import annotations

from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from agentapp import hub, outbox, protocol
from agentapp.broadcast import group_name
from tests.wsclient import Client

WATCHERS = 5


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("owner", password=None)


def count_receives(monkeypatch: Any) -> list[str]:
    """From now on, the type of each message the channel layer hands to a receiver in this process."""
    layer = get_channel_layer()
    real_receive = layer.receive
    received: list[str] = []

    async def counting_receive(channel: str) -> dict[str, Any]:
        message = await real_receive(channel)
        received.append(message["type"])
        return message

    monkeypatch.setattr(layer, "receive", counting_receive)
    return received


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_group_message_is_received_once_per_process_and_reaches_every_socket(layer, owner, monkeypatch):
    received = count_receives(monkeypatch)
    first = Client(user=owner)
    conversation_id = (await first.hello())["conversation_id"]
    clients = [first]
    for _ in range(WATCHERS - 1):
        client = Client(f"/ws/agent/{conversation_id}/", user=owner)
        await client.hello()
        clients.append(client)
    received.clear()

    # As another process announces a new title: one message to the group.
    frame = {"type": protocol.TITLE, "conversation_id": conversation_id, "title": "Renamed"}
    await get_channel_layer().group_send(group_name(conversation_id), {"type": "agentapp.title", "frame": frame})

    for client in clients:
        assert await client.receive() == frame
    assert received.count("agentapp.title") == 1
    for client in clients:
        await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_group_has_one_member_per_process_until_the_last_socket_leaves(settings, owner):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "agentapp.layers.InMemoryChannelLayer"}}
    first = Client(user=owner)
    conversation_id = (await first.hello())["conversation_id"]
    others = [Client(f"/ws/agent/{conversation_id}/", user=owner) for _ in range(WATCHERS - 1)]
    for client in others:
        await client.hello()
    layer = get_channel_layer()
    group = group_name(conversation_id)
    room = hub.hub_for(layer).room(conversation_id)
    assert room is not None and len(room.members) == WATCHERS
    assert list(layer.groups[group]) == [room.channel]

    for client in others:
        await client.close()
    assert list(layer.groups[group]) == [room.channel]  # one socket is still open
    await first.close()
    assert not layer.groups.get(group)
    assert hub.hub_for(layer).room(conversation_id) is None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_socket_that_comes_back_after_the_room_closed_gets_a_new_one(layer, owner):
    first = Client(user=owner)
    conversation_id = (await first.hello())["conversation_id"]
    await first.close()
    again = Client(f"/ws/agent/{conversation_id}/", user=owner)
    await again.hello()
    frame = {"type": protocol.TITLE, "conversation_id": conversation_id, "title": "Back"}
    await get_channel_layer().group_send(group_name(conversation_id), {"type": "agentapp.title", "frame": frame})
    assert await again.receive() == frame
    await again.close()


def test_a_frame_that_many_sockets_write_is_encoded_once(monkeypatch):
    real_encode = protocol.encode_frame
    calls: list[dict[str, Any]] = []

    def counting_encode(frame: Any) -> str:
        calls.append(frame)
        return real_encode(frame)

    monkeypatch.setattr(protocol, "encode_frame", counting_encode)
    frame = {"type": protocol.DATA, "conversation_id": "c", "run_id": "r", "seq": 3, "data": "w3 "}
    assert {outbox.encoded(frame) for _ in range(100)} == {real_encode(frame)}
    assert len(calls) == 1
    equal_but_another = dict(frame)
    assert outbox.encoded(equal_but_another) == real_encode(frame)
    assert len(calls) == 2
