"""The ``presence`` frame: every connection to a conversation hears how many are open, on either channel layer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from agentapp import protocol
from agentapp.broadcast import PRESENCE_MESSAGE_TYPE, group_name
from agentapp.models import Conversation, ConversationMember
from agentapp.presence import PROCESS_ID
from tests.test_access import assert_refused
from tests.wsclient import Client

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

# Long enough for a frame that should not come (a presence frame settles within 0.05 s).
QUIET_SECONDS = 0.3


@pytest.fixture
def people(db) -> dict[str, Any]:
    users = get_user_model().objects
    return {name: users.create_user(name, password=None) for name in ("ada", "vera", "eve")}


@pytest.fixture
def conversation(people) -> Conversation:
    """Ada's conversation, shared with vera as a viewer; eve is a stranger."""
    shared = Conversation.objects.create(owner=people["ada"])
    ConversationMember.objects.create(conversation=shared, user=people["vera"], role="viewer")
    return shared


def watching(conversation: Conversation, user: Any, presence: bool = True) -> Client:
    return Client(f"/ws/agent/{conversation.pk}/" + ("?presence=1" if presence else ""), user=user)


async def watchers(client: Client) -> int:
    """The count of the next frame, which must be a ``presence`` frame."""
    frame = await client.receive()
    assert frame["type"] == protocol.PRESENCE, frame
    assert set(frame) == {"type", "conversation_id", "watchers"}, frame
    return frame["watchers"]


async def test_connections_are_counted_as_they_come_and_go(layer, settings, people, conversation) -> None:
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    owner = watching(conversation, people["ada"])
    await owner.hello()
    assert await watchers(owner) == 1

    viewer = watching(conversation, people["vera"])  # a viewer counts as much as the owner
    assert (await viewer.hello())["role"] == "viewer"
    assert await watchers(viewer) == 2
    assert await watchers(owner) == 2

    # A stranger is refused before joining the group: nobody hears of it.
    await assert_refused(watching(conversation, people["eve"]), protocol.ERR_FORBIDDEN, protocol.CLOSE_FORBIDDEN)
    assert await owner.communicator.receive_nothing(QUIET_SECONDS)
    assert await viewer.communicator.receive_nothing(QUIET_SECONDS)

    await viewer.close()
    assert await watchers(owner) == 1
    await owner.close()


async def test_clients_that_do_not_ask_get_no_presence_frames_but_are_counted(
    layer, settings, people, conversation
) -> None:
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    plain = watching(conversation, people["ada"], presence=False)
    await plain.hello()
    counting = watching(conversation, people["ada"])
    await counting.hello()
    assert await watchers(counting) == 2
    assert await plain.communicator.receive_nothing(QUIET_SECONDS)

    # Its runs are unchanged: no presence frame among them.
    await plain.prompt("Calculate 2+2")
    frames = await plain.until_finished()
    assert protocol.PRESENCE not in {frame["type"] for frame in frames}
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    await counting.until_finished()
    await plain.close()
    assert await watchers(counting) == 1
    await counting.close()


async def test_a_process_that_vanished_without_a_goodbye_stops_counting(layer, settings, people, conversation) -> None:
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0, "PRESENCE_HEARTBEAT_SECONDS": 0.3}
    owner = watching(conversation, people["ada"])
    await owner.hello()
    assert await watchers(owner) == 1

    # Another process with two connections, which then died: it told its count and asked for ours, then went quiet.
    channel_layer = get_channel_layer()
    ghost = await channel_layer.new_channel()
    group = group_name(str(conversation.pk))
    await channel_layer.group_send(
        group, {"type": PRESENCE_MESSAGE_TYPE, "event": "count", "process": "p2", "count": 2}
    )
    assert await watchers(owner) == 3
    query = {"type": PRESENCE_MESSAGE_TYPE, "event": "query", "process": "p2", "id": "q1", "reply_to": ghost}
    await channel_layer.group_send(group, query)
    answer = await channel_layer.receive(ghost)
    assert isinstance(answer.pop("number"), int)  # orders this process's counts (see the test below)
    assert answer == {"type": PRESENCE_MESSAGE_TYPE, "event": "count", "process": PROCESS_ID, "count": 1}

    # A second connection here shares this process's picture, the ghost included; the ghost is dropped after 2.5
    # heartbeats, while this process's own connections keep counting each other.
    viewer = watching(conversation, people["vera"])
    await viewer.hello()
    assert await watchers(viewer) == 4
    assert await watchers(owner) == 4
    assert await watchers(owner) == 2
    assert await watchers(viewer) == 2
    assert await owner.communicator.receive_nothing(1.0)  # three heartbeats: nothing changes
    assert await viewer.communicator.receive_nothing(0.1)
    await owner.close()
    await viewer.close()


async def test_a_join_costs_one_message_per_process_not_per_watcher(layer, settings, people, conversation) -> None:
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    clients = [watching(conversation, people["ada"]) for _ in range(5)]
    for client in clients:
        await client.hello()
    # Another process joins and asks: one answer comes back, not one per connection here.
    channel_layer = get_channel_layer()
    asker = await channel_layer.new_channel()
    query = {"type": PRESENCE_MESSAGE_TYPE, "event": "query", "process": "p2", "id": "q2", "reply_to": asker}
    await channel_layer.group_send(group_name(str(conversation.pk)), query)
    answer = await channel_layer.receive(asker)
    assert (answer["process"], answer["count"]) == (PROCESS_ID, 5)
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(QUIET_SECONDS):
            await channel_layer.receive(asker)
    for client in clients:
        await client.close()


@pytest.mark.asyncio
async def test_a_count_that_arrives_after_a_newer_one_is_ignored() -> None:
    """A burst of leaves is sent as separate group messages: they may cross, and the last to arrive is not the last
    taken. Each count carries its process's number, so a stale one never overwrites a newer one."""
    from agentapp.messages import presence_message
    from agentapp.presence import ConversationView

    view = ConversationView("c", None, "g")

    def count(value: int, number: int) -> dict[str, Any]:
        return dict(presence_message("other", value, number))

    await view.receive(count(94, 10))
    await view.receive(count(1, 12))
    await view.receive(count(70, 11))  # taken before the count of 1, arriving after it
    assert view.watchers == 1
    await view.receive(count(0, 13))
    await view.receive(count(17, 12))  # stale again: the process has none left
    assert view.watchers == 0
    await view.receive(count(2, 14))
    assert view.watchers == 2
