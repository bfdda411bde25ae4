"""The AG-UI endpoint: an AG-UI ``RunAgentInput`` in, the run's AG-UI events out as ``text/event-stream``.

Like Server-Sent Events (``agentapp.sse``), each request drives an ``AgentConsumer`` through a ``LoopbackSocket``:
access, limits, runs, persistence, broadcast and cancel are the WebSocket path's own. The input becomes one client
frame (a ``prompt``, or an ``interrupt_response`` for a resume: approvals, and results of the client's own tools);
``agentapp.agui_events`` translates the frames that answer it. The client's tools reach the agent that connection
builds through the consumer's scope (``agentapp.agui_tools``). ``GET`` joins the thread: its snapshots, and the run
in progress from its start. See docs/agui.md.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ag_ui.core import RunAgentInput, TextPart, ToolMessage, UserMessage
from ag_ui.encoder import EventEncoder
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from pydantic import ValidationError

from . import protocol
from .access import may_prompt
from .agui_events import RunTranslator
from .agui_state import saved_state
from .agui_tools import (
    NO_PARAMETERS,
    ClientTool,
    FrontendTools,
    ToolDeclarationError,
    checked_tools,
    is_frontend_interrupt,
    result_answer,
    waiting_calls,
)
from .api_conversations import error
from .conf import app_settings
from .dbwork import db_call
from .loopback import LoopbackSocket
from .preparing import SCOPE_EXTEND_AGENT
from .sse import KEEP_ALIVE, AnswerFilter, Drain, connect_consumer, received, release_database, stream_response
from .submitting import RUN_HERE_SCOPE_KEY

# The error code of a body that is not a valid AG-UI ``RunAgentInput`` (or does not fit its URL).
ERR_INVALID_INPUT = "invalid_input"
# The error code of ``tools`` the server refuses (too many, a bad name, a schema too large or not one).
ERR_INVALID_TOOLS = "invalid_tools"
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

    Of ``messages`` only the last user message and the tool messages after it (results of the client's tools) are
    validated (and kept): the rest is never read, and a client's whole history validated on every request would
    cost the server's event loop a quarter second per megabyte.
    """
    try:
        data = protocol.decode_json(body, max_items=MAX_INPUT_JSON_ITEMS)
    except protocol.ProtocolError as refused:
        raise InputError(400, refused.code, refused.message) from None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        data["messages"] = _kept_messages(data["messages"])
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


