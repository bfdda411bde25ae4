"""The conversations JSON API: each endpoint, pagination, who is refused, CSRF, and what a delete removes."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agentapp.models import AgentState, Conversation, ConversationMember, Message, Run, ToolResult
from agentapp.recorder import create_run, finish_run, write_message
from agentapp.storable import storable_text

LIST_URL = "/api/conversations/"
TOOL_USE = {"toolUseId": "tu-1", "name": "calculator", "input": {"expression": "2+2"}}


def detail_url(conversation_id: Any) -> str:
    return f"/api/conversations/{conversation_id}/"


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("owner", password="x")


@pytest.fixture
def owner_client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def stranger_client(stranger) -> Client:
    client = Client()
    client.force_login(stranger)
    return client


@pytest.fixture
def logged_in_only(settings: Any) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ALLOW_ANONYMOUS": False}


@pytest.fixture
def demo_mode(settings: Any) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ALLOW_ANONYMOUS": True}


def calculator_run(conversation: Conversation, user: Any = None, finished: bool = True) -> uuid.UUID:
    """A 2+2 run written the way the recorder writes one: prompt, tool use, tool result, answer, outcome."""
    run_id = uuid.uuid4()
    position = create_run(conversation.pk, run_id, user.pk if user else None, "Calculate 2+2")
    calls = {"tu-1": {"name": "calculator", "input": {"expression": "2+2"}, "duration_ms": 3}}
    steps = [
        ({"role": "assistant", "content": [{"toolUse": TOOL_USE}]}, False),
        (
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": "tu-1", "status": "success", "content": [{"text": "4"}]}}],
            },
            False,
        ),
        ({"role": "assistant", "content": [{"text": "2+2 = 4."}, {"image": {"source": {"bytes": b"\x89PNG"}}}]}, True),
    ]
    for offset, (message, partial) in enumerate(steps):
        write_message(conversation.pk, run_id, position + offset, message, partial, calls)
    if finished:
        usage = {"inputTokens": 280, "outputTokens": 27, "totalTokens": 307}
        finish_run(
            run_id, conversation.pk, {"status": "completed", "stop_reason": "end_turn", "usage": usage, "latency_ms": 5}
        )
    return run_id


### Listing and creating ###


def test_create_then_list(owner_client, owner):
    created = owner_client.post(LIST_URL, {"title": "  Sums  "}, content_type="application/json")
    untitled = owner_client.post(LIST_URL, content_type="application/json")

    assert created.status_code == 201
    body = created.json()
    assert body["title"] == "Sums"
    assert body["run_count"] == 0
    assert created["Location"] == detail_url(body["id"])
    conversation = Conversation.objects.get(pk=body["id"])
    assert conversation.owner == owner
    assert untitled.status_code == 201
    assert untitled.json()["title"] == ""
    calculator_run(conversation, owner)

    listed = owner_client.get(LIST_URL)

    assert listed.status_code == 200
    page = listed.json()
    assert page["count"] == 2
    assert (page["limit"], page["offset"]) == (20, 0)
    first, second = page["conversations"]
    assert set(first) == {"id", "title", "created", "updated", "run_count"}
    # The conversation with a run was updated last, so it comes first.
    assert (first["id"], first["title"], first["run_count"]) == (body["id"], "Sums", 1)
    assert (second["id"], second["run_count"]) == (untitled.json()["id"], 0)


def test_list_pagination_newest_first(owner_client, owner):
    now = timezone.now()
    ids = []
    for age in range(5):
        conversation = Conversation.objects.create(owner=owner, title=f"c{age}")
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=now - timedelta(minutes=age))
        ids.append(str(conversation.pk))
    Conversation.objects.create(owner=get_user_model().objects.create_user("other"), title="not mine")

    pages = [owner_client.get(LIST_URL, {"limit": 2, "offset": offset}).json() for offset in (0, 2, 4)]

    assert [page["count"] for page in pages] == [5, 5, 5]
    assert [[row["id"] for row in page["conversations"]] for page in pages] == [ids[0:2], ids[2:4], ids[4:5]]
    assert owner_client.get(LIST_URL, {"limit": 2, "offset": 10}).json()["conversations"] == []
    assert owner_client.get(LIST_URL, {"limit": 1000}).json()["limit"] == 100


@pytest.mark.parametrize("query", [{"limit": "ten"}, {"limit": 0}, {"limit": -1}, {"offset": -1}, {"offset": "x"}])
def test_list_refuses_bad_paging(owner_client, query):
    response = owner_client.get(LIST_URL, query)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_parameter"


@pytest.mark.parametrize(
    ("body", "code"),
    [("{not json", "invalid_json"), ("[1, 2]", "invalid_json"), ('{"title": 5}', "invalid_parameter")],
)
def test_create_refuses_bad_bodies(owner_client, body, code):
    response = owner_client.post(LIST_URL, body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"] == code
    assert Conversation.objects.count() == 0


def test_create_refuses_a_title_too_long(owner_client):
    response = owner_client.post(LIST_URL, {"title": "x" * 201}, content_type="application/json")

    assert response.status_code == 400
    assert Conversation.objects.count() == 0


def test_other_methods_are_refused(owner_client, owner):
    conversation = Conversation.objects.create(owner=owner)

    for response, allowed in [
        (owner_client.put(LIST_URL), "GET, POST"),
        (owner_client.put(detail_url(conversation.pk)), "GET, PATCH, DELETE"),
        (owner_client.post(detail_url(conversation.pk)), "GET, PATCH, DELETE"),
    ]:
        assert response.status_code == 405
        assert response["Allow"] == allowed
        assert response.json()["error"] == "method_not_allowed"


def test_route_names():
    conversation_id = uuid.uuid4()

    assert reverse("agentapp:api_conversations") == LIST_URL
    assert reverse("agentapp:api_conversation", args=[conversation_id]) == detail_url(conversation_id)


### Reading ###


def test_read_a_conversation(owner_client, owner):
    conversation = Conversation.objects.create(owner=owner)
    first = calculator_run(conversation, owner)
    second = calculator_run(conversation, owner, finished=False)

    response = owner_client.get(detail_url(conversation.pk))

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(conversation.pk)
    assert body["title"] == "Calculate 2+2"
    assert body["run_count"] == 2
    messages = body["messages"]
    assert [message["position"] for message in messages] == list(range(8))
    assert [message["role"] for message in messages] == ["user", "assistant", "user", "assistant"] * 2
    assert [message["run_id"] for message in messages] == [str(first)] * 4 + [str(second)] * 4
    assert [message["partial"] for message in messages] == [False, False, False, True] * 2
    assert messages[0]["content"] == [{"text": "Calculate 2+2"}]
    assert messages[1]["content"] == [{"toolUse": TOOL_USE}]
    assert messages[3]["content"] == [{"text": "2+2 = 4."}, {"image": {"source": {"bytes": {"bytes": 4}}}}]
    assert messages[2]["tool_results"] == [
        {
            "tool_use_id": "tu-1",
            "tool_name": "calculator",
            "tool_input": {"expression": "2+2"},
            "status": "success",
            "content": [{"text": "4"}],
            "duration_ms": 3,
        }
    ]
    assert all(message["tool_results"] == [] for index, message in enumerate(messages) if index % 4 != 2)
    runs = body["runs"]
    assert [run["id"] for run in runs] == [str(first), str(second)]
    assert runs[0]["status"] == "completed"
    assert runs[0]["stop_reason"] == "end_turn"
    assert (runs[0]["input_tokens"], runs[0]["output_tokens"], runs[0]["total_tokens"]) == (280, 27, 307)
    assert runs[0]["latency_ms"] == 5
    assert runs[0]["finished"] is not None
    assert (runs[1]["status"], runs[1]["finished"]) == ("running", None)


def test_read_an_empty_conversation(owner_client, owner):
    conversation = Conversation.objects.create(owner=owner, title="empty")

    body = owner_client.get(detail_url(conversation.pk)).json()

    assert (body["title"], body["messages"], body["runs"], body["run_count"]) == ("empty", [], [], 0)


### Who is refused ###


def test_a_stranger_gets_404(owner, stranger_client):
    conversation = Conversation.objects.create(owner=owner, title="private")
    calculator_run(conversation, owner)

    read = stranger_client.get(detail_url(conversation.pk))
    delete = stranger_client.delete(detail_url(conversation.pk))
    listed = stranger_client.get(LIST_URL).json()

    assert (read.status_code, read.json()["error"]) == (404, "not_found")
    assert (delete.status_code, delete.json()["error"]) == (404, "not_found")
    assert read.json() == stranger_client.get(detail_url(uuid.uuid4())).json()  # the same as a missing id
    assert "private" not in read.content.decode()
    assert listed["conversations"] == [] and listed["count"] == 0
    assert Conversation.objects.filter(pk=conversation.pk).exists()


@pytest.mark.parametrize("conversation_id", ["not-a-uuid", "123"])
def test_malformed_ids_are_404(owner_client, conversation_id):
    response = owner_client.get(detail_url(conversation_id))

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_anonymous_is_refused_when_not_allowed(logged_in_only, owner):
    conversation = Conversation.objects.create(owner=owner)
    client = Client()

    responses = [
        client.get(LIST_URL),
        client.post(LIST_URL, {"title": "x"}, content_type="application/json"),
        client.get(detail_url(conversation.pk)),
        client.delete(detail_url(conversation.pk)),
    ]

    assert [response.status_code for response in responses] == [401] * 4
    assert {response.json()["error"] for response in responses} == {"login_required"}
    assert Conversation.objects.count() == 1


def test_anonymous_sees_only_its_sessions_conversations(demo_mode, owner):
    mine, theirs = Client(), Client()
    users = Conversation.objects.create(owner=owner, title="the user's")

    created = mine.post(LIST_URL, {"title": "anonymous"}, content_type="application/json")
    conversation_id = created.json()["id"]

    assert created.status_code == 201
    stored = Conversation.objects.get(pk=conversation_id)
    assert stored.owner is None and stored.session_key == mine.session.session_key
    assert [row["id"] for row in mine.get(LIST_URL).json()["conversations"]] == [conversation_id]
    assert mine.get(detail_url(conversation_id)).json()["title"] == "anonymous"
    assert mine.get(detail_url(users.pk)).status_code == 404
    # Another anonymous visitor (no session yet, then its own session) sees none of it.
    assert theirs.get(LIST_URL).json()["conversations"] == []
    assert theirs.get(detail_url(conversation_id)).status_code == 404
    assert theirs.post(LIST_URL, content_type="application/json").status_code == 201
    assert theirs.delete(detail_url(conversation_id)).status_code == 404
    assert Conversation.objects.filter(pk=conversation_id).exists()
    # The session that owns it may delete it.
    assert mine.delete(detail_url(conversation_id)).status_code == 204
    assert not Conversation.objects.filter(pk=conversation_id).exists()


### Deleting ###


def test_delete_removes_every_row_of_the_conversation(owner_client, owner):
    conversation = Conversation.objects.create(owner=owner)
    calculator_run(conversation, owner)
    AgentState.objects.create(conversation=conversation, agent_id="agentapp")
    ConversationMember.objects.create(conversation=conversation, user=get_user_model().objects.create_user("friend"))
    kept = Conversation.objects.create(owner=owner)
    calculator_run(kept, owner)

    response = owner_client.delete(detail_url(conversation.pk))

    assert response.status_code == 204
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    for model in (Run, Message, ToolResult, AgentState, ConversationMember):
        assert not model.objects.filter(conversation_id=conversation.pk).exists(), model.__name__
    assert (Run.objects.count(), Message.objects.count(), ToolResult.objects.count()) == (1, 4, 1)
    assert owner_client.get(detail_url(conversation.pk)).status_code == 404


@pytest.mark.parametrize("role", [ConversationMember.Role.MEMBER, ConversationMember.Role.VIEWER])
def test_only_the_owner_deletes(owner, stranger, stranger_client, role):
    conversation = Conversation.objects.create(owner=owner, title="shared")
    ConversationMember.objects.create(conversation=conversation, user=stranger, role=role)

    read = stranger_client.get(detail_url(conversation.pk))
    delete = stranger_client.delete(detail_url(conversation.pk))

    assert (read.status_code, read.json()["title"]) == (200, "shared")
    assert (delete.status_code, delete.json()["error"]) == (403, "forbidden")
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_delete_waits_for_the_run_in_progress(owner_client, owner):
    conversation = Conversation.objects.create(owner=owner)
    run_id = calculator_run(conversation, owner, finished=False)

    busy = owner_client.delete(detail_url(conversation.pk))

    assert busy.status_code == 409
    assert busy.json()["error"] == "busy"
    assert Message.objects.filter(conversation=conversation).count() == 4
    finish_run(run_id, conversation.pk, {"status": "completed"})
    assert owner_client.delete(detail_url(conversation.pk)).status_code == 204


### CSRF ###


def test_unsafe_methods_need_the_csrf_token(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    assert client.post(LIST_URL, {"title": "x"}, content_type="application/json").status_code == 403
    assert Conversation.objects.count() == 0
    listed = client.get(LIST_URL)  # a GET hands out the token cookie
    assert listed.status_code == 200
    token = client.cookies["csrftoken"].value
    created = client.post(LIST_URL, {"title": "x"}, content_type="application/json", headers={"X-CSRFToken": token})
    assert created.status_code == 201
    url = detail_url(created.json()["id"])

    assert client.delete(url).status_code == 403
    assert Conversation.objects.count() == 1
    assert client.delete(url, headers={"X-CSRFToken": token}).status_code == 204
    assert Conversation.objects.count() == 0


@pytest.mark.parametrize("title", ["a\u0000b", "\ud800", "\udfff tail", "\udbff\udbff"])
def test_create_stores_a_title_a_database_refuses_made_storable(owner_client, title):
    """NUL and lone surrogates became 500s (and left an untitled row) on PostgreSQL and SQLite alike."""
    response = owner_client.post(LIST_URL, json.dumps({"title": title}), content_type="application/json")

    assert response.status_code == 201, response.content
    stored = Conversation.objects.get()
    assert stored.title == storable_text(title).strip()
    assert response.json()["title"] == stored.title
