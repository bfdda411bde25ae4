"""Server-Sent Events: the WebSocket protocol's server frames over plain HTTP, for clients without WebSockets.

Each request drives an ``AgentConsumer`` through a ``LoopbackSocket``, so authorization, limits, runs, persistence
and broadcast are those of the WebSocket path; only the transport differs. ``GET`` watches a conversation (an
``EventSource``; ``Last-Event-ID`` resumes a run), ``POST`` sends one client frame and streams the frames that
answer it. See docs/sse.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.db import connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from . import params, protocol
from .access import is_authenticated, may_prompt
from .api_conversations import error, query_error
from .conf import app_settings
from .consumers import AgentConsumer
from .loopback import LoopbackSocket
from .outbox import write_flow

logger = logging.getLogger(__name__)

# HTTP status of a refused connection, by the WebSocket close code the consumer used.
HTTP_STATUS_OF_CLOSE = {
    protocol.CLOSE_LOGIN_REQUIRED: 401,
    protocol.CLOSE_FORBIDDEN: 403,
    protocol.CLOSE_NOT_FOUND: 404,
}
# Beyond the replay wait, how long opening the consumer may take before the request gives up.
CONNECT_SLACK_SECONDS = 10
# The comment that keeps an idle stream open through proxies.
KEEP_ALIVE = b": keep-alive\n\n"
# How long an EventSource waits before reconnecting after the stream ends, in milliseconds.
RECONNECT_MILLISECONDS = 2000
# ``<run uuid>:<seq>``: ASCII only, seq -1 or up to 15 digits (below 2**53, as a JSON client keeps it).
_EVENT_ID_RE = re.compile(r"([0-9a-fA-F-]{32,36}):(-1|[0-9]{1,15})")
# Values of ``?presence=``, and whether each asks for presence frames.
PRESENCE_VALUES = {"1": True, "true": True, "0": False, "false": False}

consumer_application = AgentConsumer.as_asgi()


### Encoding ###


def event_id(frame: dict[str, Any]) -> str | None:
    """``<run_id>:<seq>`` for a frame of a run (what ``Last-Event-ID`` sends back), None for the others."""
    if isinstance(frame.get("run_id"), str) and isinstance(frame.get("seq"), int):
        return f"{frame['run_id']}:{frame['seq']}"
    return None


def encode_event(frame: dict[str, Any]) -> bytes:
    """One SSE ``message`` event whose data is the frame's JSON (which never holds a raw newline)."""
    identifier = event_id(frame)
    head = f"id: {identifier}\n" if identifier else ""
    return f"{head}data: {protocol.encode_frame(frame)}\n\n".encode()


def parse_event_id(value: str) -> tuple[str, int] | None:
    """The resume point in a ``Last-Event-ID``, or None when it is not exactly one of ours."""
    match = _EVENT_ID_RE.fullmatch(value)
    if match is None:
        return None
    run_id = params.canonical_uuid(match.group(1))
    return (run_id, int(match.group(2))) if run_id is not None else None


### Requests ###


async def _scope(request: HttpRequest, conversation_id: Any, query: dict[str, str]) -> dict[str, Any]:
    """The WebSocket scope the consumer sees for this request: the same user, session, path and client."""
    user = await request.auser()
    if not is_authenticated(user) and app_settings.ALLOW_ANONYMOUS and not request.session.session_key:
        await request.session.asave()  # the conversation belongs to this session: its cookie goes out
    asgi_scope = getattr(request, "scope", {})  # an ASGIRequest's own: its headers (cookies, origin) and client
    kwargs = {"conversation_id": conversation_id} if conversation_id is not None else {}
    path = f"/ws/agent/{conversation_id}/" if conversation_id is not None else "/ws/agent/"
    return {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urlencode(query).encode(),
        "headers": list(asgi_scope.get("headers", [])),
        "client": asgi_scope.get("client"),
        "user": user,
        "session": request.session,
        "url_route": {"args": (), "kwargs": kwargs},
        "subprotocols": [],
    }


