"""Searching conversations (titles and message text) through the API: only the caller's own and shared ones.

The same tests run on SQLite (the plain match) and, with ``DATABASE_URL`` set, on PostgreSQL (full-text search).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from agentapp.models import Conversation, ConversationMember
from agentapp.recorder import create_run, finish_run, write_message
from tests.test_access import anonymous_session

SEARCH_URL = "/api/conversations/search/"


def conversation_with(owner: Any, title: str, *texts: str, tool_output: str = "") -> Conversation:
    """A conversation asking ``texts`` (each answered "Done."), the last one calling a tool with ``tool_output``."""
    conversation = Conversation.objects.create(owner=owner)
    for text in texts:
        run_id = uuid.uuid4()
        position = create_run(conversation.pk, run_id, owner.pk if owner else None, text)
        steps: list[dict[str, Any]] = []
        if tool_output and text == texts[-1]:
            use = {"toolUseId": "tu-1", "name": "lookup", "input": {"query": "x"}}
            result = {"toolUseId": "tu-1", "status": "success", "content": [{"text": tool_output}]}
            steps += [
                {"role": "assistant", "content": [{"toolUse": use}]},
                {"role": "user", "content": [{"toolResult": result}]},
            ]
        steps.append({"role": "assistant", "content": [{"text": "Done."}]})
        calls = {"tu-1": {"name": "lookup", "input": {"query": "x"}, "duration_ms": 1}}
        for offset, message in enumerate(steps):
            write_message(conversation.pk, run_id, position + offset, message, False, calls)
        finish_run(run_id, conversation.pk, {"status": "completed", "stop_reason": "end_turn", "usage": {}})
    Conversation.objects.filter(pk=conversation.pk).update(title=title)
    return conversation


@pytest.fixture
def people(db) -> dict[str, Any]:
    users = get_user_model().objects
    return {name: users.create_user(name, password=None) for name in ("owner", "other")}


@pytest.fixture
def corpus(people) -> dict[str, Conversation]:
    """The owner's conversations, one shared with them, and the other user's that must never be found."""
    owner, other = people["owner"], people["other"]
    shared = conversation_with(other, "Shared notes", "Where does a zebra live?")
    ConversationMember.objects.create(conversation=shared, user=owner, role="viewer")
    return {
        "budget": conversation_with(owner, "Budget planning", "How much for rent?"),
        "zebra": conversation_with(owner, "Animals", "Tell me about the Zebra crossing"),
        "tool": conversation_with(owner, "Lookups", "Look it up", tool_output="the quokka is happy"),
        "shared": shared,
        "secret budget": conversation_with(other, "Budget secret", "zebra quokka rent"),
    }


def found(client: Client, q: str, **extra: Any) -> list[str]:
    answer = client.get(SEARCH_URL, {"q": q, **extra})
    assert answer.status_code == 200, answer.content
    return [row["id"] for row in answer.json()["conversations"]]


def ids(corpus: dict[str, Conversation], *names: str) -> set[str]:
    return {str(corpus[name].pk) for name in names}


def test_titles_message_text_and_tool_results_are_searched(people, corpus):
    client = Client()
    client.force_login(people["owner"])

    assert set(found(client, "budget")) == ids(corpus, "budget")
    assert set(found(client, "BUDGET")) == ids(corpus, "budget")
    assert set(found(client, "rent")) == ids(corpus, "budget")
    assert set(found(client, "zebra")) == ids(corpus, "zebra", "shared")  # shared with the owner
    assert set(found(client, "quokka")) == ids(corpus, "tool")
    assert set(found(client, "crossing zebra")) == ids(corpus, "zebra")  # every word, in any order
    assert found(client, "giraffe") == []
    # JSON keys and structure are not text: "toolUse" and "text" are in every stored message.
    assert found(client, "toolUse") == []
    assert found(client, "text") == []


def test_another_users_conversations_never_appear(people, corpus):
    client = Client()
    client.force_login(people["owner"])
    theirs = ids(corpus, "secret budget")
    for q in ("budget", "secret", "zebra", "quokka", "rent", "Budget secret", "done"):
        assert not set(found(client, q)) & theirs, q
    # The other user finds it; the conversation they shared is theirs too.
    other = Client()
    other.force_login(people["other"])
    assert set(found(other, "zebra")) == ids(corpus, "shared", "secret budget")
    # An anonymous session finds only its own.
    anonymous = Client()
    anonymous.cookies["sessionid"] = session_key = anonymous_session()
    mine = Conversation.objects.create(session_key=session_key, title="Anonymous budget")
    assert found(anonymous, "budget") == [str(mine.pk)]


def test_results_are_paginated_newest_first(people, corpus):
    client = Client()
    client.force_login(people["owner"])
    everything = client.get(SEARCH_URL, {"q": "done"}).json()
    assert everything["count"] == 4 and everything["q"] == "done"
    assert set(found(client, "done")) == ids(corpus, "budget", "zebra", "tool", "shared")
    pages = [client.get(SEARCH_URL, {"q": "done", "limit": 3, "offset": offset}).json() for offset in (0, 3)]
    assert [page["count"] for page in pages] == [4, 4]
    assert [row["id"] for page in pages for row in page["conversations"]] == [
        row["id"] for row in everything["conversations"]
    ]
    assert set(everything["conversations"][0]) == {"id", "title", "created", "updated", "run_count"}


@pytest.mark.parametrize(
    "query",
    ["", "q=", "q=%20%20", "q=a&q=b", "q=" + "x" * 201, "q=a%00b", "q=zebra&limit=0", "q=zebra&offset=-1"],
)
def test_bad_queries_are_refused(people, corpus, query):
    client = Client()
    client.force_login(people["owner"])
    answer = client.get(f"{SEARCH_URL}?{query}")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_parameter"
    assert client.post(SEARCH_URL, {"q": "zebra"}).status_code == 405


def test_query_syntax_is_never_an_error(people, corpus):
    client = Client()
    client.force_login(people["owner"])
    for q in ('"zebra', "zebra -crossing", "(&|!:*)", "%_\\", "'; drop table x; --", "x" * 200):
        client.get(SEARCH_URL, {"q": q}).json()["conversations"]  # a 200 answer, whatever it finds
    assert found(client, "%") == []
