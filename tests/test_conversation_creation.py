"""A conversation's row is written by its first prompt, not by a connection, and each owner's new ones are capped."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from agentapp import protocol
from agentapp.access import ERR_TOO_MANY_CONVERSATIONS, fresh_conversation
from agentapp.models import Conversation
from tests.test_access import anonymous_session, assert_refused, chat, cookie_headers
from tests.test_sse import EventReader, logged_in, post
from tests.wsclient import Client

BARE_CONNECTS = 200


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("owner", password="x")


@pytest.fixture
def capped(settings: Any) -> int:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "CONVERSATIONS_PER_HOUR": 2}
    return 2


async def rows() -> int:
    return await Conversation.objects.acount()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_bare_connects_store_nothing_and_the_first_prompt_stores_one(settings, offline_instant, owner) -> None:
    async def connect_and_leave(_: int) -> str:
        client = Client(user=owner)
        hello = await client.hello()
        await client.close()
        return hello["conversation_id"]

    ids: set[str] = set()
    for start in range(0, BARE_CONNECTS, 20):
        ids.update(await asyncio.gather(*(connect_and_leave(n) for n in range(start, start + 20))))
    assert len(ids) == BARE_CONNECTS  # each got a fresh id of its own
    assert await rows() == 0

    client = Client(user=owner)
    hello = await client.hello()
    assert (hello["messages"], hello["active_run"], hello["role"]) == ([], None, "owner")
    await chat(client)
    await chat(client, "Calculate 3+3")
    await client.close()
    stored = await Conversation.objects.aget()
    assert (str(stored.pk), stored.owner_id) == (hello["conversation_id"], owner.pk)
    again = Client(f"/ws/agent/{stored.pk}/", user=owner)
    assert len((await again.hello())["messages"]) == 8
    await again.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_fresh_id_reopens_for_its_owner_only(settings, offline_instant, owner, stranger) -> None:
    first = Client(user=owner)
    conversation_id = (await first.hello())["conversation_id"]
    path = f"/ws/agent/{conversation_id}/"
    # A second tab of the owner joins the fresh conversation and sees the first prompt's run live.
    second = Client(path, user=owner)
    assert (await second.hello())["conversation_id"] == conversation_id
    await assert_refused(Client(path, user=stranger), protocol.ERR_NOT_FOUND, protocol.CLOSE_NOT_FOUND)
    await chat(first)
    assert (await second.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    await first.close()
    await second.close()
    assert await rows() == 1
    await assert_refused(Client(path, user=stranger), protocol.ERR_FORBIDDEN, protocol.CLOSE_FORBIDDEN)
    # A random id, or one made for someone else, names nothing.
    await assert_refused(Client(f"/ws/agent/{uuid.uuid4()}/", user=owner), protocol.ERR_NOT_FOUND, 4404)
    others = fresh_conversation(stranger, None)
    await assert_refused(Client(f"/ws/agent/{others.pk}/", user=owner), protocol.ERR_NOT_FOUND, 4404)
    # The chat page opens the fresh id for its owner (a reload before the first prompt), for nobody else.
    mine = fresh_conversation(owner, None)
    assert (await (await logged_in(owner)).get(f"/?c={mine.pk}")).status_code == 200
    assert (await (await logged_in(stranger)).get(f"/?c={mine.pk}")).status_code == 404
    assert await rows() == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_new_conversations_per_hour_are_capped_on_every_path(settings, offline_instant, capped, owner) -> None:
    for _ in range(capped):
        client = Client(user=owner)
        await client.hello()
        await chat(client)
        await client.close()
    assert await rows() == capped

    refused = Client(user=owner)
    await refused.hello()
    await refused.prompt("Calculate 2+2")
    error = await refused.receive()
    assert (error["type"], error["code"]) == (protocol.ERROR, ERR_TOO_MANY_CONVERSATIONS)
    # The connection stays usable, and the owner's stored conversations still take prompts.
    await refused.cancel()
    assert (await refused.receive())["code"] == protocol.ERR_NO_ACTIVE_RUN
    await refused.close()
    stored = await Conversation.objects.afirst()
    old = Client(f"/ws/agent/{stored.pk}/", user=owner)
    await old.hello()
    await chat(old)
    await old.close()

    http = await logged_in(owner)
    response = await http.post("/api/conversations/", {}, content_type="application/json")
    assert (response.status_code, response.json()["error"]) == (429, ERR_TOO_MANY_CONVERSATIONS)
    sse = await post(http, "/sse/", {"type": "prompt", "prompt": "Calculate 2+2"})
    reader = EventReader(sse)
    assert (await reader.frame())["type"] == protocol.CONVERSATION
    assert (await reader.frame())["code"] == ERR_TOO_MANY_CONVERSATIONS
    await reader.close()
    assert await rows() == capped


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_anonymous_session_is_capped_too(settings, capped) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "ALLOW_ANONYMOUS": True, "OFFLINE_TOKENS_PER_SECOND": 0}
    session_key = await sync_to_async(anonymous_session)()
    for _ in range(capped):
        client = Client(headers=cookie_headers(session_key))
        await client.hello()
        await chat(client)
        await client.close()
    client = Client(headers=cookie_headers(session_key))
    await client.hello()
    await client.prompt("Calculate 2+2")
    assert (await client.receive())["code"] == ERR_TOO_MANY_CONVERSATIONS
    await client.close()
    # Another session has its own allowance.
    other = Client(headers=cookie_headers(await sync_to_async(anonymous_session)()))
    await other.hello()
    await chat(other)
    await other.close()
    assert await Conversation.objects.filter(session_key=session_key).acount() == capped
    assert await rows() == capped + 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_sse_posts_without_an_id_store_a_conversation_only_for_a_prompt(offline_instant, owner) -> None:
    http = await logged_in(owner)
    for _ in range(20):
        answer = EventReader(await post(http, "/sse/", {"type": "cancel"}))
        assert [frame.get("code") for frame in await answer.rest()][1:] == [protocol.ERR_NO_ACTIVE_RUN]
    assert await rows() == 0
    reader = EventReader(await post(http, "/sse/", {"type": "prompt", "prompt": "Calculate 2+2"}))
    hello = await reader.frame()
    assert (await reader.until(protocol.RUN_FINISHED))[-1]["status"] == protocol.STATUS_COMPLETED
    await reader.close()
    assert [str(pk) async for pk in Conversation.objects.values_list("pk", flat=True)] == [hello["conversation_id"]]


def test_reading_a_fresh_or_deleted_conversation_stores_nothing(client, owner) -> None:
    """A GET (detail or export) never creates a conversation, nor brings a deleted one back under its fresh id."""
    client.force_login(owner)
    fresh = fresh_conversation(owner, None)
    for url in (f"/api/conversations/{fresh.pk}/", f"/api/conversations/{fresh.pk}/export.json"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"] == protocol.ERR_NOT_FOUND
    assert Conversation.objects.count() == 0

    fresh.save(force_insert=True)  # stored by its first prompt, then deleted
    assert client.delete(f"/api/conversations/{fresh.pk}/").status_code == 204
    assert client.get(f"/api/conversations/{fresh.pk}/").status_code == 404
    assert Conversation.objects.count() == 0
