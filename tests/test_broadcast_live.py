"""Group broadcast through real consumers in one process: late joiners, lost frames, slow sockets, cost."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from agentapp import hub, protocol
from agentapp.broadcast import FRAME_MESSAGE_TYPE
from agentapp.following import Watch
from agentapp.models import Conversation, Message, Run
from agentapp.presence import ConversationView
from tests.frames import assert_contiguous, deltas
from tests.wsclient import Client, streamed_text


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("owner", password=None)


def paced(settings: Any, tokens_per_second: float, **extra: Any) -> None:
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": tokens_per_second, **extra}


def assert_whole_run(frames: list[dict[str, Any]]) -> None:
    """One run from run_started to run_finished, every seq covered exactly once, in order."""
    assert frames[0]["type"] == protocol.RUN_STARTED and frames[-1]["type"] == protocol.RUN_FINISHED
    assert_contiguous(frames)


def non_data(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(frame["type"], frame["seq"]) for frame in frames if frame["type"] != protocol.DATA]


async def receive_data_frames(client: Client, count: int) -> list[dict[str, Any]]:
    """Receive frames until ``count`` data frames have arrived."""
    frames: list[dict[str, Any]] = []
    while deltas(frames) < count:
        frames.append(await client.receive())
    return frames


async def join_mid_run(owner: Any) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """One finished run, then a second one that a new connection joins while it streams."""
    asker = Client(user=owner)
    conversation_id = (await asker.hello())["conversation_id"]
    await asker.prompt("Stream 3 tokens")
    await asker.until_finished()
    await asker.prompt("Stream 200 tokens")
    asked = await receive_data_frames(asker, 40)
    joiner = Client(f"/ws/agent/{conversation_id}/", user=owner)
    hello = await joiner.hello()
    asked += await asker.until_finished()
    joined = await joiner.until_finished()
    await asker.close()
    await joiner.close()
    return asked, hello, joined


def assert_joined_without_gap_or_repeat(asked: list[dict[str, Any]], hello: dict[str, Any], joined: list) -> None:
    run_id = asked[0]["run_id"]
    assert hello["active_run"] == {"run_id": run_id, "prompt": "Stream 200 tokens"}
    assert hello["role"] == "owner"
    # The history holds the first run only; the second comes as frames, from its first one.
    assert [message["role"] for message in hello["messages"]] == ["user", "assistant"]
    assert run_id not in {message["run_id"] for message in hello["messages"]}
    assert_whole_run(joined)
    assert {frame["run_id"] for frame in joined} == {run_id}
    assert streamed_text(joined) == streamed_text(asked) == "".join(f"w{n} " for n in range(200))
    assert non_data(joined) == non_data(asked)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_late_joiner_gets_history_then_the_whole_run(layer, settings, owner):
    paced(settings, 300)
    asked, hello, joined = await join_mid_run(owner)
    assert_joined_without_gap_or_repeat(asked, hello, joined)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_late_joiner_replay_through_the_layer(layer, settings, owner, monkeypatch):
    """As if the run were in another process: the joiner must ask for the replay over the channel layer."""
    paced(settings, 300)
    monkeypatch.setattr(Watch, "_local_log", lambda self, run_id: None)
    asked, hello, joined = await join_mid_run(owner)
    assert_joined_without_gap_or_repeat(asked, hello, joined)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_no_replay_for_a_run_nobody_runs(settings, owner):
    """A run left 'running' by a dead server: after SYNC_TIMEOUT_SECONDS the stored history is sent as it is."""
    paced(settings, 0, SYNC_TIMEOUT_SECONDS=0.2)
    conversation = await Conversation.objects.acreate(owner=owner)
    run = await Run.objects.acreate(conversation=conversation, prompt="Stream 50 tokens")
    await Message.objects.acreate(conversation=conversation, run=run, position=0, role="user", content=[{"text": "x"}])
    client = Client(f"/ws/agent/{conversation.pk}/", user=owner)
    started = time.monotonic()
    hello = await client.hello()
    assert time.monotonic() - started >= 0.2
    assert hello["active_run"]["run_id"] == str(run.pk)
    assert [message["run_id"] for message in hello["messages"]] == [str(run.pk)]
    assert await client.communicator.receive_nothing()
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_frames_lost_on_the_way_are_replayed(layer, settings, owner, monkeypatch):
    """Group frames lost before a watcher got them (by the layer, or on their way from the process's room) leave a
    gap the watcher fills with a replay."""
    paced(settings, 300)
    asker, watcher = await asker_and_watcher(owner)

    real_deliver = hub.Room.deliver
    lost: list[int] = []

    def lossy_deliver(room: hub.Room, message: dict[str, Any]) -> None:
        frame = message.get("frame") or {}
        is_delta = message["type"] == FRAME_MESSAGE_TYPE and frame["type"] == protocol.DATA
        if is_delta and frame["seq"] > 20 and len(lost) < 3:
            lost.append(frame["seq"])
            return
        real_deliver(room, message)

    monkeypatch.setattr(hub.Room, "deliver", lossy_deliver)
    await asker.prompt("Stream 200 tokens")
    asked = await asker.until_finished()
    watched = await watcher.until_finished()
    await asker.close()
    await watcher.close()

    assert len(lost) == 3
    assert_whole_run(watched)
    assert streamed_text(watched) == streamed_text(asked)
    assert non_data(watched) == non_data(asked)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_slow_consumer_is_closed_and_others_are_unharmed(settings, owner):
    paced(settings, 600, SOCKET_QUEUE_FRAMES=10, BROADCAST_WINDOW_SECONDS=0.005)
    asker = Client(user=owner)
    conversation_id = (await asker.hello())["conversation_id"]
    path = f"/ws/agent/{conversation_id}/"
    healthy = Client(path, user=owner)
    await healthy.hello()
    slow = Client(path, user=owner)
    # A socket whose client stopped reading: the server's send waits once 3 messages are unread.
    slow.communicator._output_queue = asyncio.Queue(maxsize=3)
    await slow.hello()

    await asker.prompt("Stream 300 tokens")
    asked = await asker.until_finished()
    watched = await healthy.until_finished()
    assert asked[-1]["status"] == protocol.STATUS_COMPLETED
    assert_whole_run(watched)
    assert streamed_text(watched) == streamed_text(asked) == "".join(f"w{n} " for n in range(300))

    # The slow client reads again: a few frames that were in flight, then the error and the close.
    frames = []
    while (frame := await slow.receive())["type"] != protocol.ERROR:
        frames.append(frame)
    assert frame["code"] == protocol.ERR_SLOW_CONSUMER
    assert await slow.receive_close() == protocol.CLOSE_SLOW_CONSUMER
    assert len(frames) <= 4
    await slow.close()
    await asker.close()
    await healthy.close()


async def asker_and_watcher(owner: Any) -> tuple[Client, Client]:
    """A connection that opens a new conversation, and a second one watching it."""
    asker = Client(user=owner)
    conversation_id = (await asker.hello())["conversation_id"]
    watcher = Client(f"/ws/agent/{conversation_id}/", user=owner)
    await watcher.hello()
    return asker, watcher


def count_frame_sends(monkeypatch: Any) -> list[str]:
    """From now on, the type of each run frame a run's broadcaster sends to its group, in order."""
    real_group_send = hub.LocalFirst.group_send
    sends: list[str] = []

    async def counting_group_send(local_first: hub.LocalFirst, group: str, message: dict[str, Any]) -> None:
        if message["type"] == FRAME_MESSAGE_TYPE:
            sends.append(message["frame"]["type"])
        await real_group_send(local_first, group, message)

    monkeypatch.setattr(hub.LocalFirst, "group_send", counting_group_send)
    return sends


def count_layer_frame_sends(monkeypatch: Any) -> list[str]:
    """From now on, the type of each run frame sent through the channel layer, in order."""
    channel_layer = get_channel_layer()
    real_group_send = channel_layer.group_send
    sends: list[str] = []

    async def counting_group_send(group: str, message: dict[str, Any]) -> None:
        if message["type"] == FRAME_MESSAGE_TYPE:
            sends.append(message["frame"]["type"])
        await real_group_send(group, message)

    monkeypatch.setattr(channel_layer, "group_send", counting_group_send)
    return sends


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_group_sends_follow_time_not_tokens(layer, settings, owner, monkeypatch):
    window = 0.03
    paced(settings, 1000, BROADCAST_WINDOW_SECONDS=window)
    asker, watcher = await asker_and_watcher(owner)

    sends = count_frame_sends(monkeypatch)
    await asker.prompt("Stream 2000 tokens")
    asked = [await asker.receive()]
    started = time.monotonic()
    asked += await asker.until_finished()
    duration = time.monotonic() - started
    watched = await watcher.until_finished()
    await asker.close()
    await watcher.close()

    assert deltas(asked) == 2000  # the asker gets every delta
    assert streamed_text(watched) == streamed_text(asked)
    assert_whole_run(watched)
    non_data_frames = len(non_data(asked))
    data_sends = sends.count(protocol.DATA)
    assert len(sends) == data_sends + non_data_frames
    # At most one merged delta per window, plus one more after each other frame interrupts the text.
    assert data_sends <= duration / window + non_data_frames + 2, (data_sends, duration)
    assert len(sends) < 200


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_run_nobody_else_watches_costs_the_layer_one_message(layer, settings, owner, monkeypatch):
    paced(settings, 1000)
    asker = Client(user=owner)
    conversation_id = (await asker.hello())["conversation_id"]
    sends = count_frame_sends(monkeypatch)
    layer_sends = count_layer_frame_sends(monkeypatch)
    await asker.prompt("Stream 100 tokens")
    alone = await asker.until_finished()
    assert alone[-1]["status"] == protocol.STATUS_COMPLETED and deltas(alone) == 100
    assert sends == [protocol.RUN_FINISHED]  # for a watcher this process has not counted yet
    sends.clear()

    # Once another connection opens the conversation, the next run reaches it through the group.
    watcher = Client(f"/ws/agent/{conversation_id}/", user=owner)
    await watcher.hello()
    await asker.prompt("Stream 100 tokens")
    asked = await asker.until_finished()
    watched = await watcher.until_finished()
    await asker.close()
    await watcher.close()
    assert_whole_run(watched)
    assert streamed_text(watched) == streamed_text(asked)
    assert protocol.RUN_STARTED in sends and protocol.DATA in sends and protocol.RUN_FINISHED in sends
    # A watcher on the run's own process gets its frames from the process's room: the layer still carries one.
    assert layer_sends == [protocol.RUN_FINISHED, protocol.RUN_FINISHED]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_watcher_presence_missed_still_gets_the_whole_run(layer, settings, owner, monkeypatch):
    paced(settings, 1000)
    asker, watcher = await asker_and_watcher(owner)
    # Presence has not counted the watcher (its message is late, or was lost): the run is taken as unwatched.
    monkeypatch.setattr(ConversationView, "watchers", property(lambda view: 1))
    await asker.prompt("Stream 100 tokens")
    asked = await asker.until_finished()
    watched = await watcher.until_finished()
    await asker.close()
    await watcher.close()
    assert_whole_run(watched)  # its run_finished showed the gap, and the replay from the log filled it
    assert streamed_text(watched) == streamed_text(asked) == "".join(f"w{n} " for n in range(100))