async def connect_consumer(request: HttpRequest, conversation_id: Any, query: dict[str, str]) -> tuple[Any, Any]:
    """Open the consumer and read its first frame: ``(socket, conversation frame)`` or ``(None, error response)``."""
    socket = LoopbackSocket(
        consumer_application, await _scope(request, conversation_id, query), app_settings.SOCKET_QUEUE_FRAMES
    )
    socket.open()
    try:
        first = await socket.receive(timeout=app_settings.SYNC_TIMEOUT_SECONDS + CONNECT_SLACK_SECONDS)
        if first is not None and first.get("type") == protocol.CONVERSATION:
            return socket, first
        while await socket.receive(timeout=CONNECT_SLACK_SECONDS) is not None:
            pass  # the refusal's close follows its error frame
    except TimeoutError:
        await socket.close()
        return None, error(503, protocol.ERR_SERVER_BUSY, "The conversation could not be opened in time.")
    await socket.close()
    code = (first or {}).get("code", protocol.ERR_RUN_FAILED)
    message = (first or {}).get("message", "The connection was refused.")
    return None, error(HTTP_STATUS_OF_CLOSE.get(socket.close_code or 0, 400), code, message)


async def release_database() -> None:
    """Close the database connection this request's thread opened (session, user): a stream may last for hours."""
    await sync_to_async(connections.close_all)()


def stream_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """An event stream's response: never cached, passed on by proxies as it comes."""
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come
    return response


class Drain:
    """Waits, before each event, until the client has read what the server holds for it (``agentapp.server`` only).

    Meanwhile the consumer's frames wait in the loopback's bounded queue, then in its outbox, which closes the stream
    as a slow consumer; a buffer that stays full for ``SOCKET_WRITE_STALL_SECONDS`` drops the connection.
    """

    def __init__(self, request: HttpRequest) -> None:
        self.flow = write_flow(getattr(request, "scope", {}))
        self._drained = asyncio.Event()
        if self.flow is not None and hasattr(self.flow, "attach"):
            self.flow.attach()
            self.flow.on_drain(self._drained.set)
        else:
            self.flow = None

    async def wait(self) -> bool:
        """True once the buffer is below its high-water mark; False (the connection dropped) if it stays full."""
        flow = self.flow
        if flow is None or not flow.paused:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + app_settings.SOCKET_WRITE_STALL_SECONDS
        while flow.paused and loop.time() < deadline:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), deadline - loop.time())
        if flow.paused:
            logger.info(
                "agentapp: dropping a stream whose client read nothing for %ss", app_settings.SOCKET_WRITE_STALL_SECONDS
            )
            flow.abort()
            return False
        return True

    def close(self) -> None:
        if self.flow is not None:
            self.flow.detach()


async def _events(
    socket: LoopbackSocket, hello: dict[str, Any], answer: AnswerFilter | None, drain: Drain
) -> AsyncIterator[bytes]:
    """The stream: the conversation frame, then frames (all, or those answering a POST) with keep-alive comments.

    The consumer is told the client left however the stream ends, so a run it started is cancelled as on a socket.
    """
    try:
        yield f"retry: {RECONNECT_MILLISECONDS}\n\n".encode()
        yield encode_event(hello)
        async for frame in received(socket, drain):
            if frame is None:
                yield KEEP_ALIVE
            elif answer is None or answer.wants(frame):
                yield encode_event(frame)
            if answer is not None and answer.done:
                return
    finally:
        drain.close()
        await socket.close()


async def received(socket: LoopbackSocket, drain: Drain) -> AsyncIterator[dict[str, Any] | None]:
    """The consumer's frames as the client takes them, None after ``SSE_KEEPALIVE_SECONDS`` without one (time for a
    keep-alive comment), until the consumer closes."""
    while await drain.wait():
        try:
            frame = await socket.receive(timeout=app_settings.SSE_KEEPALIVE_SECONDS)
        except TimeoutError:
            yield None
            continue
        if frame is None:
            return
        yield frame


class AnswerFilter:
    """Picks, from everything a connection receives, the frames that answer one client frame, and sees the end.

    A prompt or an approval answer is answered by the run it starts (to its ``run_finished``) or by a refusal
    (an ``error`` outside any run); a cancel by the end of the run or wait it stopped, or by a refusal. A queued
    prompt is answered by ``run_queued``, then by that run only, to its end (or its ``run_dequeued``).
    """

    def __init__(self, frame_type: str, hello: dict[str, Any]) -> None:
        self.frame_type = frame_type
        active = hello.get("active_run") or {}
        # A run already in progress when we connected is someone else's: its replayed frames are not the answer.
        self.foreign = {active["run_id"]} if active.get("run_id") else set()
        self.done = False
        # The queued run the prompt became, once its ``run_queued`` came.
        self.queued: str | None = None

    def wants(self, frame: dict[str, Any]) -> bool:
        """Whether the frame belongs in the answer; sets ``done`` at the last one."""
        frame_type, run_id = frame.get("type"), frame.get("run_id")
        if frame_type == protocol.ERROR and not run_id:
            self.done = True
            return True
        if self.frame_type == protocol.CLIENT_CANCEL:
            self.done = frame_type in (protocol.RUN_FINISHED, protocol.INTERRUPT_RESOLVED, protocol.RUN_DEQUEUED)
            return self.done
        if frame_type == protocol.RUN_QUEUED and self.queued is None:
            self.queued = run_id
            return True
        if self.queued is not None and run_id != self.queued:
            return False
        if frame_type == protocol.RUN_DEQUEUED:
            self.done = True
            return True
        if run_id in self.foreign or frame_type == protocol.INTERRUPT_RESOLVED:
            return False
        self.done = frame_type == protocol.RUN_FINISHED
        return True


