"""The broadcast parts on their own: coalescing, the run log and its replays, the follower, the broadcaster."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from agentapp import broadcast, protocol
from agentapp.broadcast import Follower, GroupBroadcaster, coalesce
from agentapp.runlog import RunLog, replay_chunks
from tests.frames import assert_contiguous

RUN = "run-1"


def frame(seq: int, kind: str = protocol.DATA, text: str | None = None, **extra: Any) -> dict[str, Any]:
    """A run frame as the runner emits it."""
    built = {"type": kind, "conversation_id": "c", "run_id": RUN, "seq": seq, **extra}
    if kind == protocol.DATA:
        built[protocol.DATA] = f"w{seq} " if text is None else text
    return built


def tool_use(seq: int, tool_use_id: str, streamed: str) -> dict[str, Any]:
    return frame(
        seq,
        protocol.CURRENT_TOOL_USE,
        current_tool_use={"toolUseId": tool_use_id, "name": "calculator", "input": streamed},
    )


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f[protocol.DATA] for f in frames if f["type"] == protocol.DATA)


### coalesce ###


def test_coalesce_merges_deltas_and_tool_updates_and_keeps_the_rest():
    frames = [
        frame(0, protocol.RUN_STARTED),
        frame(1),
        frame(2),
        tool_use(3, "t1", '{"ex'),
        tool_use(4, "t1", '{"expression": "2+2"}'),
        tool_use(5, "t2", "{"),
        frame(6),
    ]
    merged = coalesce(frames)
    assert [(f["type"], f.get("seq_first"), f["seq"]) for f in merged] == [
        (protocol.RUN_STARTED, None, 0),
        (protocol.DATA, 1, 2),
        (protocol.CURRENT_TOOL_USE, 3, 4),
        (protocol.CURRENT_TOOL_USE, None, 5),
        (protocol.DATA, 6, 6),
    ]
    assert merged[1][protocol.DATA] == "w1 w2 "
    assert merged[2][protocol.CURRENT_TOOL_USE]["input"] == '{"expression": "2+2"}'
    assert frames[1] == frame(1)  # the caller's frames are not changed


### The run log ###


def test_run_log_merges_broadcast_frames_and_cuts_replays_at_their_ends():
    log = RunLog(RUN)
    broadcast_frames = [frame(0, protocol.RUN_STARTED), *coalesce([frame(1), frame(2)]), *coalesce([frame(3)])]
    broadcast_frames += [*coalesce([frame(4), frame(5), frame(6)]), frame(7, protocol.MESSAGE, message={})]
    for item in broadcast_frames:
        log.append(item)
    # The three data frames became one in the log.
    assert [f["type"] for f in log.frames] == [protocol.RUN_STARTED, protocol.DATA, protocol.MESSAGE]
    assert log.frames[1]["seq_first"] == 1 and log.frames[1]["seq"] == 6
    assert log.last_seq == 7 and not log.finished

    everything = log.frames_after(-1)
    assert_contiguous(everything)
    assert text_of(everything) == "w1 w2 w3 w4 w5 w6 "
    # After the end of each broadcast frame, the replay starts exactly at the next one.
    for end, rest in ((0, "w1 w2 w3 w4 w5 w6 "), (2, "w3 w4 w5 w6 "), (3, "w4 w5 w6 "), (6, "")):
        replay = log.frames_after(end)
        assert_contiguous(replay, end + 1)
        assert text_of(replay) == rest
    assert log.frames_after(7) == []

    log.append(frame(8, protocol.RUN_FINISHED, status="completed"))
    assert log.finished


def test_run_log_keeps_the_latest_tool_input_and_splits_long_text():
    log = RunLog(RUN)
    log.append(tool_use(0, "t1", "{"))
    log.append(tool_use(1, "t1", '{"a": 1}'))
    assert len(log.frames) == 1
    assert log.frames[0]["seq_first"] == 0 and log.frames[0][protocol.CURRENT_TOOL_USE]["input"] == '{"a": 1}'

    long_text = "x" * 40_000
    log.append(dict(frame(2, text=long_text), seq_first=2))
    log.append(dict(frame(3, text="y"), seq_first=3))
    assert [len(f.get(protocol.DATA, "")) for f in log.frames] == [0, 40_000, 1]


def test_replay_chunks_bound_message_size():
    frames = [frame(seq, text="z" * 1000) for seq in range(50)]
    chunks = replay_chunks(frames, limit=10_000)
    assert [f for chunk in chunks for f in chunk] == frames
    assert len(chunks) > 5
    for chunk in chunks:
        assert sum(len(protocol.encode_frame(f)) for f in chunk) <= 10_000
    assert replay_chunks([]) == [[]]


### The follower ###


def test_follower_forwards_in_order_once():
    follower = Follower(settled={"old-run"})
    assert follower.offer(frame(0, protocol.RUN_STARTED)) == [frame(0, protocol.RUN_STARTED)]
    merged = coalesce([frame(1), frame(2)])[0]
    assert follower.offer(merged) == [merged]
    assert follower.offer(merged) == []  # repeated
    assert follower.offer(frame(2)) == []  # already covered by the merged frame
    assert follower.offer(frame(3, protocol.RUN_FINISHED)) == [frame(3, protocol.RUN_FINISHED)]
    assert follower.offer(frame(4)) == []  # after run_finished nothing more of that run
    assert follower.offer({**frame(0), "run_id": "old-run"}) == []
    assert follower.take_requests() == []


def test_follower_fills_a_gap_with_a_replay_then_the_held_frames():
    follower = Follower()
    follower.offer(frame(0, protocol.RUN_STARTED), origin="origin-channel")
    follower.offer(frame(1))
    late = coalesce([frame(5), frame(6)])[0]
    assert follower.offer(late) == []  # 2..4 are missing
    assert follower.offer(frame(7)) == []  # held while the replay is awaited
    [request] = follower.take_requests()
    assert (request.run_id, request.after, request.origin) == (RUN, 1, "origin-channel")

    replay = coalesce([frame(2), frame(3), frame(4), frame(5), frame(6)])
    forwarded = follower.replayed(RUN, request.sync_id, replay)
    assert_contiguous(forwarded, 2)
    assert text_of(forwarded) == "w2 w3 w4 w5 w6 w7 "
    assert follower.replayed(RUN, request.sync_id, replay) == []  # stale


def test_follower_joining_mid_run_and_giving_up():
    follower = Follower()
    follower.expect_replay(RUN)
    [request] = follower.take_requests()
    assert request.after == -1 and request.origin is None
    assert follower.offer(frame(9)) == []
    assert follower.waiting(RUN, request.sync_id)
    assert follower.retry_via_group(RUN, request.sync_id) is False  # it asked the group already
    assert follower.give_up(RUN, request.sync_id) == [frame(9)]
    assert follower.offer(frame(12)) == [frame(12)]  # no more replays asked for this run
    assert follower.take_requests() == []


def test_follower_asks_the_group_when_the_origin_does_not_answer():
    follower = Follower()
    follower.offer(frame(0, protocol.RUN_STARTED), origin="gone")
    follower.offer(frame(3))
    [first] = follower.take_requests()
    assert first.origin == "gone"
    assert follower.retry_via_group(RUN, first.sync_id)
    [second] = follower.take_requests()
    assert second.origin is None and second.after == 0 and second.sync_id != first.sync_id
    assert not follower.waiting(RUN, first.sync_id)
    assert follower.unfinished() == []
    forwarded = follower.replayed(RUN, second.sync_id, [frame(1), frame(2)])
    assert [f["seq"] for f in forwarded] == [1, 2, 3]
    assert follower.unfinished() == [RUN]


### The broadcaster ###


class FakeLayer:
    """A channel layer whose group_send records, fails while ``down``, or never returns while ``hang``."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.down = False
        self.hang = False
        self.calls = 0
        self.called = asyncio.Event()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.calls += 1
        self.called.set()
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise ConnectionError("redis is away")
        self.sent.append(message["frame"])

    async def wait_calls(self, count: int, timeout: float = 5.0) -> None:
        """Wait until group_send has been called ``count`` times."""
        async with asyncio.timeout(timeout):
            while self.calls < count:
                self.called.clear()
                await self.called.wait()


@pytest.fixture
def fast_retries(settings):
    settings.AGENTAPP = {
        "BROADCAST_SEND_TIMEOUT_SECONDS": 0.05,
        "BROADCAST_RETRY_SECONDS": 0.02,
        "RUN_LOG_KEEP_SECONDS": 0.3,
    }
    broadcast.layer_health.failing = False
    broadcast.layer_health.failures = 0


@pytest.mark.asyncio
async def test_broadcaster_resends_after_the_layer_returns_with_the_same_boundaries(fast_retries, caplog):
    caplog.set_level(logging.WARNING, logger="agentapp")
    layer = FakeLayer()
    layer.down = True
    log = RunLog(RUN)
    broadcaster = GroupBroadcaster(layer, "g", "origin", window_seconds=0.0, log=log)
    broadcaster.publish(frame(0, protocol.RUN_STARTED))
    for seq in range(1, 40):
        broadcaster.publish(frame(seq))
        if seq == 20:
            await layer.wait_calls(1)
            assert broadcaster.failures == 1
    await layer.wait_calls(3)  # it keeps trying, once per retry interval, not per frame
    layer.down = False
    broadcaster.publish(frame(40, protocol.RUN_FINISHED))
    await broadcaster.close()

    assert_contiguous(layer.sent)
    assert text_of(layer.sent) == "".join(f"w{seq} " for seq in range(1, 40))
    assert text_of(log.frames_after(-1)) == text_of(layer.sent)
    # A replay after any sent frame fits the frames sent after it exactly: boundaries never moved.
    for index, sent in enumerate(layer.sent):
        assert text_of(log.frames_after(sent["seq"])) == text_of(layer.sent[index + 1 :])
    assert layer.calls - len(layer.sent) == broadcaster.failures
    assert broadcaster.failures < 40
    messages = [record.getMessage() for record in caplog.records]
    assert sum("group_send failed" in message for message in messages) == 1
    assert sum("broadcast restored" in message for message in messages) == 1


