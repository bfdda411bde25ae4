"""Strands' OpenAI and Anthropic models, chosen by settings, driven over the WebSocket against fakes of their wires.

Each provider is set with the two settings the README shows (``MODEL`` and ``MODEL_OPTIONS``) and talks to a fake
server on 127.0.0.1 speaking its streaming format: OpenAI chat completions chunks, Anthropic messages events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured

from agentapp import protocol
from agentapp.models import Run, ToolResult
from tests import fake_anthropic, fake_openai
from tests.fake_sse import CUT, OK, STREAM_ERROR, THROTTLE, FakeServer
from tests.test_bedrock_wire import of_type, run_prompt, stored, texts, unmerged_types
from tests.test_history import assert_valid_history
from tests.wsclient import Client, streamed_text

MODEL_ID = "fake-model-1"
RETRY_ATTEMPTS = 3
THROTTLED_MESSAGE = "The model is throttling requests; try again shortly."
PARTIAL = "".join(fake_openai.PARTIAL_DELTAS)
assert fake_anthropic.PARTIAL_DELTAS == fake_openai.PARTIAL_DELTAS and fake_anthropic.ANSWER == fake_openai.ANSWER
ANSWER = fake_openai.ANSWER

### The providers ###


def openai_tool_result(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``tool`` messages of a chat completions request."""
    return [message for message in body["messages"] if message["role"] == "tool"]


