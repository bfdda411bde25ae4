"""Text a database cannot store (NUL, lone surrogates) is made storable and marked; a failed write fails the run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from strands import Agent, tool

from agentapp import protocol, recorder
from agentapp.models import Conversation, Message, Run, ToolResult
from agentapp.runner import AgentRun
from agentapp.storable import REPLACEMENT, storable, storable_text
from tests.test_persistence import RecordingModel

NUL_OUTPUT = "before\x00after \ud800 end"


@tool
def emits_nul() -> str:
    """Return text with a NUL character and a lone surrogate, as a careless tool might."""
    return NUL_OUTPUT


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


def agent() -> Agent:
    return Agent(model=RecordingModel(), tools=[emits_nul], callback_handler=None)


async def execute(conversation: Conversation, prompt: str) -> tuple[AgentRun, list[dict[str, Any]]]:
    frames: list[dict[str, Any]] = []

    async def emit(frame: dict[str, Any]) -> None:
        frames.append(frame)

    run = AgentRun(agent(), prompt, str(conversation.pk), emit, user_id=conversation.owner_id)
    await run.execute(time_limit=60)
    return run, frames


def texts(content: list[dict[str, Any]]) -> str:
    return "".join(block.get("text", "") for block in content)


### The cleaning itself ###


def test_clean_text_is_returned_unchanged():
    content = [{"text": "plain ascii"}, {"text": "accents é and emoji 😀"}, {"toolUse": {"input": {"n": 1}}}]
    assert storable(content) == (content, False)
    assert storable(content)[0] is content


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a\x00b", f"a{REPLACEMENT}b"),
        ("é\x00", f"é{REPLACEMENT}"),
        ("lone \ud800 high", f"lone {REPLACEMENT} high"),
        ("lone \udfff low", f"lone {REPLACEMENT} low"),
        ("\x00\ud83d\ude00", REPLACEMENT * 3),  # surrogate halves in a Python str are lone, even side by side
    ],
)
def test_unstorable_characters_become_replacement_characters(raw, clean):
    assert storable_text(raw) == clean
    assert storable(raw) == (clean, True)
    clean.encode("utf-8")


def test_nested_values_and_keys_are_cleaned():
    value = {"toolUse": {"input": {"k\x00": ["ok", "x\ud800"]}}, "n": 3}
    cleaned, changed = storable(value)
    assert changed
    assert cleaned == {"toolUse": {"input": {f"k{REPLACEMENT}": ["ok", f"x{REPLACEMENT}"]}}, "n": 3}
    json.dumps(cleaned, ensure_ascii=False).encode("utf-8")


def test_a_frame_with_a_lone_surrogate_still_encodes_as_utf8():
    text = protocol.encode_frame({"type": "data", "data": "x\ud800y"})
    text.encode("utf-8")
    assert json.loads(text)["data"] == "x\ud800y"


### Runs ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_tool_result_with_nul_is_stored_with_its_answer(user, settings):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    conversation = await Conversation.objects.acreate(owner=user)

    run, frames = await execute(conversation, "Call emits_nul with {}")

    assert frames[-1]["type"] == protocol.RUN_FINISHED
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert not [frame for frame in frames if frame["type"] == protocol.ERROR]
    rows = [row async for row in Message.objects.filter(conversation=conversation).order_by("position")]
    assert [row.role for row in rows] == ["user", "assistant", "user", "assistant"]
    assert [row.altered for row in rows] == [False, False, True, True]
    tool_row = await ToolResult.objects.aget(conversation=conversation)
    assert texts(tool_row.content) == storable_text(NUL_OUTPUT)
    assert storable_text(NUL_OUTPUT) in texts(rows[-1].content)
    assert (await Run.objects.aget(pk=run.run_id)).status == Run.Status.COMPLETED


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prompt", ["Calculate 2+2 \x00", "Calculate 2+2 \ud800", "\x00"])
async def test_a_prompt_with_unstorable_text_gets_its_answer(user, settings, prompt):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    conversation = await Conversation.objects.acreate(owner=user)

    run, frames = await execute(conversation, prompt)

    assert frames[0]["type"] == protocol.RUN_STARTED
    assert frames[0]["prompt"] == storable_text(prompt)
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    first = await Message.objects.filter(conversation=conversation).order_by("position").afirst()
    assert (first.content, first.altered) == ([{"text": storable_text(prompt)}], True)
    assert (await Run.objects.aget(pk=run.run_id)).prompt == storable_text(prompt)
    assert (await Conversation.objects.aget(pk=conversation.pk)).title == storable_text(prompt)[:80]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_write_that_fails_fails_the_run_visibly(user, settings, monkeypatch):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    conversation = await Conversation.objects.acreate(owner=user)
    write_message = recorder.write_message

    def failing(conversation_id: Any, run_id: Any, position: int, message: Any, *args: Any) -> None:
        if message["role"] == "assistant":
            raise RuntimeError("the database refused it")
        write_message(conversation_id, run_id, position, message, *args)

    monkeypatch.setattr(recorder, "write_message", failing)

    run, frames = await execute(conversation, "Stream 20 tokens")

    errors = [frame for frame in frames if frame["type"] == protocol.ERROR]
    assert [error["code"] for error in errors] == [protocol.ERR_STORAGE_FAILED]
    assert "database refused" not in errors[0]["message"]
    assert frames[-1]["type"] == protocol.RUN_FINISHED
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    saved = await Run.objects.aget(pk=run.run_id)
    assert saved.status == Run.Status.FAILED
    assert saved.error