@pytest.mark.asyncio
async def test_a_hanging_layer_never_holds_up_the_run(fast_retries):
    layer = FakeLayer()
    layer.hang = True
    log = RunLog(RUN)
    broadcaster = GroupBroadcaster(layer, "g", "origin", window_seconds=0.0, log=log)
    for seq in range(10):
        broadcaster.publish(frame(seq))
    started = time.monotonic()
    await broadcaster.close()
    assert time.monotonic() - started < 1.0
    assert text_of(log.frames_after(-1)) == "".join(f"w{seq} " for seq in range(10))
    await asyncio.wait_for(broadcaster._task, timeout=5)  # gives up after RUN_LOG_KEEP_SECONDS
    assert layer.sent == []


@pytest.mark.asyncio
async def test_failed_receive_cleaners_count_as_layer_failures_without_a_traceback() -> None:
    import gc

    import redis

    class Layer:
        receive_cleaners: list[asyncio.Task[None]]

    async def cleanup() -> None:
        raise redis.ConnectionError("Connection closed by server.")

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    broadcast.layer_health.failing, broadcast.layer_health.failures = False, 0
    try:
        layer = Layer()
        layer.receive_cleaners = [asyncio.ensure_future(cleanup())]
        broadcast.watch_receive_cleaners(layer)
        broadcast.watch_receive_cleaners(layer)  # a second look adds no second callback
        await asyncio.wait(layer.receive_cleaners)
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
        assert broadcast.layer_health.failures == 1 and broadcast.layer_health.failing
        layer.receive_cleaners.clear()
        gc.collect()
        assert unhandled == []
    finally:
        loop.set_exception_handler(None)
        broadcast.layer_health.failing, broadcast.layer_health.failures = False, 0
