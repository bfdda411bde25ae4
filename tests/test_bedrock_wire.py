"""The real Bedrock path (strands' BedrockModel on boto3) against a fake Bedrock Runtime on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from strands.models.bedrock import BedrockModel

from agentapp import protocol
from agentapp.agents import build_default_agent, build_model
from agentapp.history import UNANSWERED_NOTE, load_messages
from agentapp.models import Message, Run, ToolResult
from tests import fake_bedrock
from tests.fake_bedrock import ANSWER, ANSWER_USAGE, PARTIAL_DELTAS, TOOL_USE_USAGE, FakeBedrock
from tests.frames import assert_contiguous
from tests.test_history import assert_valid_history
from tests.wsclient import Client, streamed_text

MODEL_ID = "fake.calculator-v1:0"
RETRY_ATTEMPTS = 3
THROTTLED_MESSAGE = "The model is throttling requests; try again shortly."


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Dummy credentials and no way to any AWS host: no profile files, no instance metadata, no proxy."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    server = FakeBedrock().start()
    yield server
    server.stop()


@pytest.fixture
def bedrock(settings: Any, aws_env: None, fake: FakeBedrock) -> FakeBedrock:
    """The default agent on Bedrock, pointed at the fake, with fast retries and no botocore-level retries."""
    settings.AGENTAPP = {
        **getattr(settings, "AGENTAPP", {}),
        "MODEL": "bedrock",
        "BEDROCK_MODEL_ID": MODEL_ID,
        "BEDROCK_ENDPOINT_URL": fake.endpoint_url,
        "BEDROCK_CLIENT_CONFIG": {"retries": {"total_max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10},
        "BEDROCK_RETRY": {"max_attempts": RETRY_ATTEMPTS, "initial_delay": 0, "max_delay": 0},
    }
    return fake


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


def of_type(frames: list[dict[str, Any]], frame_type: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == frame_type]


def texts(content: list[dict[str, Any]]) -> str:
    return "".join(block.get("text", "") for block in content)


def tool_results_in(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every toolResult block of a recorded ConverseStream request."""
    return [
        block["toolResult"] for message in body["messages"] for block in message["content"] if "toolResult" in block
    ]


@database_sync_to_async
def stored(conversation_id: str) -> dict[str, Any]:
    """The conversation's rows, read in Channels' database thread (which closes its connection after use)."""
    return {
        "runs": list(Run.objects.filter(conversation_id=conversation_id).order_by("started_at")),
        "messages": list(Message.objects.filter(conversation_id=conversation_id).order_by("position")),
        "tool_results": list(ToolResult.objects.filter(conversation_id=conversation_id)),
        "history": load_messages(conversation_id),
    }


async def run_prompt(client: Client, prompt: str) -> list[dict[str, Any]]:
    await client.prompt(prompt)
    return await client.until_finished()


def unmerged_types(frames: list[dict[str, Any]]) -> list[str]:
    """Frame types, leaving out those the group broadcast merges (text deltas, tool-use updates)."""
    return [frame["type"] for frame in frames if frame["type"] not in (protocol.DATA, protocol.CURRENT_TOOL_USE)]


def assert_calculator_run(frames: list[dict[str, Any]]) -> None:
    """A complete 2+2 run as the running connection sees it."""
    tool_uses = of_type(frames, protocol.CURRENT_TOOL_USE)
    assert tool_uses and {frame["current_tool_use"]["name"] for frame in tool_uses} == {"calculator"}
    assert {frame["current_tool_use"]["toolUseId"] for frame in tool_uses} == {fake_bedrock.TOOL_USE_ID}
    [result] = of_type(frames, protocol.TOOL_RESULT)
    assert result["tool_result"]["name"] == "calculator"
    assert result["tool_result"]["status"] == "success"
    assert texts(result["tool_result"]["content"]) == "4"
    assert streamed_text(frames) == ANSWER
    [final] = of_type(frames, protocol.RESULT)
    assert final["result"]["stop_reason"] == "end_turn"
    assert texts(final["result"]["message"]["content"]) == ANSWER
    assert frames[-1]["type"] == protocol.RUN_FINISHED
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert_contiguous(frames)


### The event-stream framing, checked by botocore's own decoder ###


def test_fake_framing_decodes_with_botocore():
    messages = [
        fake_bedrock.event("contentBlockDelta", {"delta": {"text": "2+2 é"}, "contentBlockIndex": 0}),
        fake_bedrock.exception("throttlingException", "Too many requests"),
    ]
    wire = b"".join(messages)
    buffer = EventStreamBuffer()
    for start in range(0, len(wire), 7):  # in awkward pieces, as a socket delivers them
        buffer.add_data(wire[start : start + 7])
    first, second = list(buffer)

    assert first.headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(first.payload) == {"delta": {"text": "2+2 é"}, "contentBlockIndex": 0}
    assert first.to_response_dict()["status_code"] == 200
    assert second.headers[":message-type"] == "exception"
    assert second.headers[":exception-type"] == "throttlingException"
    assert json.loads(second.payload) == {"message": "Too many requests"}
    assert second.to_response_dict()["status_code"] == 400


def test_fake_framing_crc_is_checked():
    wire = bytearray(fake_bedrock.event("messageStop", {"stopReason": "end_turn"}))
    wire[-6] ^= 0x01  # one flipped payload bit
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(wire))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


### Settings to BedrockModel ###


def test_settings_point_boto3_at_the_endpoint(bedrock):
    model = build_model()

    assert isinstance(model, BedrockModel)
    assert model.config["model_id"] == MODEL_ID
    assert model.client.meta.endpoint_url == bedrock.endpoint_url
    assert model.client.meta.region_name == "us-east-1"
    assert model.client.meta.config.retries["total_max_attempts"] == 1
    assert model.client.meta.config.read_timeout == 10
    agent = build_default_agent(None, None)
    assert agent._retry_strategy._max_attempts == RETRY_ATTEMPTS
    assert bedrock.requests == []  # building the model contacts nobody


def test_bedrock_options_win_over_the_named_settings(bedrock, settings):
    settings.AGENTAPP = {
        **settings.AGENTAPP,
        "BEDROCK_OPTIONS": {"endpoint_url": "http://127.0.0.1:9", "max_tokens": 64},
    }
    model = build_model()

    assert model.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert model.config["max_tokens"] == 64


### A run over the WebSocket ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_calculator_run_through_bedrock(layer, bedrock, user):
    runner = Client(user=user)
    conversation_id = (await runner.hello())["conversation_id"]
    watcher = Client(f"/ws/agent/{conversation_id}/", user=user)
    await watcher.hello()

    frames = await run_prompt(runner, "Calculate 2+2")
    watched = await watcher.until_finished()
    await runner.close()
    await watcher.close()

    assert_calculator_run(frames)
    [result] = of_type(frames, protocol.RESULT)
    usage = result["result"]["usage"]
    assert usage == {
        "inputTokens": TOOL_USE_USAGE[0] + ANSWER_USAGE[0],
        "outputTokens": TOOL_USE_USAGE[1] + ANSWER_USAGE[1],
        "totalTokens": TOOL_USE_USAGE[2] + ANSWER_USAGE[2],
    }

    # The watcher gets the same run through the group: deltas merged, nothing lost or repeated.
    assert {frame["run_id"] for frame in watched} == {frames[0]["run_id"]}
    assert unmerged_types(watched) == unmerged_types(frames)
    assert of_type(watched, protocol.CURRENT_TOOL_USE)[-1]["current_tool_use"]["name"] == "calculator"
    assert of_type(watched, protocol.TOOL_RESULT)[0]["tool_result"]["content"] == [{"text": "4"}]
    assert streamed_text(watched) == ANSWER
    assert watched[-1]["status"] == protocol.STATUS_COMPLETED

    # Two ConverseStream calls; the second carries the calculator's result back to the model.
    assert [request["model_id"] for request in bedrock.requests] == [MODEL_ID, MODEL_ID]
    first, second = (request["body"] for request in bedrock.requests)
    assert tool_results_in(first) == []
    assert first["messages"][-1] == {"role": "user", "content": [{"text": "Calculate 2+2"}]}
    assert "calculator" in {tool["toolSpec"]["name"] for tool in first["toolConfig"]["tools"]}
    [sent] = tool_results_in(second)
    assert sent["toolUseId"] == fake_bedrock.TOOL_USE_ID
    assert sent["content"] == [{"text": "4"}]
    assert bedrock.requests[0]["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDFAKEFAKEFAKE/")

    rows = await stored(conversation_id)
    [run] = rows["runs"]
    assert str(run.pk) == frames[0]["run_id"]
    assert run.status == Run.Status.COMPLETED
    assert run.stop_reason == "end_turn"
    assert (run.input_tokens, run.output_tokens, run.total_tokens) == (280, 27, 307)
    assert run.usage == usage
    messages = rows["messages"]
    assert [(message.role, message.partial) for message in messages] == [
        ("user", False),
        ("assistant", False),
        ("user", False),
        ("assistant", False),
    ]
    assert messages[1].content[0]["toolUse"]["input"] == {"expression": "2+2"}
    assert texts(messages[3].content) == ANSWER
    [tool_result] = rows["tool_results"]
    assert (tool_result.tool_name, tool_result.status) == ("calculator", ToolResult.Status.SUCCESS)
    assert tool_result.tool_use_id == fake_bedrock.TOOL_USE_ID
    assert tool_result.tool_input == {"expression": "2+2"}
    assert tool_result.content == [{"text": "4"}]
    assert tool_result.message_id == messages[2].pk


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_throttling_fails_the_run_then_the_conversation_goes_on(layer, bedrock, user):
    bedrock.fail_next(*[fake_bedrock.THROTTLE] * RETRY_ATTEMPTS)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    frames = await run_prompt(client, "Calculate 2+2")

    # Strands retried (one throttle frame per retry), then gave up: no more requests than attempts.
    assert len(bedrock.requests) == RETRY_ATTEMPTS
    assert len(of_type(frames, protocol.THROTTLED)) == RETRY_ATTEMPTS - 1
    [error] = of_type(frames, protocol.ERROR)
    assert error["code"] == protocol.ERR_MODEL_THROTTLED
    assert error["message"] == THROTTLED_MESSAGE
    assert error["run_id"] == frames[0]["run_id"]
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    assert of_type(frames, protocol.DATA) == []
    [run] = (await stored(conversation_id))["runs"]
    assert run.status == Run.Status.FAILED
    assert run.error == THROTTLED_MESSAGE

    after = await run_prompt(client, "Calculate 2+2")
    await client.close()

    assert_calculator_run(after)
    # The failed turn is closed by a stored note: the new prompt is sent on its own, never merged into the old one.
    retried = bedrock.requests[RETRY_ATTEMPTS]["body"]["messages"]
    assert retried == [
        {"role": "user", "content": [{"text": "Calculate 2+2"}]},
        {"role": "assistant", "content": [{"text": UNANSWERED_NOTE}]},
        {"role": "user", "content": [{"text": "Calculate 2+2"}]},
    ]
    rows = await stored(conversation_id)
    assert_valid_history(rows["history"], ends_with_user=False)
    assert [run.status for run in rows["runs"]] == [Run.Status.FAILED, Run.Status.COMPLETED]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("exception_type", [fake_bedrock.STREAM_ERROR, fake_bedrock.STREAM_INTERNAL])
