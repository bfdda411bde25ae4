"""A fake OpenAI chat completions API on 127.0.0.1: ``POST /v1/chat/completions`` streamed as the real one streams.

The server scripts the calculator conversation: a request whose last message is a ``tool`` message gets ``2+2 = 4.``
in several content deltas; one whose last user message asks to calculate gets a ``calculator`` tool call for
``2+2``, its arguments in pieces; any other gets ``GREETING``. Each request is recorded, a test can queue failures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.fake_sse import CUT, OK, STREAM_ERROR, THROTTLE, Exchange, FakeServer, sse

__all__ = ["CUT", "OK", "STREAM_ERROR", "THROTTLE", "FakeOpenAI"]

API_KEY = "sk-fake-openai"
TOOL_CALL_ID = "call_fake_2plus2"
TOOL_ARGUMENT_DELTAS = ['{"expression"', ': "2+2"}']
ANSWER_DELTAS = ["2+2", " = ", "4", "."]
ANSWER = "".join(ANSWER_DELTAS)
GREETING_DELTAS = ["Hello", " from", " the", " fake."]
GREETING = "".join(GREETING_DELTAS)
PARTIAL_DELTAS = ANSWER_DELTAS[:2]
# Usage reported in the last chunk of each answer: (prompt, completion, total) tokens.
TOOL_CALL_USAGE = (120, 18, 138)
ANSWER_USAGE = (160, 9, 169)
STREAM_ERROR_MESSAGE = "The server had an error while processing your request."
RATE_LIMIT_MESSAGE = "Rate limit reached for requests"

### Chunks ###


def chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    """One ``chat.completion.chunk`` event with a single choice."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [choice],
    }
    return sse(body)


def usage_chunk(model: str, usage: tuple[int, int, int]) -> bytes:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, the request's usage."""
    tokens = dict(zip(("prompt_tokens", "completion_tokens", "total_tokens"), usage, strict=True))
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [],
        "usage": tokens,
    }
    return sse(body)


def _ending(model: str, finish_reason: str, usage: tuple[int, int, int], include_usage: bool) -> Iterator[bytes]:
    yield chunk(model, {}, finish_reason)
    if include_usage:
        yield usage_chunk(model, usage)
    yield sse("[DONE]")


def tool_call_chunks(model: str, include_usage: bool) -> Iterator[bytes]:
    """The answer to a calculation: a ``calculator`` tool call, its JSON arguments in pieces."""
    yield chunk(model, {"role": "assistant", "content": None})
    start = {"index": 0, "id": TOOL_CALL_ID, "type": "function", "function": {"name": "calculator", "arguments": ""}}
    yield chunk(model, {"tool_calls": [start]})
    for piece in TOOL_ARGUMENT_DELTAS:
        yield chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield from _ending(model, "tool_calls", TOOL_CALL_USAGE, include_usage)


def text_chunks(model: str, pieces: list[str], include_usage: bool) -> Iterator[bytes]:
    """A text answer, a few characters per chunk."""
    yield chunk(model, {"role": "assistant", "content": ""})
    for piece in pieces:
        yield chunk(model, {"content": piece})
    yield from _ending(model, "stop", ANSWER_USAGE, include_usage)


def broken_chunks(model: str, mode: str) -> Iterator[bytes]:
    """A stream that starts answering, then fails: an error event (``STREAM_ERROR``) or nothing more (``CUT``)."""
    yield chunk(model, {"role": "assistant", "content": ""})
    for piece in PARTIAL_DELTAS:
        yield chunk(model, {"content": piece})
    if mode == STREAM_ERROR:
        yield sse({"error": {"message": STREAM_ERROR_MESSAGE, "type": "server_error", "param": None, "code": None}})


### Request checks ###


def text_of(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def conversation_problem(messages: list[dict[str, Any]]) -> str | None:
    """What the API would reject: no user message, or a tool call not answered by the tool messages after it."""
    if not any(message.get("role") == "user" for message in messages):
        return "messages must contain a user message."
    for position, message in enumerate(messages):
        calls = {call["id"] for call in message.get("tool_calls") or []}
        if message.get("role") != "assistant" or not calls:
            continue
        answered = set()
        for after in messages[position + 1 :]:
            if after.get("role") != "tool":
                break
            answered.add(after.get("tool_call_id"))
        if answered != calls:
            return "An assistant message with 'tool_calls' must be followed by tool messages responding to each."
    return None


### The server ###


class FakeOpenAI(FakeServer):
    """The fake API: point ``client_args={"base_url": fake.base_url + "/v1", "api_key": API_KEY}`` at it."""

    name = "fake-openai"

    def answer(self, exchange: Exchange) -> None:
        if exchange.path != "/v1/chat/completions":
            exchange.json(404, _error(f"Unknown request URL: POST {exchange.path}.", "invalid_request_error"))
            return
        mode = self.record(exchange)
        body = exchange.body
        messages = body.get("messages") or []
        model = body.get("model", "")
        problem = conversation_problem(messages) or ("" if body.get("stream") is True else "stream must be true.")
        if exchange.headers.get("authorization") != f"Bearer {API_KEY}":
            exchange.json(401, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
        elif problem:
            exchange.json(400, _error(problem, "invalid_request_error"))
        elif mode == THROTTLE:
            headers = {"retry-after-ms": "10", "x-ratelimit-remaining-requests": "0"}
            exchange.json(429, _error(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded"), headers)
        elif mode in (STREAM_ERROR, CUT):
            exchange.stream(broken_chunks(model, mode), cut=mode == CUT)
        else:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            exchange.stream(self._script(messages, model, include_usage))

    @staticmethod
    def _script(messages: list[dict[str, Any]], model: str, include_usage: bool) -> Iterator[bytes]:
        if messages[-1].get("role") == "tool":
            return text_chunks(model, ANSWER_DELTAS, include_usage)
        if "calculate" in text_of(messages[-1]).lower():
            return tool_call_chunks(model, include_usage)
        return text_chunks(model, GREETING_DELTAS, include_usage)


def _error(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}
