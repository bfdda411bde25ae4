"""The per-socket outbox: frames written in order, text deltas merged only while they wait behind the writer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from agentapp import protocol
from agentapp.outbox import FLOW_EXTENSION, Outbox, write_flow
from tests.frames import deltas
from tests.wsclient import Client


def data(seq: int, text: str, run_id: str = "r1") -> dict[str, Any]:
    return {"type": protocol.DATA, protocol.DATA: text, "conversation_id": "c", "run_id": run_id, "seq": seq}


class GatedSocket:
    """An ASGI send that holds every write until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.written: list[dict[str, Any]] = []
        self.wrote = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        await self.gate.wait()
        self.written.append(json.loads(message["text"]) if "text" in message else message)
        self.wrote.set()

    async def until(self, count: int) -> list[dict[str, Any]]:
        while len(self.written) < count:
            self.wrote.clear()
            await asyncio.wait_for(self.wrote.wait(), 5)
        return self.written


@pytest.mark.asyncio
async def test_deltas_waiting_behind_the_writer_merge_into_one_frame():
    socket = GatedSocket()
    outbox = Outbox(socket.send, limit=10)
    first = data(0, "a ")
    assert outbox.put(first)
    await asyncio.sleep(0)  # the writer takes the first frame and waits on the gate with it
    frames = [data(1, "b "), data(2, "c "), {"type": protocol.RESULT, "run_id": "r1", "seq": 3}, data(4, "d ")]
    frames += [data(5, "e "), data(6, "x ", run_id="r2"), data(8, "f ")]
    for frame in frames:
        assert outbox.put(frame)
    assert outbox.backlog == 7  # counted per frame, merged or not
    socket.gate.set()
    written = await socket.until(6)
    assert [(f["type"], f.get("seq_first"), f["seq"], f.get("data")) for f in written] == [
        (protocol.DATA, None, 0, "a "),
        (protocol.DATA, 1, 2, "b c "),
        (protocol.RESULT, None, 3, None),
        (protocol.DATA, 4, 5, "d e "),
        (protocol.DATA, None, 6, "x "),
        (protocol.DATA, None, 8, "f "),
    ]
    assert frames[0] == data(1, "b ")  # the caller's frames are never changed
    outbox.stop()


@pytest.mark.asyncio
async def test_an_idle_socket_gets_each_delta_alone_and_a_full_one_overflows():
    socket = GatedSocket()
    socket.gate.set()
    outbox = Outbox(socket.send, limit=2)
    for seq in range(3):
        assert outbox.put(data(seq, f"w{seq} "))
        await socket.until(seq + 1)
    assert [f.get("seq_first") for f in socket.written] == [None, None, None]

    socket.gate.clear()
    assert outbox.put({"type": protocol.RESULT, "seq": 3})
    await asyncio.sleep(0)  # taken by the writer, held at the gate
    assert outbox.put(data(4, "a ")) and outbox.put(data(5, "b "))  # merged into one entry, counted as two
    assert not outbox.put(data(6, "c ")) and outbox.overflowed
    outbox.stop()


@pytest.mark.asyncio
async def test_written_returns_once_the_frames_queued_before_it_are_handed_to_the_server():
    socket = GatedSocket()
    outbox = Outbox(socket.send, limit=10)
    assert outbox.put(data(0, "a ")) and outbox.put({"type": protocol.RESULT, "run_id": "r1", "seq": 1})
    waiting = asyncio.create_task(outbox.written())
    await asyncio.sleep(0)
    assert outbox.put(data(2, "b "))  # queued after the call: not waited for
    assert not waiting.done()
    socket.gate.set()
    await asyncio.wait_for(waiting, 5)
    assert [frame["seq"] for frame in socket.written][:2] == [0, 1]
    await outbox.written()
    assert [frame["seq"] for frame in socket.written] == [0, 1, 2]
    socket.gate.clear()
    assert outbox.put(data(3, "c "))
    held = asyncio.create_task(outbox.written())
    await asyncio.sleep(0)
    outbox.stop()  # a socket that goes away releases whoever waits for it
    await asyncio.wait_for(held, 5)


