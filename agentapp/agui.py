"""The AG-UI endpoint: an AG-UI ``RunAgentInput`` in, the run's AG-UI events out as ``text/event-stream``.

Like Server-Sent Events (``agentapp.sse``), each request drives an ``AgentConsumer`` through a ``LoopbackSocket``:
access, limits, runs, persistence, broadcast and cancel are the WebSocket path's own. The input becomes one client
frame (a ``prompt``, or an ``interrupt_response`` for a resume); ``agentapp.agui_events`` translates the frames that
answer it. See docs/agui.md.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ag_ui.core import RunAgentInput, TextPart, UserMessage
from ag_ui.encoder import EventEncoder
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from pydantic import ValidationError

from . import protocol
from .access import may_prompt
from .agui_events import RunTranslator
from .api_conversations import error
from .conf import app_settings
from .loopback import LoopbackSocket
from .sse import AnswerFilter, _connect, _Drain, _release_database, _stream_response

# The error code of a body that is not a valid AG-UI ``RunAgentInput`` (or does not fit its URL).
ERR_INVALID_INPUT = "invalid_input"
# Arrays, objects and values a ``RunAgentInput`` may hold: a client sends the thread's whole history with each run.
# Counted before parsing, as every JSON a client sends is (``protocol.decode_json``); numbers and depth are bounded.
MAX_INPUT_JSON_ITEMS = 50_000

_encoder = EventEncoder()


class InputError(Exception):
    """A request that cannot be run: its HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


### Input ###


def read_input(body: bytes, conversation_id: str | None) -> RunAgentInput:
    """The request body as a ``RunAgentInput``; on ``agui/<id>/`` its ``threadId`` must be that id.

    Of ``messages`` only the last user message is validated (and kept): the rest is never read, and a client's whole
    history validated on every request would cost the server's event loop a quarter second per megabyte.
    """
    try:
        data = protocol.decode_json(body, max_items=MAX_INPUT_JSON_ITEMS)
    except protocol.ProtocolError as refused:
        raise InputError(400, refused.code, refused.message) from None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        users = (m for m in reversed(data["messages"]) if isinstance(m, dict) and m.get("role") == "user")
        data["messages"] = list(itertools.islice(users, 1))
    try:
        run_input = RunAgentInput.model_validate(data)
    except ValidationError as invalid:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in invalid.errors()[:5]
        )
        raise InputError(400, ERR_INVALID_INPUT, f"The body is not an AG-UI RunAgentInput ({problems}).") from None
    if conversation_id is not None and _canonical(run_input.thread_id) != conversation_id:
        raise InputError(400, ERR_INVALID_INPUT, "threadId must be the conversation id in the URL.")
    return run_input


def _canonical(thread_id: str) -> str | None:
    try:
        return str(uuid.UUID(thread_id))
    except ValueError:
        return None


def prompt_of(run_input: RunAgentInput) -> str:
    """The text of the last user message: the prompt (the server's stored history is the rest)."""
    for message in reversed(run_input.messages):
        if isinstance(message, UserMessage):
            if isinstance(message.content, str):
                return message.content
            return "".join(part.text for part in message.content if isinstance(part, TextPart))
    return ""


def client_frame(run_input: RunAgentInput) -> dict[str, Any]:
    """The client frame a ``RunAgentInput`` stands for: an ``interrupt_response`` when it resumes, else a ``prompt``.

    A resume entry ``resolved`` with ``{"approved": true}`` approves its tool call; any other entry denies it.
    """
    if run_input.resume:
        responses = {}
        for entry in run_input.resume:
            payload = entry.payload if isinstance(entry.payload, dict) else {}
            approved = entry.status == "resolved" and payload.get("approved") is True
            answer = {"decision": "approve" if approved else "deny"}
            if isinstance(payload.get("text"), str):
                answer["text"] = payload["text"]
            elif entry.status == "cancelled":
                answer["text"] = "Cancelled."
            responses[entry.interrupt_id] = answer
        return {"type": protocol.CLIENT_INTERRUPT_RESPONSE, "responses": responses}
    return {"type": protocol.CLIENT_PROMPT, "prompt": prompt_of(run_input)}


def checked_frame(frame: dict[str, Any]) -> tuple[str, protocol.ClientFrame]:
    """The frame's JSON and its validation by the WebSocket's own parser, with SSE's statuses for its refusals."""
    text = json.dumps(frame)
    try:
        parsed = protocol.parse_client_frame(text, None, app_settings.MAX_FRAME_BYTES, app_settings.MAX_PROMPT_CHARS)
    except protocol.ProtocolError as refused:
        status = 413 if refused.code in (protocol.ERR_FRAME_TOO_LARGE, protocol.ERR_PROMPT_TOO_LARGE) else 400
        raise InputError(status, refused.code, refused.message) from None
    return text, parsed


### The stream ###


def encode(events: list[Any]) -> bytes:
    """AG-UI events as server-sent events, by the official encoder."""
    return "".join(_encoder.encode(event) for event in events).encode()


async def _events(
    socket: LoopbackSocket, answer: AnswerFilter, translator: RunTranslator, drain: _Drain
) -> AsyncIterator[bytes]:
    """The AG-UI events of the frames answering the request, with keep-alive comments, until its run ends.

    The consumer is told the client left however the stream ends, so a run it started is cancelled as on a socket.
    """
    try:
        while not answer.done and await drain.wait():
            try:
                frame = await socket.receive(timeout=app_settings.SSE_KEEPALIVE_SECONDS)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if frame is None:
                break
            if answer.wants(frame) and (events := translator.translate(frame)):
                yield encode(events)
        if closing := translator.end():
            yield encode(closing)
    finally:
        drain.close()
        await socket.close()


async def run(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    """``POST`` a ``RunAgentInput``: run it in a new conversation (``agui/``) or in this one (``agui/<id>/``)."""
    if request.method != "POST":
        response = error(405, "method_not_allowed", "Use POST.")
        response["Allow"] = "POST"
        return response
    conversation = str(conversation_id) if conversation_id is not None else None
    try:
        try:
            body = request.body
        except RequestDataTooBig:
            too_large = "The body is over DATA_UPLOAD_MAX_MEMORY_SIZE."
            raise InputError(413, protocol.ERR_FRAME_TOO_LARGE, too_large) from None
        run_input = read_input(body, conversation)
        text, frame = checked_frame(client_frame(run_input))
    except InputError as refused:
        return error(refused.status, refused.code, refused.message)
    socket, hello = await _connect(request, conversation, {})
    if socket is None:
        return hello
    if not may_prompt(hello.get("role")):
        await socket.close()
        return error(403, protocol.ERR_READ_ONLY, "You may watch this conversation, not prompt, cancel or answer.")
    socket.send(text)
    await _release_database()
    translator = RunTranslator(hello["conversation_id"], run_input.run_id, hello.get("messages") or [])
    response = _stream_response(_events(socket, AnswerFilter(frame.type, hello), translator, _Drain(request)))
    response["Content-Type"] = _encoder.get_content_type() + "; charset=utf-8"
    return response