def _kept_messages(messages: list[Any]) -> list[Any]:
    """The last user message and at most ``MAX_RESPONSES`` tool messages after it, in order."""
    kept: list[Any] = []
    for message in reversed(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user":
            kept.append(message)
            break
        if role == "tool" and len(kept) < protocol.MAX_RESPONSES:
            kept.append(message)
    return kept[::-1]


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


def tool_results(run_input: RunAgentInput) -> list[ToolMessage]:
    """The tool messages after the last user message: results of the client's tools."""
    return [message for message in run_input.messages if isinstance(message, ToolMessage)]


def tool_text(message: ToolMessage) -> str:
    """A tool message's text (its text parts, when its content is a list)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content if isinstance(part, TextPart))


def client_frame(run_input: RunAgentInput, pending: dict[str, Any] | None = None) -> dict[str, Any]:
    """The client frame a ``RunAgentInput`` stands for: an ``interrupt_response`` when it resumes, else a ``prompt``.

    It resumes when it answers interrupts in ``resume``, or carries a tool message for a frontend tool call the
    ``pending`` run (the ``conversation`` frame's ``pending_approval``) waits for. A resume entry ``resolved`` with
    ``{"approved": true}`` approves its tool call; any other entry denies it. A tool message is its call's result
    (an error if it has ``error``).
    """
    responses: dict[str, dict[str, str]] = {}
    waiting = waiting_calls((pending or {}).get("interrupts") or [])
    for message in tool_results(run_input):
        if message.tool_call_id in waiting:
            responses[waiting[message.tool_call_id]] = result_answer(tool_text(message), message.error)
    if run_input.resume:
        for entry in run_input.resume:
            payload = entry.payload if isinstance(entry.payload, dict) else {}
            approved = entry.status == "resolved" and payload.get("approved") is True
            answer = {"decision": "approve" if approved else "deny"}
            if isinstance(payload.get("text"), str):
                answer["text"] = payload["text"]
            elif entry.status == "cancelled":
                answer["text"] = "Cancelled."
            responses[entry.interrupt_id] = answer
    if responses or run_input.resume:
        return {"type": protocol.CLIENT_INTERRUPT_RESPONSE, "responses": responses}
    return {"type": protocol.CLIENT_PROMPT, "prompt": prompt_of(run_input)}


def frontend_tools(declared_tools: list[ClientTool], pending: dict[str, Any] | None) -> FrontendTools:
    """The client's declared tools, and those the pending run waits on that it left out (a resume calls them)."""
    tools = list(declared_tools)
    declared = {tool.name for tool in tools}
    for payload in (pending or {}).get("interrupts") or []:
        name = str(payload["reason"].get("tool")) if is_frontend_interrupt(payload) else ""
        if name and name not in declared:
            declared.add(name)
            tools.append(ClientTool(name, name, dict(NO_PARAMETERS)))
    return FrontendTools(tools)


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


async def _state_of(conversation_id: str) -> dict[str, Any]:
    """The conversation's saved ``agent.state``, read from the request (whose database connection is then closed)."""
    state = await db_call(saved_state)(conversation_id)
    await release_database()
    return state


class RunFilter:
    """Picks, from everything a connection receives, the frames of one run (joined in progress), and sees its end."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.done = False

    def wants(self, frame: dict[str, Any]) -> bool:
        """Whether the frame is the run's; sets ``done`` at its ``run_finished``."""
        if frame.get("run_id") != self.run_id:
            return False
        self.done = frame.get("type") == protocol.RUN_FINISHED
        return True


async def _events(
    socket: LoopbackSocket, answer: AnswerFilter | RunFilter, translator: RunTranslator, drain: Drain
) -> AsyncIterator[bytes]:
    """The AG-UI events of the frames answering the request, with keep-alive comments, until its run ends.

    The agent's saved state is read again when the run finishes (a STATE_DELTA if it changed). The consumer is told
    the client left however the stream ends, so a run it started is cancelled as on a socket.
    """
    try:
        async for frame in received(socket, drain):
            if frame is None:
                yield KEEP_ALIVE
            elif answer.wants(frame):
                if frame.get("type") == protocol.RUN_FINISHED and translator.state is not None:
                    translator.end_state(await _state_of(translator.thread_id))
                if events := translator.translate(frame):
                    yield encode(events)
            if answer.done:
                break
        if closing := translator.end():
            yield encode(closing)
    finally:
        drain.close()
        await socket.close()


def _event_stream(events: AsyncIterator[bytes]) -> HttpResponse:
    response = stream_response(events)
    response["Content-Type"] = _encoder.get_content_type() + "; charset=utf-8"
    return response


async def run(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    """``POST`` a ``RunAgentInput``: run it in a new conversation (``agui/``) or in this one (``agui/<id>/``).

    ``GET agui/<id>/`` joins the thread (``join``).
    """
    if request.method == "GET" and conversation_id is not None:
        return await join(request, str(conversation_id))
    if request.method != "POST":
        allowed = "GET, POST" if conversation_id is not None else "POST"
        response = error(405, "method_not_allowed", f"Use {allowed}.")
        response["Allow"] = allowed
        return response
    conversation = str(conversation_id) if conversation_id is not None else None
    try:
        try:
            body = request.body
        except RequestDataTooBig:
            too_large = "The body is over DATA_UPLOAD_MAX_MEMORY_SIZE."
            raise InputError(413, protocol.ERR_FRAME_TOO_LARGE, too_large) from None
        run_input = read_input(body, conversation)
        declared = checked_tools(run_input.tools or [])
    except ToolDeclarationError as refused:
        return error(400, ERR_INVALID_TOOLS, str(refused))
    except InputError as refused:
        return error(refused.status, refused.code, refused.message)
    socket, hello = await connect_consumer(request, conversation, {})
    if socket is None:
        return hello
    if not may_prompt(hello.get("role")):
        await socket.close()
        return error(403, protocol.ERR_READ_ONLY, "You may watch this conversation, not prompt, cancel or answer.")
    pending = hello.get("pending_approval")
    try:
        text, frame = checked_frame(client_frame(run_input, pending))
    except InputError as refused:
        await socket.close()
        return error(refused.status, refused.code, refused.message)
    tools = frontend_tools(declared, pending)
    if tools.tools:
        # The consumer opened with this very scope dict; it reads the key when it builds its agent for the frame below.
        socket.scope[SCOPE_EXTEND_AGENT] = tools
    socket.scope[RUN_HERE_SCOPE_KEY] = True  # the request streams its run: it runs here, never on a worker
    state = await _state_of(hello["conversation_id"])  # the state the run starts from: nothing else runs now
    socket.send(text)
    translator = RunTranslator(hello["conversation_id"], run_input.run_id, hello.get("messages") or [], state)
    return _event_stream(_events(socket, AnswerFilter(frame.type, hello), translator, Drain(request)))


async def join(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """``GET agui/<id>/``: the thread as an AG-UI run, for a client that (re)connects to it.

    With a run in progress: that run from its start (RUN_STARTED, the snapshots, its events so far, then live, to
    its RUN_FINISHED), as a WebSocket opened mid-run gets it. Without one: RUN_STARTED, the snapshots and
    RUN_FINISHED, whose outcome holds the interrupts still waiting for an answer.
    """
    socket, hello = await connect_consumer(request, conversation_id, {})
    if socket is None:
        return hello
    state = await _state_of(conversation_id)
    active = hello.get("active_run")
    history = hello.get("messages") or []
    if active:
        translator = RunTranslator(conversation_id, None, history, state, joining=True)
        return _event_stream(_events(socket, RunFilter(active["run_id"]), translator, Drain(request)))
    await socket.close()
    translator = RunTranslator(conversation_id, str(uuid.uuid4()), history, state)
    return _event_stream(_once(encode(translator.at_rest(hello.get("pending_approval")))))


async def _once(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk
