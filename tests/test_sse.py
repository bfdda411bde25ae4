"""Server-Sent Events: the same frames, authorization, limits and persistence as the WebSocket, over HTTP."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from agentapp import protocol, sse
from agentapp.models import Conversation, ConversationMember, Message, Run, ToolResult
from tests.frames import assert_contiguous, deltas
from tests.test_resume import TOKENS, assert_continues
from tests.wsclient import Client, streamed_text

TIMEOUT = 10


async def logged_in(user: Any, **options: Any) -> AsyncClient:
    client = AsyncClient(**options)
    await client.aforce_login(user)
    return client


class EventReader:
    """Reads one event-stream response: each event's id and decoded frame, with a timeout on every read."""

    def __init__(self, response: Any) -> None:
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/event-stream")
        self.response = response
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        # Reading happens in a task, as in Django's ASGI handler: a client hanging up cancels that task.
        self._pump = asyncio.create_task(self._read(aiter(response.streaming_content)))
        self._buffer = b""
        self.comments: list[str] = []

    async def _read(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            self._chunks.put_nowait(chunk)
        self._chunks.put_nowait(None)

    async def _next_chunk(self) -> bytes:
        chunk = await asyncio.wait_for(self._chunks.get(), TIMEOUT)
        if chunk is None:
            self._chunks.put_nowait(None)
            raise StopAsyncIteration
        return chunk

    async def block(self) -> list[str]:
        """The lines of the next event (a blank line ends one); comments are noted in ``comments``."""
        while b"\n\n" not in self._buffer:
            self._buffer += await self._next_chunk()
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        lines = block.decode().split("\n")
        self.comments += [line[1:].strip() for line in lines if line.startswith(":")]
        return lines

    async def event(self) -> tuple[str | None, dict[str, Any]]:
        """The next event that carries data: ``(id or None, frame)``."""
        while True:
            identifier, data = None, []
            for line in await self.block():
                field, _, value = line.partition(": ")
                if field == "id":
                    identifier = value
                elif field == "data":
                    data.append(value)
            if data:
                frame = json.loads("\n".join(data))
                assert event_id_matches(identifier, frame), (identifier, frame)
                return identifier, frame

    async def frame(self) -> dict[str, Any]:
        return (await self.event())[1]

    async def until(self, frame_type: str) -> list[dict[str, Any]]:
        frames = []
        while not frames or frames[-1]["type"] != frame_type:
            frames.append(await self.frame())
        return frames

    async def rest(self) -> list[dict[str, Any]]:
        """Every remaining frame, failing if the stream does not end."""
        frames = []
        while True:
            try:
                frames.append(await self.frame())
            except StopAsyncIteration:
                return frames

    async def close(self) -> None:
        """Leave as a client that hangs up: Django's handler cancels the task streaming the response."""
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)


def event_id_matches(identifier: str | None, frame: dict[str, Any]) -> bool:
    if "seq" in frame and "run_id" in frame:
        return identifier == f"{frame['run_id']}:{frame['seq']}"
    return identifier is None


async def post(client: AsyncClient, path: str, frame: Any, **extra: Any) -> Any:
    body = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
    return await client.post(path, body, content_type="application/json", **extra)


### Encoding ###


def test_event_encoding_and_ids() -> None:
    run_id = str(uuid.uuid4())
    frame = {"type": "data", "run_id": run_id, "seq": 7, "data": "two\nlines </script>"}
    encoded = sse.encode_event(frame).decode()
    assert encoded.startswith(f"id: {run_id}:7\ndata: ")
    assert encoded.endswith("\n\n") and encoded.count("\n") == 3  # the JSON escapes the newline
    assert json.loads(encoded.split("data: ", 1)[1]) == frame
    assert not sse.encode_event({"type": "conversation", "conversation_id": "x"}).startswith(b"id:")
    assert sse.parse_event_id(f"{run_id}:7") == (run_id, 7)
    assert sse.parse_event_id(f"{run_id}:-1") == (run_id, -1)
    for bad in ("", "7", f"{run_id}", f"{run_id}:x", f"{run_id}:-2", "zz:1", f"{run_id}:1:2"):
        assert sse.parse_event_id(bad) is None, bad


