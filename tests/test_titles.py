"""Titles: renaming through the API (who may, what is refused, open pages told) and the title generator hook."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client as HttpClient

from agentapp import protocol, titles
from agentapp.models import Conversation, Run
from tests.test_access import chat
from tests.test_api_conversations import calculator_run, detail_url
from tests.wsclient import Client


@pytest.fixture
def shared(shared: Conversation) -> Conversation:
    """The shared conversation of tests/conftest.py, titled "Old" (the title renames replace)."""
    shared.title = "Old"
    shared.save(update_fields=["title"])
    return shared


def logged_in(user: Any, **kwargs: Any) -> HttpClient:
    client = HttpClient(**kwargs)
    client.force_login(user)
    return client


def patch(client: HttpClient, conversation: Conversation, body: Any, **extra: Any):
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.patch(detail_url(conversation.pk), raw, content_type="application/json", **extra)


def failing_generator(conversation: Conversation, first_prompt: str, first_answer: str) -> str:
    raise RuntimeError("the title model is down")


### Renaming ###


def test_owner_and_member_rename_viewer_and_stranger_may_not(people, shared):
    renamed = patch(logged_in(people["owner"]), shared, {"title": "  Quarterly\n budget  "})
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Quarterly budget"
    assert renamed.json()["id"] == str(shared.pk)
    assert Conversation.objects.get(pk=shared.pk).title == "Quarterly budget"

    assert patch(logged_in(people["bob"]), shared, {"title": "Bob's name"}).status_code == 200
    refused = patch(logged_in(people["vera"]), shared, {"title": "Vera's"})
    assert (refused.status_code, refused.json()["error"]) == (403, protocol.ERR_FORBIDDEN)
    assert patch(logged_in(people["eve"]), shared, {"title": "Eve's"}).status_code == 404
    assert patch(HttpClient(), shared, {"title": "Nobody's"}).status_code == 404  # demo mode: as a stranger
    assert Conversation.objects.get(pk=shared.pk).title == "Bob's name"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", protocol.ERR_INVALID_JSON),
        ([], "invalid_body"),
        ({}, "invalid_body"),
        ({"title": "x", "extra": 1}, "invalid_body"),
        ({"title": 7}, titles.ERR_INVALID_TITLE),
        ({"title": " \n "}, titles.ERR_INVALID_TITLE),
        ({"title": "x" * 201}, titles.ERR_INVALID_TITLE),
    ],
)
def test_bad_renames_are_refused(people, shared, body, code):
    answer = patch(logged_in(people["owner"]), shared, body)
    assert answer.status_code == 400
    assert answer.json()["error"] == code
    assert "Traceback" not in answer.json()["message"]
    assert Conversation.objects.get(pk=shared.pk).title == "Old"


def test_a_title_is_made_storable_and_may_fill_the_column(people, shared):
    client = logged_in(people["owner"])
    assert patch(client, shared, {"title": "a\u0000b\ud800c"}).json()["title"] == "a\ufffdb\ufffdc"
    assert Conversation.objects.get(pk=shared.pk).title == "a\ufffdb\ufffdc"
    assert patch(client, shared, {"title": "y" * 200}).status_code == 200
    assert Conversation.objects.get(pk=shared.pk).title == "y" * 200


def test_a_rename_needs_the_csrf_token(people, shared):
    client = logged_in(people["owner"], enforce_csrf_checks=True)
    assert patch(client, shared, {"title": "New"}).status_code == 403
    token = client.get(detail_url(shared.pk)).cookies["csrftoken"].value
    assert patch(client, shared, {"title": "New"}, headers={"X-CSRFToken": token}).status_code == 200
    assert Conversation.objects.get(pk=shared.pk).title == "New"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_rename_reaches_every_open_page(layer, settings, people, shared):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    path = f"/ws/agent/{shared.pk}/"
    owner, viewer = Client(path, user=people["owner"]), Client(path, user=people["vera"])
    assert (await owner.hello())["title"] == "Old"
    await viewer.hello()

    answer = await sync_to_async(lambda: patch(logged_in(people["bob"]), shared, {"title": "Renamed by Bob"}))()
    assert answer.status_code == 200

    expected = {"type": titles.TITLE, "conversation_id": str(shared.pk), "title": "Renamed by Bob"}
    for page in (owner, viewer):
        assert await page.until(titles.TITLE) == [expected]
    reopened = Client(path, user=people["vera"])
    assert (await reopened.hello())["title"] == "Renamed by Bob"
    for page in (owner, viewer, reopened):
        await page.close()


### The title generator ###


def test_offline_title_is_deterministic():
    made = titles.offline_title(Conversation(), "  what's the  weather, in Paris and Rome today?\n", "Sunny.")
    assert made == "What's the weather in Paris and"
    assert titles.offline_title(Conversation(), "!!!", "") == "Conversation"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_generator_titles_the_first_answer_only(settings, people):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0, "TITLE_GENERATOR": "agentapp.titles.offline_title"}
    page = Client(user=people["owner"])
    conversation_id = (await page.hello())["conversation_id"]

    frames = await chat(page, "calculate 2+2 for my tax form, please")
    assert [frame for frame in frames if frame["type"] == titles.TITLE] == []  # never inside the run's frames
    told = await page.until(titles.TITLE)
    assert told == [{"type": titles.TITLE, "conversation_id": conversation_id, "title": "Calculate 2 2 for my tax"}]
    conversation = await Conversation.objects.aget(pk=conversation_id)
    assert conversation.title == "Calculate 2 2 for my tax"

    await chat(page, "Calculate 3+4")
    await asyncio.wait_for(asyncio.gather(*titles.pending()), timeout=10)
    second = await Run.objects.filter(conversation_id=conversation_id).alatest("started_at")
    assert await sync_to_async(titles.generate_title)(conversation_id, second.pk) is None
    assert (await Conversation.objects.aget(pk=conversation_id)).title == "Calculate 2 2 for my tax"
    await page.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_failing_generator_is_logged_and_changes_nothing(settings, people, caplog):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0, "TITLE_GENERATOR": "tests.test_titles.failing_generator"}
    page = Client(user=people["owner"])
    conversation_id = (await page.hello())["conversation_id"]
    with caplog.at_level(logging.ERROR, logger="agentapp.titles"):
        await chat(page, "Calculate 2+2")
        await asyncio.wait_for(asyncio.gather(*titles.pending()), timeout=10)
    assert "the title generator failed" in caplog.text
    assert (await Conversation.objects.aget(pk=conversation_id)).title == "Calculate 2+2"
    assert await page.communicator.receive_nothing()
    await page.close()


def test_a_users_rename_wins_over_the_generator(settings, people):
    settings.AGENTAPP = {"TITLE_GENERATOR": "agentapp.titles.offline_title"}
    conversation = Conversation.objects.create(owner=people["owner"])
    run_id = calculator_run(conversation, people["owner"])
    Conversation.objects.filter(pk=conversation.pk).update(title="Calculate 2+2")  # the recorder's automatic title
    titles.rename(conversation, "Mine")

    assert titles.generate_title(conversation.pk, run_id) is None
    assert Conversation.objects.get(pk=conversation.pk).title == "Mine"

    titles.rename(conversation, "Calculate 2+2")  # back to the automatic title: the generator may replace it
    assert titles.generate_title(conversation.pk, run_id) == "Calculate 2 2"
    assert Conversation.objects.get(pk=conversation.pk).title == "Calculate 2 2"
