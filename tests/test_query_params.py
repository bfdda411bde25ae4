"""Query parameters of every view: hostile values get a 400 with a JSON error (the page: a 404), never a 500.

Integers are ASCII digits within a documented range; words are one of a documented set; a parameter given twice
is refused; ``Last-Event-ID`` (header or query) must be exactly an id an event stream sent.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client as HttpClient

from agentapp import protocol
from agentapp.models import Conversation
from tests.test_sse import EventReader, logged_in

LIST_URL = "/api/conversations/"
# Values no integer parameter takes: signs, spaces, exponents, other scripts' digits, NUL, and numbers far too big.
HOSTILE_INTEGERS = [
    "",
    "-1",
    "-0",
    "+1",
    " 1",
    "1 ",
    "1\n",
    "x",
    "1e3",
    "1.0",
    "0x10",
    "\u0661\u0662",  # Arabic-Indic digits: int() reads them as 12
    "\uff11\uff12",  # fullwidth digits
    "\x00",
    "1\x00",
    str(10**24),
    "9" * 5000,
]


@pytest.fixture
def ada_client(ada) -> HttpClient:
    client = HttpClient()
    client.force_login(ada)
    return client


def assert_invalid(response: Any, code: str = "invalid_parameter") -> None:
    assert response.status_code == 400, (response.status_code, response.content[:200])
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["message"], body


def get(client: HttpClient, url: str, query: str) -> Any:
    return client.get(f"{url}?{query}")


### The conversations API ###


def test_list_limit_takes_ascii_digits_from_1_to_1000(ada_client) -> None:
    for value in [*HOSTILE_INTEGERS, "0", "1001", "0" * 5 + "1"]:
        assert_invalid(get(ada_client, LIST_URL, f"limit={quote(value)}"))
    assert get(ada_client, LIST_URL, "limit=1").json()["limit"] == 1
    assert get(ada_client, LIST_URL, "limit=0100").json()["limit"] == 100
    assert get(ada_client, LIST_URL, "limit=1000").json()["limit"] == 100  # served as 100, as documented


def test_list_offset_takes_ascii_digits_up_to_a_billion(ada_client, ada) -> None:
    Conversation.objects.create(owner=ada, title="one")
    for value in [*HOSTILE_INTEGERS, "1000000001"]:
        assert_invalid(get(ada_client, LIST_URL, f"offset={quote(value)}"))
    assert len(get(ada_client, LIST_URL, "offset=0").json()["conversations"]) == 1
    far = get(ada_client, LIST_URL, "offset=1000000000").json()
    assert (far["offset"], far["count"], far["conversations"]) == (1_000_000_000, 1, [])


def test_list_refuses_a_repeated_parameter(ada_client) -> None:
    for query in ("limit=1&limit=1", "offset=0&offset=1", "limit=5&offset=0&limit=6"):
        assert_invalid(get(ada_client, LIST_URL, query))
    assert get(ada_client, LIST_URL, "limit=5&offset=0&unknown=1&unknown=2").status_code == 200  # unknown: ignored


def test_too_many_parameters_answer_json(ada_client, ada) -> None:
    """Past Django's DATA_UPLOAD_MAX_NUMBER_FIELDS the API answers in its own shape, not Django's HTML page."""
    many = "&".join(f"p{n}=1" for n in range(1001))
    assert_invalid(get(ada_client, LIST_URL, many))
    conversation = Conversation.objects.create(owner=ada)
    assert_invalid(get(ada_client, f"/sse/{conversation.pk}/", many))


def test_members_api_refuses_a_user_id_past_any_column(ada_client, ada) -> None:
    conversation = Conversation.objects.create(owner=ada)
    for user_id in (2**63, 10**24):
        response = ada_client.delete(f"/api/conversations/{conversation.pk}/members/{user_id}/")
        assert response.status_code == 404 and response.json()["error"] == "not_a_member"


### The chat page ###


def test_chat_page_takes_one_canonical_conversation_id(ada_client, ada) -> None:
    """``c`` is one UUID in ASCII hex; anything else is a conversation the caller may not open (404)."""
    digits = "11111111-1111-1111-1111-111111111111"
    conversation = Conversation.objects.create(pk=uuid.UUID(digits), owner=ada, title="ones")
    assert ada_client.get("/", {"c": digits}).status_code == 200
    assert ada_client.get("/", {"c": digits.upper()}).status_code == 200
    assert ada_client.get("/", {"c": digits.replace("-", "")}).status_code == 200
    hostile = [
        digits.replace("1", "\u0661"),  # uuid.UUID() reads these as the same id
        digits.replace("1", "\uff11"),
        "{" + digits + "}",
        "urn:uuid:" + digits,
        " " + digits,
        digits + "\x00",
        "",
        "x" * 5000,
    ]
    for value in hostile:
        assert ada_client.get("/", {"c": value}).status_code == 404, value
    assert ada_client.get(f"/?c={conversation.pk}&c={conversation.pk}").status_code == 404


### Server-Sent Events ###


async def open_stream(client: Any, url: str, **headers: str) -> None:
    """The stream opens (200) with its conversation frame; then the client leaves."""
    reader = EventReader(await client.get(url, headers=headers))
    assert (await reader.frame())["type"] == protocol.CONVERSATION
    await reader.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_sse_presence_is_one_of_four_words(ada) -> None:
    conversation = await Conversation.objects.acreate(owner=ada)
    client = await logged_in(ada)
    url = f"/sse/{conversation.pk}/"
    for value in [*HOSTILE_INTEGERS, "2", "yes", "on", "True", "TRUE", "true "]:
        assert_invalid(await client.get(f"{url}?presence={quote(value)}"))
    assert_invalid(await client.get(f"{url}?presence=1&presence=1"))
    for value in ("1", "true", "0", "false"):
        await open_stream(client, f"{url}?presence={value}")


def hostile_event_ids(run_id: str) -> list[str]:
    """Event ids that are not exactly ``<run uuid>:<seq>`` with seq -1 or 0 to 15 ASCII digits."""
    seqs = [*HOSTILE_INTEGERS, "-2", "--1", "9" * 16]
    return [
        *(f"{run_id}:{seq}" for seq in seqs if seq != "-1"),
        " " + run_id + ":1",
        run_id + ":1\n",
        run_id.replace("-", "") + "-:1",
        "-" * 4 + run_id.replace("-", "") + ":1",
        run_id.replace("a", "\u0661") + ":1",
        "\u0661" * 32 + ":1",
        run_id + ":1:2",
        run_id,
        ":1",
        "\x00",
    ]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_sse_last_event_id_in_the_query_is_strict(ada) -> None:
    conversation = await Conversation.objects.acreate(owner=ada)
    client = await logged_in(ada)
    url = f"/sse/{conversation.pk}/"
    run_id = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    for value in [*hostile_event_ids(run_id), ""]:
        assert_invalid(await client.get(f"{url}?last_event_id={quote(value)}"), protocol.ERR_INVALID_RESUME)
    assert_invalid(await client.get(f"{url}?last_event_id={run_id}:1&last_event_id={run_id}:1"))
    # Well-formed ids of a run nobody keeps: the stream opens and says so (the history is the record).
    for seq in ("-1", "0", "9" * 15):
        await open_stream(client, f"{url}?last_event_id={run_id}:{seq}")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_sse_last_event_id_header_is_strict(ada) -> None:
    conversation = await Conversation.objects.acreate(owner=ada)
    client = await logged_in(ada)
    url = f"/sse/{conversation.pk}/"
    run_id = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    for value in hostile_event_ids(run_id):
        raw = value.encode().decode("latin-1")  # as a server hands a header's UTF-8 bytes to Django
        response = await client.get(url, headers={"Last-Event-ID": raw})
        assert_invalid(response, protocol.ERR_INVALID_RESUME)
    # The header wins over the query, but both must be well formed.
    valid = f"{run_id}:3"
    assert_invalid(await client.get(f"{url}?last_event_id=x", headers={"Last-Event-ID": valid}), "invalid_resume")
    await open_stream(client, f"{url}?last_event_id={run_id}:1", **{"Last-Event-ID": valid})
    await open_stream(client, url, **{"Last-Event-ID": ""})  # what EventSource sends before it saw an id: none
