"""Bad client frames: each gets an ``error`` frame with its own code, and the connection stays usable."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from agentapp import protocol
from agentapp.models import Message, Run
from tests.frames import deltas
from tests.wsclient import Client

# A small frame limit and a large prompt limit, so each of the two size checks can be hit on its own.
LIMITS = {"MAX_FRAME_BYTES": 300, "MAX_PROMPT_CHARS": 40, "OFFLINE_TOKENS_PER_SECOND": 0}

# (name, how to send it, expected error code)
BAD_FRAMES: list[tuple[str, dict[str, Any], str]] = [
    ("not_json", {"text": "{not json"}, protocol.ERR_INVALID_JSON),
    ("binary", {"bytes": b"\x00\x01binary"}, protocol.ERR_BINARY_FRAME),
    ("json_array", {"text": '[{"type": "prompt", "prompt": "hi"}]'}, protocol.ERR_INVALID_FRAME),
    ("json_number", {"text": "42"}, protocol.ERR_INVALID_FRAME),
    ("unknown_type", {"text": '{"type": "shout", "prompt": "hi"}'}, protocol.ERR_UNKNOWN_TYPE),
    ("no_type", {"text": '{"prompt": "hi"}'}, protocol.ERR_UNKNOWN_TYPE),
    ("prompt_missing", {"text": '{"type": "prompt"}'}, protocol.ERR_MISSING_PROMPT),
    ("prompt_empty", {"text": '{"type": "prompt", "prompt": "   "}'}, protocol.ERR_MISSING_PROMPT),
    ("prompt_not_string", {"text": '{"type": "prompt", "prompt": ["Calculate 2+2"]}'}, protocol.ERR_MISSING_PROMPT),
    ("prompt_too_large", {"text": json.dumps({"type": "prompt", "prompt": "x" * 41})}, protocol.ERR_PROMPT_TOO_LARGE),
    ("frame_too_large", {"text": json.dumps({"type": "prompt", "prompt": "Calculate 2+2", "pad": "y" * 300})},
     protocol.ERR_FRAME_TOO_LARGE),
    # Multi-byte characters: the limit counts bytes, not characters (100 chars, 400 bytes).
    ("frame_too_large_utf8", {"text": json.dumps({"type": "cancel", "pad": "\U0001f600" * 100}, ensure_ascii=False)},
     protocol.ERR_FRAME_TOO_LARGE),
]  # fmt: skip


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


async def assert_error(client: Client, conversation_id: str, code: str) -> dict[str, Any]:
    """Receive the next frame and check it is a clean ``error`` frame with ``code``."""
    frame = await client.receive()
    assert frame["type"] == protocol.ERROR, frame
    assert frame["code"] == code
    assert frame["conversation_id"] == conversation_id
    assert frame["message"] and "Traceback" not in frame["message"]
    assert "Traceback" not in client.raw[-1]
    return frame


async def assert_usable(client: Client, conversation_id: str) -> None:
    """A valid prompt on the same connection still runs to completion."""
    await client.prompt("Calculate 2+2")
    frames = await client.until_finished()
    assert frames[0]["type"] == protocol.RUN_STARTED
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert {frame["conversation_id"] for frame in frames} == {conversation_id}
    assert "4" in json.dumps(frames[-2]["result"]["message"])


def test_error_codes_are_distinct():
    """Each kind of bad frame has its own code (the two frame-size cases share one on purpose)."""
    codes = {name: code for name, _, code in BAD_FRAMES}
    kinds = {
        codes["not_json"],
        codes["binary"],
        codes["json_array"],
        codes["unknown_type"],
        codes["prompt_missing"],
        codes["prompt_too_large"],
        codes["frame_too_large"],
        protocol.ERR_BUSY,
        protocol.ERR_NO_ACTIVE_RUN,
    }
    assert len(kinds) == 9


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("name", "raw", "code"), BAD_FRAMES, ids=[name for name, _, _ in BAD_FRAMES])
async def test_bad_frame_gets_error_and_connection_survives(layer, settings, user, name, raw, code):
    settings.AGENTAPP = LIMITS
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    if "bytes" in raw:
        await client.send_bytes(raw["bytes"])
    else:
        await client.send_text(raw["text"])
    await assert_error(client, conversation_id, code)
    assert await Run.objects.filter(conversation_id=conversation_id).acount() == 0

    await assert_usable(client, conversation_id)
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_all_bad_frames_on_one_connection(layer, settings, user):
    """A client can keep sending garbage; every frame is answered and nothing else happens."""
    settings.AGENTAPP = LIMITS
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    for _, raw, code in BAD_FRAMES:
        if "bytes" in raw:
            await client.send_bytes(raw["bytes"])
        else:
            await client.send_text(raw["text"])
        await assert_error(client, conversation_id, code)
    await assert_usable(client, conversation_id)
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_second_prompt_while_running_is_busy(layer, settings, user):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 50}
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    await client.prompt("Stream 200 tokens")
    started = await client.receive()
    assert started["type"] == protocol.RUN_STARTED
    await client.prompt("Calculate 2+2")
    # The run's frames keep coming; the busy error is among them, outside the run (no run_id).
    frames = await client.until(protocol.ERROR)
    error = frames[-1]
    assert error["code"] == protocol.ERR_BUSY
    assert error["conversation_id"] == conversation_id
    assert "run_id" not in error
    assert "Traceback" not in error["message"]
    assert all(frame.get("run_id") == started["run_id"] for frame in frames[:-1])

    await client.cancel()
    finished = (await client.until_finished())[-1]
    assert finished["run_id"] == started["run_id"]
    assert finished["status"] == protocol.STATUS_CANCELLED
    # Only the first prompt became a run.
    assert await Run.objects.filter(conversation_id=conversation_id).acount() == 1

    await assert_usable(client, conversation_id)
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_without_a_run_is_an_error(layer, settings, user):
    """No run on this connection nor anywhere in the conversation: ``no_active_run``, on every layer."""
    settings.AGENTAPP = LIMITS
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    await client.cancel()
    await assert_error(client, conversation_id, protocol.ERR_NO_ACTIVE_RUN)
    await assert_usable(client, conversation_id)
    # After a finished run there is again nothing to cancel.
    await client.cancel()
    await assert_error(client, conversation_id, protocol.ERR_NO_ACTIVE_RUN)
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_sent_with_the_prompt_stops_the_run(layer, settings, user):
    """A cancel that arrives while the run is still starting (history loading) is not lost."""
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 50}
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    await client.prompt("Stream 200 tokens")
    await client.cancel()
    frames = await client.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_CANCELLED
    assert [frame for frame in frames if frame["type"] == protocol.ERROR] == []
    assert deltas(frames) < 200
    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == Run.Status.CANCELLED
    # The cut answer is stored partial: what was streamed, or Strands' placeholder when nothing was.
    rows = [row async for row in Message.objects.filter(conversation_id=conversation_id).order_by("position")]
    assert [(row.role, row.partial) for row in rows] == [("user", False), ("assistant", True)]
    streamed = "".join(frame["data"] for frame in frames if frame["type"] == protocol.DATA)
    if streamed:
        assert rows[1].content == [{"text": streamed}]
    await assert_usable(client, conversation_id)
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_prompt_right_after_run_finished_is_accepted(layer, settings, user):
    """run_finished means the connection takes a new prompt, even while the group broadcast still flushes."""
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    for _ in range(3):
        await client.prompt("Stream 50 tokens")
        frames = await client.until_finished()
        assert [frame for frame in frames if frame["type"] == protocol.ERROR] == []
        assert frames[0]["type"] == protocol.RUN_STARTED
        assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    await client.close()
    statuses = [run.status async for run in Run.objects.filter(conversation_id=conversation_id)]
    assert statuses == [Run.Status.COMPLETED] * 3