async def test_mid_stream_error_keeps_the_partial_answer(layer, bedrock, user, exception_type):
    bedrock.fail_next(fake_bedrock.OK, exception_type)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    frames = await run_prompt(client, "Calculate 2+2")

    assert of_type(frames, protocol.TOOL_RESULT)[0]["tool_result"]["status"] == "success"
    assert streamed_text(frames) == "".join(PARTIAL_DELTAS)
    [error] = of_type(frames, protocol.ERROR)
    assert error["code"] == protocol.ERR_RUN_FAILED
    assert "Traceback" not in error["message"]
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    rows = await stored(conversation_id)
    [run] = rows["runs"]
    assert run.status == Run.Status.FAILED
    last = rows["messages"][-1]
    assert (last.role, last.partial, texts(last.content)) == ("assistant", True, "".join(PARTIAL_DELTAS))

    after = await run_prompt(client, "Calculate 2+2 again")
    await client.close()

    assert_calculator_run(after)
    assert len(bedrock.requests) == 4
    resent = bedrock.requests[2]["body"]["messages"]
    assert resent[-2] == {"role": "assistant", "content": [{"text": "".join(PARTIAL_DELTAS)}]}
    assert resent[-1] == {"role": "user", "content": [{"text": "Calculate 2+2 again"}]}
    rows = await stored(conversation_id)
    assert_valid_history(rows["history"], ends_with_user=False)
    assert [run.status for run in rows["runs"]] == [Run.Status.FAILED, Run.Status.COMPLETED]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_throttling_after_a_tool_round_is_reported_as_throttling(layer, bedrock, user):
    # Strands wraps this throttle in EventLoopException; the error code still says what happened.
    bedrock.fail_next(fake_bedrock.OK, *[fake_bedrock.THROTTLE] * RETRY_ATTEMPTS)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    frames = await run_prompt(client, "Calculate 2+2")
    await client.close()

    assert of_type(frames, protocol.TOOL_RESULT)[0]["tool_result"]["status"] == "success"
    [error] = of_type(frames, protocol.ERROR)
    assert error["code"] == protocol.ERR_MODEL_THROTTLED
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    [run] = (await stored(conversation_id))["runs"]
    assert run.error == THROTTLED_MESSAGE


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_mid_stream_throttles_save_only_the_last_attempts_text(layer, bedrock, user):
    # Each retry streams the answer again from the start; the saved partial text is the last attempt's alone.
    bedrock.fail_next(fake_bedrock.OK, *[fake_bedrock.STREAM_THROTTLED] * RETRY_ATTEMPTS)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    frames = await run_prompt(client, "Calculate 2+2")
    await client.close()

    assert len(of_type(frames, protocol.THROTTLED)) == RETRY_ATTEMPTS - 1
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    last = (await stored(conversation_id))["messages"][-1]
    assert (last.role, last.partial, texts(last.content)) == ("assistant", True, "".join(PARTIAL_DELTAS))
