"""Who may open which conversation over the WebSocket, and which origins may connect at all."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore

from agentapp import protocol
from agentapp.models import Conversation, Run
from tests.wsclient import Client

ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("owner", password="x")


def anonymous_session() -> str:
    """A saved, empty Django session; its key goes in the sessionid cookie."""
    session = SessionStore()
    session.create()
    return session.session_key


def cookie_headers(session_key: str) -> list[tuple[bytes, bytes]]:
    return [ORIGIN, (b"cookie", f"sessionid={session_key}".encode())]


async def assert_refused(client: Client, code: str, close_code: int) -> None:
    """The socket is accepted, told why in an ``error`` frame, then closed with ``close_code``."""
    connected, _ = await client.connect()
    assert connected
    frame = await client.receive()
    assert frame["type"] == protocol.ERROR
    assert frame["code"] == code
    assert frame["conversation_id"] is None
    assert "Traceback" not in frame["message"]
    assert await client.receive_close() == close_code
    assert await client.communicator.receive_nothing()


async def chat(client: Client, prompt: str = "Calculate 2+2") -> list[dict[str, Any]]:
    await client.prompt(prompt)
    frames = await client.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    return frames


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_anonymous_needs_login_when_anonymous_is_off(settings):
    settings.AGENTAPP = {"ALLOW_ANONYMOUS": False}
    await assert_refused(Client(), protocol.ERR_LOGIN_REQUIRED, protocol.CLOSE_LOGIN_REQUIRED)
    # A session cookie alone does not make a user.
    session_key = await sync_to_async(anonymous_session)()
    await assert_refused(
        Client(headers=cookie_headers(session_key)), protocol.ERR_LOGIN_REQUIRED, protocol.CLOSE_LOGIN_REQUIRED
    )
    assert await Conversation.objects.acount() == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_stranger_is_forbidden_and_unknown_ids_are_not_found(settings, owner, stranger):
    settings.AGENTAPP = {"ALLOW_ANONYMOUS": False, "OFFLINE_TOKENS_PER_SECOND": 0}
    client = Client(user=owner)
    conversation_id = (await client.hello())["conversation_id"]
    await chat(client)
    await client.close()

    path = f"/ws/agent/{conversation_id}/"
    await assert_refused(Client(path, user=stranger), protocol.ERR_FORBIDDEN, protocol.CLOSE_FORBIDDEN)
    await assert_refused(
        Client(f"/ws/agent/{uuid.uuid4()}/", user=owner), protocol.ERR_NOT_FOUND, protocol.CLOSE_NOT_FOUND
    )
    # Anonymous visitors get the same answer as anyone without rights, even with demo mode on.
    settings.AGENTAPP = {"ALLOW_ANONYMOUS": True}
    session_key = await sync_to_async(anonymous_session)()
    await assert_refused(Client(path, headers=cookie_headers(session_key)), protocol.ERR_FORBIDDEN, 4403)

    again = Client(path, user=owner)
    hello = await again.hello()
    assert hello["conversation_id"] == conversation_id
    assert len(hello["messages"]) == 4
    await chat(again, "Calculate 3+3")
    await again.close()
    assert await Run.objects.filter(conversation_id=conversation_id).acount() == 2


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_anonymous_chat_in_demo_mode_is_bound_to_the_session(settings):
    settings.AGENTAPP = {"ALLOW_ANONYMOUS": True, "OFFLINE_TOKENS_PER_SECOND": 0}
    session_key = await sync_to_async(anonymous_session)()
    client = Client(headers=cookie_headers(session_key))
    conversation_id = (await client.hello())["conversation_id"]
    frames = await chat(client)
    await client.close()
    assert "4" in "".join(frame["data"] for frame in frames if frame["type"] == protocol.DATA)

    conversation = await Conversation.objects.aget(pk=conversation_id)
    assert conversation.owner_id is None
    assert conversation.session_key == session_key
    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.user_id is None

    # The same browser session comes back to it; another session may not.
    path = f"/ws/agent/{conversation_id}/"
    again = Client(path, headers=cookie_headers(session_key))
    assert len((await again.hello())["messages"]) == 4
    await again.close()
    other_session = await sync_to_async(anonymous_session)()
    await assert_refused(
        Client(path, headers=cookie_headers(other_session)), protocol.ERR_FORBIDDEN, protocol.CLOSE_FORBIDDEN
    )


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_anonymous_without_a_cookie_gets_a_fresh_session(settings):
    """No cookie: the consumer saves a new session so the conversation still has an owner key."""
    settings.AGENTAPP = {"ALLOW_ANONYMOUS": True, "OFFLINE_TOKENS_PER_SECOND": 0}
    client = Client()
    conversation_id = (await client.hello())["conversation_id"]
    await chat(client)
    await client.close()
    conversation = await Conversation.objects.aget(pk=conversation_id)
    assert conversation.owner_id is None
    assert conversation.session_key
    # Without that session's cookie nobody can reopen it.
    await assert_refused(Client(f"/ws/agent/{conversation_id}/"), protocol.ERR_FORBIDDEN, protocol.CLOSE_FORBIDDEN)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "headers",
    [
        [(b"origin", b"http://evil.example")],
        [(b"origin", b"http://127.0.0.1.evil.example")],
        [(b"origin", b"null")],
    ],
    ids=["evil", "suffix", "null"],
)
async def test_foreign_origin_is_rejected(settings, owner, headers):
    settings.AGENTAPP = {"ALLOW_ANONYMOUS": True}
    client = Client(user=owner, headers=headers)
    connected, _ = await client.connect()
    assert not connected
    assert await Conversation.objects.acount() == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_allowed_origins_connect(settings, owner):
    settings.AGENTAPP = {"ALLOW_ANONYMOUS": False}
    for origin in (b"http://127.0.0.1", b"http://localhost:8000", b"https://testserver"):
        client = Client(user=owner, headers=[(b"origin", origin)])
        await client.hello()
        await client.close()