def anthropic_tool_result(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``tool_result`` blocks of a messages request."""
    return [block for message in body["messages"] for block in fake_anthropic.blocks(message, "tool_result")]


@dataclass(frozen=True)
class Provider:
    """One provider under test: its fake, its settings, and what its wire looks like."""

    name: str
    fake: type[FakeServer]
    tool_use_id: str
    tool_results_in: Callable[[dict[str, Any]], list[dict[str, Any]]]
    # The tool result as the second request must carry it.
    expected_tool_result: dict[str, Any]
    usage: tuple[int, int, int]

    def options(self, server: FakeServer, **client_args: Any) -> dict[str, Any]:
        """``MODEL_OPTIONS`` pointing the SDK at the fake; Anthropic's key comes from ANTHROPIC_API_KEY."""
        if self.name == "openai":
            client_args = {"base_url": f"{server.base_url}/v1", "api_key": fake_openai.API_KEY, **client_args}
        else:
            client_args = {"base_url": server.base_url, **client_args}
        return {"model_id": MODEL_ID, "client_args": client_args}

    def text_of_user(self, message: dict[str, Any]) -> str:
        return fake_openai.text_of(message) if self.name == "openai" else fake_anthropic.text_of(message)


PROVIDERS = {
    "openai": Provider(
        "openai",
        fake_openai.FakeOpenAI,
        fake_openai.TOOL_CALL_ID,
        openai_tool_result,
        {"role": "tool", "tool_call_id": fake_openai.TOOL_CALL_ID, "content": "4"},
        (280, 27, 307),
    ),
    "anthropic": Provider(
        "anthropic",
        fake_anthropic.FakeAnthropic,
        fake_anthropic.TOOL_USE_ID,
        anthropic_tool_result,
        {
            "type": "tool_result",
            "tool_use_id": fake_anthropic.TOOL_USE_ID,
            "content": [{"type": "text", "text": "4"}],
            "is_error": False,
        },
        (280, 27, 307),
    ),
}


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key, base URL or proxy from the machine: only what the test sets reaches the SDKs."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake_anthropic.API_KEY)


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> Provider:
    return PROVIDERS[request.param]


@pytest.fixture
def server(provider: Provider) -> Iterator[FakeServer]:
    fake = provider.fake().start()
    yield fake
    fake.stop()


@pytest.fixture
def configure(settings: Any, sdk_env: None, provider: Provider, server: FakeServer) -> Callable[..., None]:
    """Set ``AGENTAPP``: the provider and its options (the two settings), plus any other settings given."""

    def apply(client_args: dict[str, Any] | None = None, **more: Any) -> None:
        settings.AGENTAPP = {
            **getattr(settings, "AGENTAPP", {}),
            "MODEL": provider.name,
            "MODEL_OPTIONS": provider.options(server, **(client_args or {})),
            **more,
        }

    apply()
    return apply


@pytest.fixture
def fast_throttling(configure: Callable[..., None]) -> None:
    """No SDK-level retries, and Strands' own retries without delay, so a 429 reaches the agent at once."""
    configure({"max_retries": 0}, MODEL_RETRY={"max_attempts": RETRY_ATTEMPTS, "initial_delay": 0, "max_delay": 0})


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


def assert_calculator_run(frames: list[dict[str, Any]], provider: Provider) -> None:
    """A complete 2+2 run as the running connection sees it."""
    tool_uses = of_type(frames, protocol.CURRENT_TOOL_USE)
    assert tool_uses and {frame["current_tool_use"]["name"] for frame in tool_uses} == {"calculator"}
    assert {frame["current_tool_use"]["toolUseId"] for frame in tool_uses} == {provider.tool_use_id}
    [result] = of_type(frames, protocol.TOOL_RESULT)
    assert result["tool_result"]["status"] == "success"
    assert texts(result["tool_result"]["content"]) == "4"
    assert streamed_text(frames) == ANSWER
    [final] = of_type(frames, protocol.RESULT)
    assert final["result"]["stop_reason"] == "end_turn"
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED


### A run over the WebSocket ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_calculator_run_streams_text_and_uses_the_tool(layer, configure, provider, server, user):
    runner = Client(user=user)
    conversation_id = (await runner.hello())["conversation_id"]
    watcher = Client(f"/ws/agent/{conversation_id}/", user=user)
    await watcher.hello()

    frames = await run_prompt(runner, "Calculate 2+2")
    watched = await watcher.until_finished()
    await runner.close()
    await watcher.close()

    assert_calculator_run(frames, provider)
    [result] = of_type(frames, protocol.RESULT)
    usage = result["result"]["usage"]
    assert (usage["inputTokens"], usage["outputTokens"], usage["totalTokens"]) == provider.usage
    assert unmerged_types(watched) == unmerged_types(frames)
    assert streamed_text(watched) == ANSWER

    # Two streamed requests; the second carries the calculator's result back in the provider's own format.
    first, second = (request["body"] for request in server.requests)
    assert first["model"] == second["model"] == MODEL_ID
    assert first["stream"] is True
    assert provider.tool_results_in(first) == []
    assert provider.text_of_user(first["messages"][-1]) == "Calculate 2+2"
    tool_names = {tool.get("function", tool)["name"] for tool in first["tools"]}
    assert "calculator" in tool_names
    assert provider.tool_results_in(second) == [provider.expected_tool_result]
    if provider.name == "openai":
        assert first["stream_options"] == {"include_usage": True}
        [call] = second["messages"][-2]["tool_calls"]
        assert call["id"] == fake_openai.TOOL_CALL_ID
        assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
            "calculator",
            {"expression": "2+2"},
        )
    else:
        [use] = fake_anthropic.blocks(second["messages"][-2], "tool_use")
        assert (use["id"], use["name"], use["input"]) == (
            fake_anthropic.TOOL_USE_ID,
            "calculator",
            {"expression": "2+2"},
        )

    rows = await stored(conversation_id)
    [run] = rows["runs"]
    assert (run.status, run.stop_reason) == (Run.Status.COMPLETED, "end_turn")
    assert (run.input_tokens, run.output_tokens, run.total_tokens) == provider.usage
    assert texts(rows["messages"][-1].content) == ANSWER
    [tool_result] = rows["tool_results"]
    assert (tool_result.tool_name, tool_result.status) == ("calculator", ToolResult.Status.SUCCESS)
    assert tool_result.tool_use_id == provider.tool_use_id
    assert tool_result.tool_input == {"expression": "2+2"}
    assert tool_result.content == [{"text": "4"}]
    assert_valid_history(rows["history"], ends_with_user=False)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failure", [STREAM_ERROR, CUT])