class FakeFlow:
    """A server's write buffer the test fills and drains: what ``agentapp.server`` offers as ``agentapp.flow``."""

    def __init__(self) -> None:
        self.paused = False
        self.callbacks: list[Any] = []
        self.aborted = asyncio.Event()

    def on_drain(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def abort(self) -> None:
        self.aborted.set()

    def drain(self) -> None:
        self.paused = False
        for callback in self.callbacks:
            callback()


def closing(outbox: Outbox) -> None:
    """What the consumer does with a slow consumer: its error frame and close, dropping what waits."""
    error = {"type": "websocket.send", "text": '{"type": "error"}'}
    outbox.finish([error, {"type": "websocket.close", "code": 4429}], drop_waiting=True)


def test_a_socket_offers_its_flow_through_a_scope_extension():
    flow = FakeFlow()
    assert write_flow({"type": "websocket", "extensions": {FLOW_EXTENSION: flow}}) is flow
    assert write_flow({"type": "websocket"}) is None
    assert write_flow({"type": "websocket", "extensions": None}) is None


@pytest.mark.asyncio
async def test_the_writer_waits_while_the_servers_buffer_is_full_and_frames_merge_meanwhile():
    socket = GatedSocket()
    socket.gate.set()
    flow = FakeFlow()
    outbox = Outbox(socket.send, limit=10, flow=flow, stall_seconds=60)
    assert outbox.put(data(0, "a "))
    await socket.until(1)
    flow.paused = True  # the client stopped reading: the server's buffer is over its high-water mark
    assert outbox.put(data(1, "w1 "))
    await asyncio.sleep(0)  # the writer takes it and waits for the buffer to drain
    assert outbox.put(data(2, "w2 ")) and outbox.put(data(3, "w3 "))
    assert len(socket.written) == 1 and outbox.backlog == 2  # one held by the writer, two merged behind it
    flow.drain()
    written = await socket.until(3)
    assert [(f.get("seq_first"), f["seq"], f["data"]) for f in written] == [
        (None, 0, "a "),
        (None, 1, "w1 "),
        (2, 3, "w2 w3 "),
    ]
    assert not flow.aborted.is_set()
    outbox.stop()


@pytest.mark.asyncio
async def test_a_full_buffer_fills_the_outbox_and_the_close_that_cannot_drain_drops_the_connection():
    socket = GatedSocket()
    socket.gate.set()
    flow = FakeFlow()
    flow.paused = True
    outbox = Outbox(socket.send, limit=3, flow=flow, stall_seconds=0.05)
    for seq in range(3):
        assert outbox.put({"type": protocol.RESULT, "seq": seq})
    assert not outbox.put({"type": protocol.RESULT, "seq": 3}) and outbox.overflowed
    closing(outbox)
    written = await socket.until(2)  # the last messages do not wait; the frames waiting are dropped
    assert written == [{"type": "error"}, {"type": "websocket.close", "code": 4429}]
    await asyncio.wait_for(flow.aborted.wait(), 5)  # the close frame never drained
    await asyncio.wait_for(outbox.task, 5)


@pytest.mark.asyncio
async def test_a_write_blocked_for_stall_seconds_closes_the_socket_as_a_slow_consumer():
    socket = GatedSocket()
    socket.gate.set()
    flow = FakeFlow()
    flow.paused = True
    stalled = asyncio.Event()

    def on_stall(outbox: Outbox) -> None:
        closing(outbox)
        stalled.set()

    outbox = Outbox(socket.send, limit=1000, flow=flow, stall_seconds=0.05, on_stall=on_stall)
    assert outbox.put(data(0, "a ")) and outbox.put(data(1, "b "))
    await asyncio.wait_for(stalled.wait(), 5)
    assert outbox.stalled and outbox.closed and not outbox.put(data(2, "c "))
    written = await socket.until(2)
    assert written == [{"type": "error"}, {"type": "websocket.close", "code": 4429}]
    await asyncio.wait_for(flow.aborted.wait(), 5)


@pytest.mark.asyncio
async def test_a_close_that_drains_keeps_the_frames_before_it_and_does_not_drop_the_connection():
    socket = GatedSocket()
    socket.gate.set()
    flow = FakeFlow()
    flow.paused = True
    outbox = Outbox(socket.send, limit=10, flow=flow, stall_seconds=60)
    assert outbox.put(data(0, "a "))
    outbox.finish([{"type": "websocket.close", "code": 1000}])
    await asyncio.sleep(0)
    assert socket.written == []  # the frame waits for the buffer, and the close behind it
    flow.drain()
    assert await socket.until(2) == [data(0, "a "), {"type": "websocket.close", "code": 1000}]
    await asyncio.wait_for(outbox.task, 5)
    assert not flow.aborted.is_set()


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_runs_first_token_leaves_alone_though_the_model_streams_the_rest_without_a_pause(settings, user):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}  # every delta of the answer is ready at once
    client = Client(user=user)
    await client.hello()
    await client.prompt("Hello")
    frames = await client.until_finished()
    await client.close()
    texts = [frame for frame in frames if frame["type"] == protocol.DATA]
    assert "seq_first" not in texts[0]  # written before the second delta was queued
    assert any("seq_first" in frame for frame in texts[1:])  # the rest still merge while the writer catches up
    assert deltas(texts) > len(texts)
