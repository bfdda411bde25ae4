"""The per-socket outbox: frames written in order, text deltas merged only while they wait behind the writer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentapp import protocol
from agentapp.outbox import Outbox


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