async def stream(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    """``GET``: watch the conversation as an event stream. ``POST``: send one client frame, stream its answer."""
    if request.method == "GET" and conversation_id is not None:
        return await watch(request, str(conversation_id))
    if request.method == "POST":
        return await post_frame(request, str(conversation_id) if conversation_id is not None else None)
    allowed = "GET, POST" if conversation_id is not None else "POST"
    response = error(405, "method_not_allowed", f"Use {allowed}.")
    response["Allow"] = allowed
    return response


async def watch(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """Every frame of the conversation, live; ``Last-Event-ID`` (or ``?last_event_id=``) resumes a run after it.

    ``?presence=1`` adds the ``presence`` frames, as on the WebSocket; the stream counts as a watcher either way.
    """
    try:
        given = params.query(request)
        presence = params.choice(given, "presence", tuple(PRESENCE_VALUES)) or "0"
        in_query = params.single(given, "last_event_id")
    except params.ParameterError as refused:
        return query_error(refused)
    query: dict[str, str] = {"presence": "1"} if PRESENCE_VALUES[presence] else {}
    resume = None
    # Both are checked; the header, which the browser keeps current, wins. An empty header is none (as sent).
    for last in (in_query, request.headers.get("Last-Event-ID") or None):
        if last is not None:
            resume = parse_event_id(last)
            if resume is None:
                return error(400, protocol.ERR_INVALID_RESUME, "Last-Event-ID must be an id this stream sent.")
    if resume is not None:
        query.update(resume=resume[0], seq=str(resume[1]))
    socket, hello = await connect_consumer(request, conversation_id, query)
    if socket is None:
        return hello
    await release_database()
    return stream_response(_events(socket, hello, None, Drain(request)))


async def post_frame(request: HttpRequest, conversation_id: str | None) -> HttpResponse:
    """Send the JSON client frame in the body (``prompt``, ``cancel`` or ``interrupt_response``), stream the answer.

    Without a conversation id a new conversation is opened: its id is in the first (``conversation``) event.
    """
    try:
        body = request.body
    except RequestDataTooBig:
        return error(413, protocol.ERR_FRAME_TOO_LARGE, f"Frames are limited to {app_settings.MAX_FRAME_BYTES} bytes.")
    try:
        frame = protocol.parse_client_frame(
            body.decode("utf-8", errors="strict"), None, app_settings.MAX_FRAME_BYTES, app_settings.MAX_PROMPT_CHARS
        )
    except UnicodeDecodeError:
        return error(400, protocol.ERR_INVALID_JSON, "The body must be UTF-8 JSON.")
    except protocol.ProtocolError as refused:
        status = 413 if refused.code in (protocol.ERR_FRAME_TOO_LARGE, protocol.ERR_PROMPT_TOO_LARGE) else 400
        return error(status, refused.code, refused.message)
    if frame.type == protocol.CLIENT_RESUME:
        return error(400, protocol.ERR_UNKNOWN_TYPE, "Resume with GET and Last-Event-ID, not a resume frame.")
    if frame.type == protocol.CLIENT_FEEDBACK:  # answered by no run: the API gives it a plain JSON answer
        return error(400, protocol.ERR_UNKNOWN_TYPE, "Give feedback with POST api/conversations/<id>/feedback/.")
    socket, hello = await connect_consumer(request, conversation_id, {})
    if socket is None:
        return hello
    if not may_prompt(hello.get("role")):
        await socket.close()
        return error(403, protocol.ERR_READ_ONLY, "You may watch this conversation, not prompt, cancel or answer.")
    socket.send(body.decode("utf-8"))
    await release_database()
    return stream_response(_events(socket, hello, AnswerFilter(frame.type, hello), Drain(request)))
