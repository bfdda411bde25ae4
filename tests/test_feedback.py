"""Feedback on assistant messages: the socket frame, the API, the broadcast, the conversation frame and the admin."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client as HttpClient
from django.urls import reverse

from agentapp import protocol
from agentapp.models import Conversation, Feedback, Message
from tests.test_access import assert_refused
from tests.test_sse import logged_in
from tests.test_sse import post as sse_post
from tests.wsclient import Client

# Long enough for a frame that should not come.
QUIET_SECONDS = 0.3


def socket(conversation: Conversation, user: Any) -> Client:
    return Client(f"/ws/agent/{conversation.pk}/", user=user)


def feedback_url(conversation: Conversation) -> str:
    return reverse("agentapp:api_feedback", args=[conversation.pk])


def post_json(client: HttpClient, url: str, body: Any):
    return client.post(url, json.dumps(body), content_type="application/json")


async def answer_position(conversation: Conversation) -> int:
    """The position of the last assistant message of the conversation."""
    message = await Message.objects.filter(conversation=conversation, role="assistant").order_by("-position").afirst()
    assert message is not None
    return message.position


async def feedback_frame(client: Client) -> dict[str, Any]:
    frame = await client.receive()
    assert frame["type"] == protocol.FEEDBACK, frame
    return frame


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_socket_feedback_reaches_every_connection_and_the_next_conversation_frame(
    layer, settings, people, shared
):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    owner, member, viewer = (
        socket(shared, people["owner"]),
        socket(shared, people["bob"]),
        socket(shared, people["vera"]),
    )
    for client in (owner, member, viewer):
        assert (await client.hello())["feedback"] == []
    await owner.prompt("Calculate 2+2")
    for client in (owner, member, viewer):
        assert (await client.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    position = await answer_position(shared)

    await member.send({"type": "feedback", "position": position, "rating": "down", "comment": " Wrong sum. "})
    expected = {"position": position, "rating": "down", "comment": "Wrong sum.", "user_id": people["bob"].pk}
    for client in (member, owner, viewer):  # the giver gets it too, as a confirmation
        frame = await feedback_frame(client)
        assert frame["conversation_id"] == str(shared.pk)
        assert frame["feedback"] | {"updated": None, "user": None} == expected | {"updated": None, "user": None}
        assert frame["feedback"]["user"] == "bob"

    # Given again, it changes in place: one row per user per message.
    await member.send({"type": "feedback", "position": position, "rating": "up"})
    for client in (member, owner, viewer):
        assert (await feedback_frame(client))["feedback"]["rating"] == "up"
    await owner.send({"type": "feedback", "position": position, "rating": "down"})
    for client in (owner, member, viewer):
        assert (await feedback_frame(client))["feedback"]["user"] == "owner"
    rows = Feedback.objects.filter(message__position=position).order_by("user__username")
    assert [(row.user_id, row.rating, row.comment) async for row in rows] == [
        (people["bob"].pk, "up", ""),
        (people["owner"].pk, "down", ""),
    ]

    # A viewer watches only: read_only, nothing stored, nobody told.
    await viewer.send({"type": "feedback", "position": position, "rating": "up"})
    refused = await viewer.receive()
    assert (refused["type"], refused["code"]) == (protocol.ERROR, protocol.ERR_READ_ONLY)
    assert await owner.communicator.receive_nothing(QUIET_SECONDS)
    assert await Feedback.objects.acount() == 2

    # A reconnecting client finds the feedback in its conversation frame.
    await member.close()
    again = await socket(shared, people["bob"]).hello()
    assert sorted((entry["user"], entry["rating"]) for entry in again["feedback"]) == [("bob", "up"), ("owner", "down")]
    assert {entry["position"] for entry in again["feedback"]} == {position}

    # Taken back (rating null): the row goes and every connection hears it.
    await owner.send({"type": "feedback", "position": position, "rating": None})
    for client in (owner, viewer):
        assert (await feedback_frame(client))["feedback"] | {"updated": None} == {
            "position": position,
            "rating": None,
            "comment": "",
            "user_id": people["owner"].pk,
            "user": "owner",
            "updated": None,
        }
    assert await Feedback.objects.acount() == 1
    await owner.close()
    await viewer.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_bad_feedback_frames_get_clear_errors(settings, people, shared):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    owner = socket(shared, people["owner"])
    await owner.hello()
    await owner.prompt("Calculate 2+2")
    await owner.until_finished()
    prompt = await Message.objects.filter(conversation=shared, role="user").order_by("position").afirst()
    for frame, code in (
        ({"type": "feedback", "position": prompt.position, "rating": "up"}, protocol.ERR_UNKNOWN_MESSAGE),
        ({"type": "feedback", "position": 999, "rating": "up"}, protocol.ERR_UNKNOWN_MESSAGE),
        ({"type": "feedback", "rating": "up"}, protocol.ERR_INVALID_FEEDBACK),
        ({"type": "feedback", "position": "1", "rating": "up"}, protocol.ERR_INVALID_FEEDBACK),
        ({"type": "feedback", "position": True, "rating": "up"}, protocol.ERR_INVALID_FEEDBACK),
        ({"type": "feedback", "position": -1, "rating": "up"}, protocol.ERR_INVALID_FEEDBACK),
        ({"type": "feedback", "position": 1, "rating": "meh"}, protocol.ERR_INVALID_FEEDBACK),
        ({"type": "feedback", "position": 1, "rating": "up", "comment": 3}, protocol.ERR_INVALID_FEEDBACK),
        ({"type": "feedback", "position": 1, "rating": "up", "comment": "x" * 2001}, protocol.ERR_INVALID_FEEDBACK),
    ):
        await owner.send(frame)
        refused = await owner.receive()
        assert (refused["type"], refused["code"]) == (protocol.ERROR, code), frame
        assert "Traceback" not in refused["message"]
    assert await Feedback.objects.acount() == 0
    await owner.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_api_feedback_reaches_open_sockets_and_strangers_are_refused(layer, settings, people, shared):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    owner = socket(shared, people["owner"])
    await owner.hello()
    await owner.prompt("Calculate 2+2")
    await owner.until_finished()
    position = await answer_position(shared)

    def api(name: str, method: str, body: Any = None):
        client = HttpClient()
        client.force_login(people[name])
        if method == "GET":
            return client.get(feedback_url(shared))
        return post_json(client, feedback_url(shared), body)

    given = await sync_to_async(api)("bob", "POST", {"position": position, "rating": "up", "comment": "Nice"})
    assert given.status_code == 200, given.content
    assert given.json()["feedback"]["rating"] == "up"
    frame = await feedback_frame(owner)
    assert frame["feedback"] | {"updated": None} == given.json()["feedback"] | {"updated": None}
    listed = (await sync_to_async(api)("vera", "GET")).json()  # a viewer may read it
    assert [(entry["user"], entry["rating"], entry["comment"]) for entry in listed["feedback"]] == [
        ("bob", "up", "Nice")
    ]

    for name, body, status, code in (
        ("vera", {"position": position, "rating": "up"}, 403, protocol.ERR_READ_ONLY),
        ("eve", {"position": position, "rating": "down"}, 404, protocol.ERR_NOT_FOUND),
        ("bob", {"position": 999, "rating": "down"}, 404, protocol.ERR_UNKNOWN_MESSAGE),
        ("bob", {"position": position, "rating": "so-so"}, 400, protocol.ERR_INVALID_FEEDBACK),
        ("bob", ["up"], 400, protocol.ERR_INVALID_FEEDBACK),
    ):
        answer = await sync_to_async(api)(name, "POST", body)
        assert (answer.status_code, answer.json()["error"]) == (status, code), (name, body)
    assert (await sync_to_async(api)("eve", "GET")).status_code == 404
    assert [(row.user_id, row.rating) async for row in Feedback.objects.all()] == [(people["bob"].pk, "up")]
    assert await owner.communicator.receive_nothing(QUIET_SECONDS)

    # A stranger's socket is refused before it could send anything.
    await assert_refused(socket(shared, people["eve"]), protocol.ERR_FORBIDDEN, protocol.CLOSE_FORBIDDEN)
    await owner.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_server_sent_events_send_feedback_to_the_api(settings, people, shared):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    client = await logged_in(people["owner"])
    answer = await asyncio.wait_for(
        sse_post(client, f"/sse/{shared.pk}/", {"type": "feedback", "position": 1, "rating": "up"}), timeout=10
    )
    assert (answer.status_code, answer.json()["error"]) == (400, protocol.ERR_UNKNOWN_TYPE)
    assert "feedback/" in answer.json()["message"]


def test_feedback_is_listed_and_filtered_in_the_admin(client, django_user_model, people, shared):
    message = Message.objects.create(conversation=shared, position=1, role="assistant", content=[{"text": "4"}])
    Feedback.objects.create(conversation=shared, message=message, user=people["bob"], rating="down", comment="Off <b>")
    Feedback.objects.create(conversation=shared, message=message, user=people["owner"], rating="up", comment="Fine")
    staff = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(staff)
    url = reverse("admin:agentapp_feedback_changelist")
    page = client.get(url, {"rating__exact": "down"}).content.decode()
    assert "Off &lt;b&gt;" in page and "Fine" not in page
    change = client.get(reverse("admin:agentapp_feedback_change", args=[Feedback.objects.get(rating="up").pk]))
    assert change.status_code == 200 and "Fine" in change.content.decode()
    assert client.get(reverse("admin:agentapp_feedback_add")).status_code == 403
