"""Sharing a conversation: the members API, the admin, and what members, viewers and strangers may do live."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client as HttpClient
from django.urls import reverse

from agentapp import protocol
from agentapp.models import Conversation, ConversationMember, Run
from agentapp.sharing import share, unshare
from tests.test_access import anonymous_session, assert_refused, cookie_headers
from tests.wsclient import Client, streamed_text


def members_url(conversation: Conversation) -> str:
    return reverse("agentapp:api_members", args=[conversation.pk])


def member_url(conversation: Conversation, user: Any) -> str:
    return reverse("agentapp:api_member", args=[conversation.pk, user.pk])


def post_json(client: HttpClient, url: str, body: Any, **extra: Any):
    return client.post(url, json.dumps(body), content_type="application/json", **extra)


### The members API ###


def test_owner_lists_adds_changes_and_removes_members(client, people, shared):
    client.force_login(people["owner"])
    listed = client.get(members_url(shared)).json()
    assert listed["conversation_id"] == str(shared.pk)
    assert [(m["username"], m["role"]) for m in listed["members"]] == [("bob", "member"), ("vera", "viewer")]

    added = post_json(client, members_url(shared), {"username": "eve"})
    assert added.status_code == 201
    assert added.json()["member"] | {"created": None} == {
        "user_id": people["eve"].pk,
        "username": "eve",
        "role": "viewer",
        "created": None,
    }
    changed = post_json(client, members_url(shared), {"username": "eve", "role": "member"})
    assert changed.status_code == 200 and changed.json()["member"]["role"] == "member"
    assert ConversationMember.objects.get(conversation=shared, user=people["eve"]).role == "member"

    assert client.delete(member_url(shared, people["eve"])).status_code == 204
    assert client.delete(member_url(shared, people["eve"])).status_code == 404
    assert not ConversationMember.objects.filter(user=people["eve"]).exists()


def test_bad_sharing_requests_are_refused(client, people, shared):
    client.force_login(people["owner"])
    url = members_url(shared)
    for body, code in (
        ({"username": "nobody"}, "unknown_user"),
        ({"username": "eve", "role": "admin"}, "invalid_role"),
        ({"username": "owner", "role": "member"}, "invalid_member"),
        ({"role": "member"}, "invalid_body"),
    ):
        answer = post_json(client, url, body)
        assert answer.status_code == 400 and answer.json()["error"] == code, body
    answer = client.post(url, "{not json", content_type="application/json")
    assert answer.status_code == 400 and answer.json()["error"] == protocol.ERR_INVALID_JSON
    assert client.put(url).status_code == 405
    assert ConversationMember.objects.filter(conversation=shared).count() == 2


def test_only_the_owner_manages_members(client, people, shared):
    url = members_url(shared)
    assert client.get(url).status_code == 401
    for name, status in (("bob", 403), ("vera", 403), ("eve", 404)):
        client.force_login(people[name])
        assert client.get(url).status_code == status, name
        assert post_json(client, url, {"username": "eve", "role": "member"}).status_code == status, name
        assert client.delete(member_url(shared, people["bob"])).status_code == status, name
    assert ConversationMember.objects.filter(conversation=shared).count() == 2


def test_sharing_needs_the_csrf_token(people, shared):
    client = HttpClient(enforce_csrf_checks=True)
    client.force_login(people["owner"])
    assert client.get(members_url(shared)).status_code == 200  # sets the CSRF cookie
    assert post_json(client, members_url(shared), {"username": "eve"}).status_code == 403
    assert client.delete(member_url(shared, people["bob"])).status_code == 403
    token = client.cookies["csrftoken"].value
    assert post_json(client, members_url(shared), {"username": "eve"}, HTTP_X_CSRFTOKEN=token).status_code == 201
    assert client.delete(member_url(shared, people["bob"]), HTTP_X_CSRFTOKEN=token).status_code == 204


def test_members_open_the_chat_page_strangers_do_not(client, people, shared):
    for name, status in (("owner", 200), ("bob", 200), ("vera", 200), ("eve", 404)):
        client.force_login(people[name])
        assert client.get("/", {"c": str(shared.pk)}).status_code == status, name


### The admin ###


def test_staff_add_and_delete_members_in_the_admin(client, django_user_model, people, shared):
    client.force_login(django_user_model.objects.create_superuser("boss", "boss@example.com", "x"))
    page = client.get(reverse("admin:agentapp_conversation_change", args=[shared.pk])).content.decode()
    assert "bob" in page and "vera" in page
    add_url = reverse("admin:agentapp_conversationmember_add")
    assert f'href="{add_url}?conversation={shared.pk}"' in page
    assert 'name="_save"' not in page  # the conversation itself stays read-only

    added = client.post(add_url, {"conversation": shared.pk, "user": people["eve"].pk, "role": "member"})
    assert added.status_code == 302
    assert ConversationMember.objects.get(conversation=shared, user=people["eve"]).role == "member"
    refused = client.post(add_url, {"conversation": shared.pk, "user": people["owner"].pk, "role": "member"})
    assert refused.status_code == 200 and "already has every right" in refused.content.decode()
    anonymous = Conversation.objects.create(session_key="some-session")
    refused = client.post(add_url, {"conversation": anonymous.pk, "user": people["eve"].pk, "role": "viewer"})
    assert refused.status_code == 200 and "cannot be shared" in refused.content.decode()

    member = ConversationMember.objects.get(conversation=shared, user=people["bob"])
    change_url = reverse("admin:agentapp_conversationmember_change", args=[member.pk])
    assert (
        client.post(change_url, {"conversation": shared.pk, "user": member.user_id, "role": "viewer"}).status_code
        == 403
    )
    delete_url = reverse("admin:agentapp_conversationmember_delete", args=[member.pk])
    assert client.post(delete_url, {"post": "yes"}).status_code == 302
    assert not ConversationMember.objects.filter(pk=member.pk).exists()


### Over the WebSocket ###


def path_of(conversation: Conversation) -> str:
    return f"/ws/agent/{conversation.pk}/"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_member_prompts_viewer_watches_stranger_gets_nothing(settings, people, shared):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0, "ALLOW_ANONYMOUS": True}
    member = Client(path_of(shared), user=people["bob"])
    viewer = Client(path_of(shared), user=people["vera"])
    assert (await member.hello())["role"] == "member"
    assert (await viewer.hello())["role"] == "viewer"

    # A viewer may not prompt or cancel; the connection stays open.
    for frame in ({"type": "prompt", "prompt": "Calculate 2+2"}, {"type": "cancel"}):
        await viewer.send(frame)
        refused = await viewer.receive()
        assert (refused["type"], refused["code"]) == (protocol.ERROR, protocol.ERR_READ_ONLY)
        assert "run_id" not in refused
    assert await Run.objects.acount() == 0

    await member.prompt("Calculate 2+2")
    asked = await member.until_finished()
    watched = await viewer.until_finished()
    assert asked[-1]["status"] == protocol.STATUS_COMPLETED
    assert streamed_text(watched) == streamed_text(asked)
    run = await Run.objects.aget(conversation=shared)
    assert run.user_id == people["bob"].pk

    # A stranger, or an anonymous visitor even in demo mode, is refused before joining the group.
    stranger = Client(path_of(shared), user=people["eve"])
    await assert_refused(stranger, protocol.ERR_FORBIDDEN, protocol.CLOSE_FORBIDDEN)
    session_key = await sync_to_async(anonymous_session)()
    anonymous = Client(path_of(shared), headers=cookie_headers(session_key))
    await assert_refused(anonymous, protocol.ERR_FORBIDDEN, protocol.CLOSE_FORBIDDEN)
    await member.prompt("Calculate 3+4")
    await member.until_finished()
    await viewer.until_finished()
    assert await stranger.communicator.receive_nothing()
    assert await anonymous.communicator.receive_nothing()
    await member.close()
    await viewer.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_role_changes_reach_open_connections(settings, people, shared):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    viewer = Client(path_of(shared), user=people["vera"])
    await viewer.hello()
    member = Client(path_of(shared), user=people["bob"])
    await member.hello()

    # Promoted: the viewer's next prompt is accepted.
    await sync_to_async(share)(shared, "vera", "member")
    await viewer.prompt("Calculate 2+2")
    assert (await viewer.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    await member.until_finished()

    # Removed: told why and disconnected; the other member stays.
    await sync_to_async(unshare)(shared, people["bob"].pk)
    frame = await member.receive()
    assert (frame["type"], frame["code"]) == (protocol.ERROR, protocol.ERR_FORBIDDEN)
    assert await member.receive_close() == protocol.CLOSE_FORBIDDEN
    await assert_refused(Client(path_of(shared), user=people["bob"]), protocol.ERR_FORBIDDEN, 4403)
    await viewer.prompt("Calculate 3+4")
    assert (await viewer.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    await viewer.close()


### Changes that race a connection, and deletion ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["removed", "demoted"])
async def test_a_change_announced_while_a_socket_connects_still_applies(people, shared, monkeypatch, change):
    """The role is read, the owner removes (or demotes) the user and it is announced, then the socket joins the
    group: the announcement was missed, so the role read again after joining must apply."""
    from agentapp import opening

    real_open = opening.open_with_role

    def open_then_change(*args: Any) -> Any:
        opened = real_open(*args)
        if change == "removed":
            unshare(shared, people["bob"].pk)
        else:
            share(shared, "bob", "viewer")
        return opened

    monkeypatch.setattr(opening, "open_with_role", open_then_change)
    bob = Client(f"/ws/agent/{shared.pk}/", user=people["bob"])
    if change == "removed":
        await bob.connect()
        error = await bob.receive()
        assert (error["type"], error["code"]) == (protocol.ERROR, protocol.ERR_FORBIDDEN)
        assert await bob.receive_close() == protocol.CLOSE_FORBIDDEN
        return
    hello = await bob.hello()
    assert hello["role"] == "viewer"
    await bob.send({"type": "prompt", "prompt": "Calculate 2+2"})
    assert (await bob.receive())["code"] == protocol.ERR_READ_ONLY
    await bob.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_deleting_a_conversation_closes_its_sockets(people, shared):
    owner = Client(f"/ws/agent/{shared.pk}/", user=people["owner"])
    member = Client(f"/ws/agent/{shared.pk}/", user=people["bob"])
    await owner.hello()
    await member.hello()

    await sync_to_async(Conversation.objects.filter(pk=shared.pk).delete)()

    error = await owner.receive()
    assert (error["type"], error["code"]) == (protocol.ERROR, protocol.ERR_NOT_FOUND)
    assert await owner.receive_close() == protocol.CLOSE_NOT_FOUND
    # The member hears first that its membership went with the conversation: closed either way.
    error = await member.receive()
    assert error["code"] in (protocol.ERR_FORBIDDEN, protocol.ERR_NOT_FOUND)
    assert await member.receive_close() in (protocol.CLOSE_FORBIDDEN, protocol.CLOSE_NOT_FOUND)


@pytest.mark.parametrize("username", ["bob\u0000", "\udc00", "b\ud800ob"])
def test_sharing_with_a_username_no_database_stores_is_an_unknown_user(client, people, shared, username):
    client.force_login(people["owner"])
    response = post_json(client, members_url(shared), {"username": username, "role": "viewer"})

    assert response.status_code == 400, response.content
    assert response.json()["error"] == "unknown_user"
