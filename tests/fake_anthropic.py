"""A fake Anthropic Messages API on 127.0.0.1: ``POST /v1/messages`` streamed as the real one streams.

The server scripts the calculator conversation: a request whose last message carries a ``tool_result`` gets
``2+2 = 4.`` in several ``text_delta`` events; one whose last user message asks to calculate gets a ``calculator``
``tool_use`` block whose input arrives as ``input_json_delta`` pieces; any other gets ``GREETING``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

from tests.fake_sse import CUT, OK, STREAM_ERROR, THROTTLE, Exchange, FakeServer, sse

__all__ = ["CUT", "OK", "STREAM_ERROR", "THROTTLE", "FakeAnthropic"]

API_KEY = "sk-ant-fake"
TOOL_USE_ID = "toolu_fake_2plus2"
TOOL_INPUT_DELTAS = ['{"expression"', ': "2+2"}']
ANSWER_DELTAS = ["2+2", " = ", "4", "."]
ANSWER = "".join(ANSWER_DELTAS)
GREETING_DELTAS = ["Hello", " from", " the", " fake."]
GREETING = "".join(GREETING_DELTAS)
PARTIAL_DELTAS = ANSWER_DELTAS[:2]
# Usage of each answer: (input tokens in message_start, output tokens in message_delta).
TOOL_USE_USAGE = (120, 18)
ANSWER_USAGE = (160, 9)
OVERLOADED_MESSAGE = "Overloaded"
RATE_LIMIT_MESSAGE = "Number of request tokens has exceeded your per-minute rate limit"

### Events ###


def event(event_type: str, **fields: Any) -> bytes:
    """One named SSE event whose data carries the same ``type``."""
    return sse({"type": event_type, **fields}, event=event_type)


def message_start(model: str, input_tokens: int) -> bytes:
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    return event("message_start", message=message)


def _ending(stop_reason: str, output_tokens: int) -> Iterator[bytes]:
    yield event("content_block_stop", index=0)
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    yield event("message_delta", delta=delta, usage={"output_tokens": output_tokens})
    yield event("message_stop")


def tool_use_events(model: str) -> Iterator[bytes]:
    """The answer to a calculation: a ``calculator`` tool_use block, its input JSON in pieces."""
    yield message_start(model, TOOL_USE_USAGE[0])
    block = {"type": "tool_use", "id": TOOL_USE_ID, "name": "calculator", "input": {}}
    yield event("content_block_start", index=0, content_block=block)
    yield event("ping")
    for piece in TOOL_INPUT_DELTAS:
        yield event("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": piece})
    yield from _ending("tool_use", TOOL_USE_USAGE[1])


def text_events(model: str, pieces: list[str]) -> Iterator[bytes]:
    """A text answer, a few characters per ``text_delta``."""
    yield message_start(model, ANSWER_USAGE[0])
    yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    for piece in pieces:
        yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
    yield from _ending("end_turn", ANSWER_USAGE[1])


def broken_events(model: str, mode: str) -> Iterator[bytes]:
    """A stream that starts answering, then fails: an ``error`` event (``STREAM_ERROR``) or nothing (``CUT``)."""
    yield message_start(model, ANSWER_USAGE[0])
    yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    for piece in PARTIAL_DELTAS:
        yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
    if mode == STREAM_ERROR:
        yield event("error", error={"type": "overloaded_error", "message": OVERLOADED_MESSAGE})


### Request checks ###


def blocks(message: dict[str, Any], block_type: str) -> list[dict[str, Any]]:
    """The content blocks of one type in a message (string content has none)."""
    content = message.get("content")
    return [block for block in content if block.get("type") == block_type] if isinstance(content, list) else []


def text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else "".join(block.get("text", "") for block in blocks(message, "text"))


def conversation_problem(body: dict[str, Any]) -> str | None:
    """What the API would reject: missing fields, roles not alternating from user, a tool_use left unanswered."""
    messages = body.get("messages") or []
    if not isinstance(body.get("max_tokens"), int) or not body.get("model"):
        return "model and max_tokens are required."
    if not messages or messages[0].get("role") != "user":
        return "messages: the first message must use the user role."
    for before, after in pairwise(messages):
        if before.get("role") == after.get("role"):
            return "messages: roles must alternate between user and assistant."
        uses = {block["id"] for block in blocks(before, "tool_use")}
        answered = {block["tool_use_id"] for block in blocks(after, "tool_result")}
        if uses != answered:
            return "messages: each tool_use block must have a tool_result block in the next message."
    return None


### The server ###


class FakeAnthropic(FakeServer):
    """The fake API: point ``client_args={"base_url": fake.base_url, "api_key": API_KEY}`` at it."""

    name = "fake-anthropic"

    def answer(self, exchange: Exchange) -> None:
        if exchange.path != "/v1/messages":
            exchange.json(404, _error("not_found_error", f"Not found: {exchange.path}"))
            return
        mode = self.record(exchange)
        body = exchange.body
        model = body.get("model", "")
        problem = conversation_problem(body) or ("" if body.get("stream") is True else "stream must be true.")
        if exchange.headers.get("x-api-key") != API_KEY:
            exchange.json(401, _error("authentication_error", "invalid x-api-key"))
        elif not exchange.headers.get("anthropic-version"):
            exchange.json(400, _error("invalid_request_error", "anthropic-version: header is required"))
        elif problem:
            exchange.json(400, _error("invalid_request_error", problem))
        elif mode == THROTTLE:
            exchange.json(429, _error("rate_limit_error", RATE_LIMIT_MESSAGE), {"retry-after-ms": "10"})
        elif mode in (STREAM_ERROR, CUT):
            exchange.stream(broken_events(model, mode), cut=mode == CUT)
        else:
            exchange.stream(self._script(body["messages"], model))

    @staticmethod
    def _script(messages: list[dict[str, Any]], model: str) -> Iterator[bytes]:
        if blocks(messages[-1], "tool_result"):
            return text_events(model, ANSWER_DELTAS)
        if "calculate" in text_of(messages[-1]).lower():
            return tool_use_events(model)
        return text_events(model, GREETING_DELTAS)


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}