### Prompting over POST ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_post_prompt_streams_the_run_and_saves_it(layer, offline_instant, ada) -> None:
    client = await logged_in(ada)
    reader = EventReader(await post(client, "/sse/", {"type": "prompt", "prompt": "Calculate 2+2"}))
    hello = await reader.frame()
    assert hello["type"] == protocol.CONVERSATION and hello["role"] == "owner"
    frames = await reader.rest()
    types = [frame["type"] for frame in frames]
    assert types[0] == protocol.RUN_STARTED and types[-1] == protocol.RUN_FINISHED
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert_contiguous(frames)
    results = [frame["tool_result"] for frame in frames if frame["type"] == protocol.TOOL_RESULT]
    assert [(r["name"], r["status"], r["content"]) for r in results] == [("calculator", "success", [{"text": "4"}])]
    assert streamed_text(frames) == "2+2 = 4."

    conversation_id = hello["conversation_id"]
    run = await Run.objects.aget(conversation_id=conversation_id)
    assert (run.status, run.prompt, str(run.pk)) == ("completed", "Calculate 2+2", frames[0]["run_id"])
    assert await ToolResult.objects.filter(run=run, status="success").acount() == 1

    # The same conversation goes on over SSE, and the agent sees the earlier turn.
    again = EventReader(await post(client, f"/sse/{conversation_id}/", {"type": "prompt", "prompt": "Calculate 3*3"}))
    assert [m["role"] for m in (await again.frame())["messages"]][:1] == ["user"]
    assert (await again.rest())[-1]["status"] == protocol.STATUS_COMPLETED
    assert await Run.objects.filter(conversation_id=conversation_id, status="completed").acount() == 2


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_anonymous_demo_conversation_belongs_to_the_new_session(settings, offline_instant) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "ALLOW_ANONYMOUS": True}
    client = AsyncClient()
    response = await post(client, "/sse/", {"type": "prompt", "prompt": "Calculate 2+2"})
    reader = EventReader(response)
    hello = await reader.frame()
    assert (await reader.rest())[-1]["status"] == protocol.STATUS_COMPLETED
    session_key = response.cookies["sessionid"].value
    conversation = await Conversation.objects.aget(pk=hello["conversation_id"])
    assert conversation.owner_id is None and conversation.session_key == session_key
    # Another visitor (no cookie) cannot see it.
    refused = await AsyncClient().get(f"/sse/{hello['conversation_id']}/")
    assert refused.status_code == 403 and refused.json()["error"] == protocol.ERR_FORBIDDEN


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_busy_conversation_refuses_a_second_prompt(layer, paced, ada) -> None:
    asker = Client(user=ada)
    hello = await asker.hello()
    await asker.prompt(f"Stream {TOKENS} tokens")
    await asker.until(protocol.DATA)
    client = await logged_in(ada)
    reader = EventReader(await post(client, f"/sse/{hello['conversation_id']}/", {"type": "prompt", "prompt": "hi"}))
    assert (await reader.frame())["active_run"] is not None
    answer = await reader.rest()  # the run in progress is someone else's: only the refusal answers
    assert [(frame["type"], frame.get("code")) for frame in answer] == [(protocol.ERROR, protocol.ERR_BUSY)]
    assert (await asker.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    await asker.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_queued_prompt_is_answered_by_its_own_run(layer, paced, ada) -> None:
    asker = Client(user=ada)
    hello = await asker.hello()
    await asker.prompt(f"Stream {TOKENS} tokens")
    first = (await asker.until(protocol.DATA))[0]["run_id"]
    client = await logged_in(ada)
    frame = {"type": "prompt", "prompt": "Calculate 6*7", "if_busy": "enqueue"}
    reader = EventReader(await post(client, f"/sse/{hello['conversation_id']}/", frame))
    await reader.frame()
    answer = await reader.rest()  # its run_queued, then its own run only, to its end
    queued = answer[0]
    assert queued["type"] == protocol.RUN_QUEUED and queued["run_id"] != first
    assert {frame["run_id"] for frame in answer} == {queued["run_id"]}
    assert answer[1]["type"] == protocol.RUN_STARTED
    assert answer[-1]["type"] == protocol.RUN_FINISHED and answer[-1]["status"] == protocol.STATUS_COMPLETED
    await asker.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_over_post_stops_a_websocket_run(layer, paced, ada) -> None:
    asker = Client(user=ada)
    hello = await asker.hello()
    await asker.prompt(f"Stream {TOKENS} tokens")
    await asker.until(protocol.DATA)
    client = await logged_in(ada)
    reader = EventReader(await post(client, f"/sse/{hello['conversation_id']}/", {"type": "cancel"}))
    await reader.frame()
    answer = await reader.rest()
    assert [(frame["type"], frame["status"]) for frame in answer] == [(protocol.RUN_FINISHED, "cancelled")]
    finished = (await asker.until_finished())[-1]
    assert finished["status"] == protocol.STATUS_CANCELLED and finished["run_id"] == answer[0]["run_id"]
    await asker.close()

    nothing = EventReader(await post(client, f"/sse/{hello['conversation_id']}/", {"type": "cancel"}))
    await nothing.frame()
    assert [frame["code"] for frame in await nothing.rest()] == [protocol.ERR_NO_ACTIVE_RUN]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_client_hanging_up_cancels_its_run_and_keeps_the_partial_text(paced, ada) -> None:
    client = await logged_in(ada)
    reader = EventReader(await post(client, "/sse/", {"type": "prompt", "prompt": f"Stream {TOKENS} tokens"}))
    conversation_id = (await reader.frame())["conversation_id"]
    seen = await reader.until(protocol.DATA)
    await reader.close()
    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == "cancelled" and str(run.pk) == seen[0]["run_id"]
    partial = await Message.objects.aget(run=run, role="assistant")
    assert partial.partial and partial.content[0]["text"].startswith(streamed_text(seen))


### Watching over GET ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_watcher_sees_a_websocket_run_then_resumes_with_last_event_id(layer, paced, ada) -> None:
    asker = Client(user=ada)
    hello = await asker.hello()
    path = f"/sse/{hello['conversation_id']}/"
    client = await logged_in(ada)
    watcher = EventReader(await client.get(path))
    assert (await watcher.frame())["type"] == protocol.CONVERSATION
    await asker.prompt(f"Stream {TOKENS} tokens")
    before: list[tuple[str | None, dict[str, Any]]] = []
    while deltas([frame for _, frame in before]) < 3:
        before.append(await watcher.event())
    await watcher.close()

    last_id = before[-1][0]
    back = EventReader(await client.get(path, headers={"last-event-id": last_id}))
    assert (await back.frame())["type"] == protocol.CONVERSATION
    after = await back.until(protocol.RUN_FINISHED)
    assert_continues([frame for _, frame in before], after)  # one past the last id seen, every seq once
    assert (await asker.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    await back.close()
    await asker.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_idle_stream_sends_keep_alive_comments(settings, ada) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "SSE_KEEPALIVE_SECONDS": 0.05}
    conversation = await Conversation.objects.acreate(owner=ada)
    client = await logged_in(ada)
    reader = EventReader(await client.get(f"/sse/{conversation.pk}/"))
    assert await reader.block() == ["retry: 2000"]
    assert (await reader.frame())["type"] == protocol.CONVERSATION
    assert await reader.block() == [": keep-alive"]
    assert await reader.block() == [": keep-alive"]
    await reader.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_watchers_are_counted_and_may_ask_for_presence(layer, ada) -> None:
    conversation = await Conversation.objects.acreate(owner=ada)
    client = await logged_in(ada)
    counting = EventReader(await client.get(f"/sse/{conversation.pk}/?presence=1"))
    await counting.frame()
    assert (await counting.frame())["watchers"] == 1
    socket = Client(f"/ws/agent/{conversation.pk}/", user=ada)
    await socket.hello()
    assert (await counting.frame())["watchers"] == 2
    plain = EventReader(await client.get(f"/sse/{conversation.pk}/"))
    await plain.frame()
    assert (await counting.frame())["watchers"] == 3
    await plain.close()
    await socket.close()
    counts = [(await counting.frame())["watchers"]]
    while counts[-1] != 1:  # the two goodbyes may come as one change or two
        counts.append((await counting.frame())["watchers"])
    assert counts in ([1], [2, 1]), counts
    await counting.close()


### Who may do what ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_access_is_the_websockets(settings, ada, stranger) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "ALLOW_ANONYMOUS": False}
    conversation = await Conversation.objects.acreate(owner=ada)
    path = f"/sse/{conversation.pk}/"
    anonymous = AsyncClient()
    for response in (await anonymous.get(path), await post(anonymous, "/sse/", {"type": "prompt", "prompt": "x"})):
        assert response.status_code == 401 and response.json()["error"] == protocol.ERR_LOGIN_REQUIRED
    outsider = await logged_in(stranger)
    for response in (await outsider.get(path), await post(outsider, path, {"type": "cancel"})):
        assert response.status_code == 403 and response.json()["error"] == protocol.ERR_FORBIDDEN
    missing = await outsider.get(f"/sse/{uuid.uuid4()}/")
    assert missing.status_code == 404 and missing.json()["error"] == protocol.ERR_NOT_FOUND
    assert (await outsider.get("/sse/not-a-uuid/")).status_code == 404

    await ConversationMember.objects.acreate(conversation=conversation, user=stranger, role="viewer")
    watching = EventReader(await outsider.get(path))
    assert (await watching.frame())["role"] == "viewer"
    await watching.close()
    refused = await post(outsider, path, {"type": "prompt", "prompt": "x"})
    assert refused.status_code == 403 and refused.json()["error"] == protocol.ERR_READ_ONLY
    assert await Run.objects.filter(conversation=conversation).acount() == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_bad_requests_get_clear_errors(settings, ada) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "MAX_PROMPT_CHARS": 10, "MAX_FRAME_BYTES": 200}
    conversation = await Conversation.objects.acreate(owner=ada)
    path = f"/sse/{conversation.pk}/"
    client = await logged_in(ada)
    cases = [
        ("not json", 400, protocol.ERR_INVALID_JSON),
        (b"\xff\xfe", 400, protocol.ERR_INVALID_JSON),
        ("[1]", 400, protocol.ERR_INVALID_FRAME),
        ({"type": "dance"}, 400, protocol.ERR_UNKNOWN_TYPE),
        ({"type": "prompt"}, 400, protocol.ERR_MISSING_PROMPT),
        ({"type": "prompt", "prompt": "x" * 11}, 413, protocol.ERR_PROMPT_TOO_LARGE),
        ({"type": "prompt", "prompt": "x" * 300}, 413, protocol.ERR_FRAME_TOO_LARGE),
        ({"type": "resume", "run_id": str(uuid.uuid4()), "seq": 1}, 400, protocol.ERR_UNKNOWN_TYPE),
        ({"type": "interrupt_response", "responses": {}}, 400, protocol.ERR_INVALID_RESPONSE),
    ]
    for body, status, code in cases:
        response = await post(client, path, body)
        assert (response.status_code, response.json()["error"]) == (status, code), body
        assert "Traceback" not in response.content.decode()
    bad_id = await client.get(path, headers={"last-event-id": "nonsense"})
    assert bad_id.status_code == 400 and bad_id.json()["error"] == protocol.ERR_INVALID_RESUME
    for method in (client.put, client.delete):
        assert (await method(path)).status_code == 405
    assert (await client.get("/sse/")).status_code == 405
    assert await Run.objects.acount() == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_posts_need_the_csrf_token(offline_instant, ada) -> None:
    client = await logged_in(ada, enforce_csrf_checks=True)
    refused = await post(client, "/sse/", {"type": "prompt", "prompt": "Calculate 2+2"})
    assert refused.status_code == 403
    listing = await client.get("/api/conversations/")  # any agentapp JSON view sets the cookie
    token = listing.cookies["csrftoken"].value
    reader = EventReader(
        await post(client, "/sse/", {"type": "prompt", "prompt": "Calculate 2+2"}, headers={"x-csrftoken": token})
    )
    await reader.frame()
    assert (await reader.rest())[-1]["status"] == protocol.STATUS_COMPLETED
    assert await sync_to_async(Run.objects.count)() == 1
