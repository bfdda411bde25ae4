"""A fake Amazon Bedrock Runtime on 127.0.0.1: ``ConverseStream`` answered in AWS event-stream framing.

The server scripts the calculator conversation: a request whose last message carries no toolResult gets a
``calculator`` toolUse for ``2+2``; one whose last message carries a toolResult gets ``2+2 = 4.`` in several
text deltas. Each request body is recorded, and a test can queue failures (throttling, mid-stream errors).
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any
from urllib.parse import unquote

EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
TOOL_USE_ID = "tooluse_fake_2plus2"
TOOL_INPUT_DELTAS = ['{"expression"', ': "2+2"}']
ANSWER_DELTAS = ["2+2", " = ", "4", "."]
ANSWER = "".join(ANSWER_DELTAS)
# Usage reported in the metadata event of each answer: (input, output, total) tokens.
TOOL_USE_USAGE = (120, 18, 138)
ANSWER_USAGE = (160, 9, 169)
LATENCY_MS = 42

# Failure modes a test can queue with ``FakeBedrock.fail_next``.
OK = "ok"  # no failure: the scripted answer
THROTTLE = "throttle"  # HTTP 429 ThrottlingException before any event
STREAM_ERROR = "modelStreamErrorException"  # exception event after a few text deltas
STREAM_THROTTLED = "throttlingException"
STREAM_INTERNAL = "internalServerException"
STREAM_EXCEPTIONS = (STREAM_ERROR, STREAM_THROTTLED, STREAM_INTERNAL)
PARTIAL_DELTAS = ANSWER_DELTAS[:2]

### Event-stream encoding ###


def _string_header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode("utf-8"), value.encode("utf-8")
    return struct.pack("!B", len(name_bytes)) + name_bytes + struct.pack("!BH", 7, len(value_bytes)) + value_bytes


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude and its CRC, string headers, payload, message CRC."""
    header_bytes = b"".join(_string_header(name, value) for name, value in headers.items())
    total_length = 12 + len(header_bytes) + len(payload) + 4
    prelude = struct.pack("!II", total_length, len(header_bytes))
    head = prelude + struct.pack("!I", zlib.crc32(prelude)) + header_bytes + payload
    return head + struct.pack("!I", zlib.crc32(head))


def event(event_type: str, body: dict[str, Any]) -> bytes:
    """An ``event`` message whose JSON payload is the member shape of ``event_type``."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, json.dumps(body).encode("utf-8"))


def exception(exception_type: str, message: str) -> bytes:
    """An ``exception`` message, as Bedrock sends when a stream fails after it started."""
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, json.dumps({"message": message}).encode("utf-8"))


def _metadata(usage: tuple[int, int, int]) -> bytes:
    tokens = dict(zip(("inputTokens", "outputTokens", "totalTokens"), usage, strict=True))
    return event("metadata", {"usage": tokens, "metrics": {"latencyMs": LATENCY_MS}})


def tool_use_events() -> Iterator[bytes]:
    """The answer to a fresh prompt: a calculator toolUse for 2+2."""
    yield event("messageStart", {"role": "assistant"})
    start = {"toolUse": {"toolUseId": TOOL_USE_ID, "name": "calculator"}}
    yield event("contentBlockStart", {"start": start, "contentBlockIndex": 0})
    for piece in TOOL_INPUT_DELTAS:
        yield event("contentBlockDelta", {"delta": {"toolUse": {"input": piece}}, "contentBlockIndex": 0})
    yield event("contentBlockStop", {"contentBlockIndex": 0})
    yield event("messageStop", {"stopReason": "tool_use"})
    yield _metadata(TOOL_USE_USAGE)


def answer_events() -> Iterator[bytes]:
    """The answer once the tool result is in: the text, a few characters per delta."""
    yield event("messageStart", {"role": "assistant"})
    for piece in ANSWER_DELTAS:
        yield event("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": 0})
    yield event("contentBlockStop", {"contentBlockIndex": 0})
    yield event("messageStop", {"stopReason": "end_turn"})
    yield _metadata(ANSWER_USAGE)


def broken_events(exception_type: str) -> Iterator[bytes]:
    """A stream that starts answering, then fails with an exception message."""
    yield event("messageStart", {"role": "assistant"})
    for piece in PARTIAL_DELTAS:
        yield event("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": 0})
    yield exception(exception_type, "The model stream failed.")


### Request checks ###


def last_has_tool_result(messages: list[dict[str, Any]]) -> bool:
    """Whether the newest message answers a tool use."""
    return bool(messages) and any("toolResult" in block for block in messages[-1].get("content", []))


def conversation_problem(messages: list[dict[str, Any]]) -> str | None:
    """What Bedrock would reject in ``messages``: roles must alternate from user, tool uses must be answered."""
    if not messages or messages[0].get("role") != "user":
        return "A conversation must start with a user message."
    for before, after in pairwise(messages):
        if before.get("role") == after.get("role"):
            return "A conversation must alternate between user and assistant roles."
        uses = {block["toolUse"]["toolUseId"] for block in before.get("content", []) if "toolUse" in block}
        answered = {block["toolResult"]["toolUseId"] for block in after.get("content", []) if "toolResult" in block}
        if uses != answered and before.get("role") == "assistant":
            return "Each toolUse must be answered by a toolResult in the next turn."
    if messages[-1].get("role") != "user":
        return "The last message must come from the user."
    return None


### The server ###


class FakeBedrock:
    """The fake service: start it, point boto3 at ``endpoint_url``, read ``requests`` afterwards."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-bedrock", daemon=True
        )

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeBedrock:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail_next(self, *modes: str) -> None:
        """Answer the next requests, one per mode, with these failures; later requests succeed."""
        with self._lock:
            self._failures.extend(modes)

    def record(self, model_id: str, headers: dict[str, str], body: dict[str, Any]) -> str | None:
        """Keep one request; return the failure mode it gets, if any."""
        with self._lock:
            self.requests.append({"model_id": model_id, "headers": headers, "body": body})
            return self._failures.pop(0) if self._failures else None


def _handler_for(fake: FakeBedrock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            parts = self.path.split("/")
            if len(parts) != 4 or parts[1] != "model" or parts[3] != "converse-stream":
                self._error(404, "UnknownOperationException", f"No operation at {self.path}.")
                return
            mode = fake.record(unquote(parts[2]), dict(self.headers), body)
            messages = body.get("messages", [])
            problem = conversation_problem(messages)
            if problem:
                self._error(400, "ValidationException", problem)
            elif mode == THROTTLE:
                self._error(429, "ThrottlingException", "Too many requests")
            elif mode in STREAM_EXCEPTIONS:
                self._stream(broken_events(mode))
            elif last_has_tool_result(messages):
                self._stream(answer_events())
            else:
                self._stream(tool_use_events())

        def _error(self, status: int, error_type: str, message: str) -> None:
            payload = json.dumps({"message": message}).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("x-amzn-ErrorType", error_type)
            self.send_header("x-amzn-RequestId", "fake-request")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _stream(self, messages: Iterator[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", EVENTSTREAM_CONTENT_TYPE)
            self.send_header("x-amzn-RequestId", "fake-request")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for message in messages:  # one HTTP chunk per event, flushed, as a real stream arrives
                self.wfile.write(f"{len(message):x}\r\n".encode("ascii") + message + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler
