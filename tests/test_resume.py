"""Resume by seq: a client back after a dropped socket gets the frames it missed, with no gap and no repeat."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from agentapp import protocol
from tests.wsclient import Client, streamed_text

TOKENS = 120


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.fixture
def paced(settings: Any) -> None:
    settings.AGENTAPP = {
        **getattr(settings, "AGENTAPP", {}),
        "OFFLINE_TOKENS_PER_SECOND": 600,
        "SYNC_TIMEOUT_SECONDS": 0.3,
    }


def assert_continues(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    """The frames after a resume start one past the last seen and cover every seq to run_finished once."""
    expected = before[-1]["seq"] + 1
    for frame in after:
        assert frame["run_id"] == before[-1]["run_id"]
        assert frame.get("seq_first", frame["seq"]) == expected, (expected, frame)
        expected = frame["seq"] + 1
    assert after[-1]["type"] == protocol.RUN_FINISHED
    assert streamed_text(before) + streamed_text(after) == "".join(f"w{n} " for n in range(TOKENS))


def run_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame for frame in frames if "seq" in frame]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_watcher_resumes_a_run_in_progress_from_its_url(layer, paced, user) -> None:
    asker = Client(user=user)
    hello = await asker.hello()
    path = f"/ws/agent/{hello['conversation_id']}/"
    watcher = Client(path, user=user)
    await watcher.hello()
    await asker.prompt(f"Stream {TOKENS} tokens")
    before = await watcher.until(protocol.DATA)
    before += [await watcher.receive() for _ in range(3)]
    await watcher.close()

    back = Client(f"{path}?resume={before[-1]['run_id']}&seq={before[-1]['seq']}", user=user)
    again = await back.hello()
    assert again["active_run"]["run_id"] == before[-1]["run_id"]
    assert [message for message in again["messages"] if message["run_id"] == before[-1]["run_id"]] == []
    after = await back.until_finished()
    assert_continues(before, after)
    await asker.until_finished()
    await asker.close()
    await back.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_resume_frame_after_the_run_finished(layer, paced, user) -> None:
    asker = Client(user=user)
    hello = await asker.hello()
    path = f"/ws/agent/{hello['conversation_id']}/"
    watcher = Client(path, user=user)
    await watcher.hello()
    await asker.prompt(f"Stream {TOKENS} tokens")
    before = await watcher.until(protocol.DATA)
    await watcher.close()
    await asker.until_finished()

    back = Client(path, user=user)
    again = await back.hello()
    assert again["active_run"] is None  # the run is over: its stored messages are in the history
    await back.send({"type": "resume", "run_id": before[-1]["run_id"], "seq": before[-1]["seq"]})
    after = await back.until_finished()
    assert_continues(before, after)
    # Resuming again from the end sends nothing more; the next frame is the answer to the next client frame.
    await back.send({"type": "resume", "run_id": before[-1]["run_id"], "seq": after[-1]["seq"]})
    await back.cancel()
    assert (await back.receive())["code"] == protocol.ERR_NO_ACTIVE_RUN
    await asker.close()
    await back.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_origin_socket_resumes_its_background_run_exactly(layer, settings, paced, user) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "RUNS_CONTINUE_ON_DISCONNECT": True}
    asker = Client(user=user)
    hello = await asker.hello()
    await asker.prompt(f"Stream {TOKENS} tokens")
    before = await asker.until(protocol.DATA)
    before += [await asker.receive() for _ in range(5)]  # unmerged deltas: the resume point is inside merges
    await asker.close()
    path = f"/ws/agent/{hello['conversation_id']}/?resume={before[-1]['run_id']}&seq={before[-1]['seq']}"
    back = Client(path, user=user)
    await back.hello()
    after = await back.until_finished()
    assert_continues(before, after)
    assert after[-1]["status"] == protocol.STATUS_COMPLETED
    await back.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_resume_of_an_unknown_or_foreign_run_is_unavailable(layer, paced, user) -> None:
    other = Client(user=user)
    await other.hello()
    await other.prompt("Calculate 2+2")
    foreign = await other.until_finished()

    client = Client(user=user)
    await client.hello()
    for run_id in (str(uuid.uuid4()), foreign[-1]["run_id"]):
        await client.send({"type": "resume", "run_id": run_id, "seq": 3})
        error = await client.receive()
        assert (error["type"], error["code"]) == (protocol.ERROR, protocol.ERR_RESUME_UNAVAILABLE)
    for bad in ({"type": "resume", "run_id": "nope", "seq": 1}, {"type": "resume", "run_id": str(uuid.uuid4())}):
        await client.send(bad)
        assert (await client.receive())["code"] == protocol.ERR_INVALID_RESUME
    await client.close()
    await other.close()

    run_id = foreign[-1]["run_id"]
    # Only ASCII digits make a seq: Arabic-Indic digits, a trailing newline or a sign alone are refused.
    for query in (
        "resume=x&seq=1",
        f"resume={run_id}&seq=%D9%A1%D9%A2",
        f"resume={run_id}&seq=5%0A",
        f"resume={run_id}&seq=-",
    ):
        bad_url = Client(f"/ws/agent/{foreign[-1]['conversation_id']}/?{query}", user=user)
        await bad_url.hello()
        assert (await bad_url.receive())["code"] == protocol.ERR_INVALID_RESUME, query
        await bad_url.close()