async def test_error_mid_stream_fails_the_run_and_keeps_the_partial_answer(configure, provider, server, user, failure):
    server.fail_next(OK, failure)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    frames = await run_prompt(client, "Calculate 2+2")

    assert of_type(frames, protocol.TOOL_RESULT)[0]["tool_result"]["status"] == "success"
    assert streamed_text(frames) == PARTIAL
    [error] = of_type(frames, protocol.ERROR)
    assert error["code"] == protocol.ERR_RUN_FAILED
    assert error["message"].startswith("The agent run failed (")
    assert "Traceback" not in error["message"] and server.base_url not in error["message"]
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    rows = await stored(conversation_id)
    [run] = rows["runs"]
    assert run.status == Run.Status.FAILED
    last = rows["messages"][-1]
    assert (last.role, last.partial, texts(last.content)) == ("assistant", True, PARTIAL)

    # The conversation goes on: the partial answer is sent back as the assistant's turn.
    after = await run_prompt(client, "Calculate 2+2 again")
    await client.close()

    assert_calculator_run(after, provider)
    resent = server.requests[2]["body"]["messages"]
    assert (resent[-2]["role"], provider.text_of_user(resent[-2])) == ("assistant", PARTIAL)
    assert provider.text_of_user(resent[-1]) == "Calculate 2+2 again"
    rows = await stored(conversation_id)
    assert [run.status for run in rows["runs"]] == [Run.Status.FAILED, Run.Status.COMPLETED]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_429_is_retried_by_strands_then_fails_as_model_throttled(fast_throttling, provider, server, user):
    server.fail_next(*[THROTTLE] * RETRY_ATTEMPTS)
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    frames = await run_prompt(client, "Calculate 2+2")

    # The SDK does not retry (max_retries 0); Strands does, one throttle frame per retry, then gives up.
    assert len(server.requests) == RETRY_ATTEMPTS
    assert len(of_type(frames, protocol.THROTTLED)) == RETRY_ATTEMPTS - 1
    [error] = of_type(frames, protocol.ERROR)
    assert (error["code"], error["message"]) == (protocol.ERR_MODEL_THROTTLED, THROTTLED_MESSAGE)
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    assert of_type(frames, protocol.DATA) == []
    [run] = (await stored(conversation_id))["runs"]
    assert (run.status, run.error) == (Run.Status.FAILED, THROTTLED_MESSAGE)

    after = await run_prompt(client, "Please calculate 2+2 again")
    await client.close()

    assert_calculator_run(after, provider)
    rows = await stored(conversation_id)
    assert [run.status for run in rows["runs"]] == [Run.Status.FAILED, Run.Status.COMPLETED]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_429_is_retried_by_the_sdk_by_default(configure, provider, server, user):
    # Both SDKs retry a 429 themselves (twice by default, after the server's retry-after-ms) before Strands sees it.
    server.fail_next(THROTTLE, THROTTLE)
    client = Client(user=user)
    await client.hello()

    frames = await run_prompt(client, "Calculate 2+2")
    await client.close()

    assert_calculator_run(frames, provider)
    assert of_type(frames, protocol.THROTTLED) == []
    assert len(server.requests) == 4
    assert server.requests[0]["body"] == server.requests[2]["body"]


### One model per process ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_connections_share_one_model(configure, provider, server, user, monkeypatch):
    import strands.models.anthropic
    import strands.models.openai

    module, name = {
        "openai": (strands.models.openai, "OpenAIModel"),
        "anthropic": (strands.models.anthropic, "AnthropicModel"),
    }[provider.name]
    model_class = getattr(module, name)
    built: list[Any] = []

    class Counted(model_class):  # type: ignore[misc, valid-type]
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            built.append(self)

    monkeypatch.setattr(module, name, Counted)
    clients = [Client(user=user) for _ in range(3)]
    for client in clients:
        await client.hello()
        frames = await run_prompt(client, "Say hello")
        assert streamed_text(frames) == fake_openai.GREETING
        assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    for client in clients:
        await client.close()

    assert len(built) == 1
    assert len(server.requests) == 3


### Misconfiguration ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("choice", "logged"),
    [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"), ("gemini", "'openai', 'anthropic'")],
)
async def test_a_misconfigured_model_answers_the_prompt_with_an_error_frame(
    settings, sdk_env, monkeypatch, caplog, user, choice, logged
):
    monkeypatch.delenv("ANTHROPIC_API_KEY")  # no key anywhere
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "MODEL": choice, "MODEL_OPTIONS": {}}
    client = Client(user=user)
    await client.hello()

    await client.prompt("Calculate 2+2")
    frames = await client.until(protocol.ERROR)
    await client.close()

    # The client learns the run did not start; the server log says what to fix.
    error = frames[-1]
    assert (error["code"], error["message"]) == (protocol.ERR_RUN_FAILED, "The agent could not be started.")
    assert of_type(frames, protocol.DATA) == []
    [record] = [record for record in caplog.records if record.exc_info and record.name.startswith("agentapp")]
    assert isinstance(record.exc_info[1], ImproperlyConfigured)
    assert logged in str(record.exc_info[1])
