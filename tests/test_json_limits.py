"""Client JSON at every entry point: deep nesting, huge numbers and non-JSON constants get a documented answer.

One parser (``protocol.decode_json``) reads WebSocket frames, SSE ``POST`` bodies and API bodies; each entry point
is tested here with nesting far past the limit (10,000 levels), at ``MAX_JSON_DEPTH`` and one past it, and the
connection or process must still answer a prompt afterwards.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient
from django.test import Client as HttpClient

from agentapp import protocol
from agentapp.conf import DEFAULTS
from agentapp.models import Conversation, ConversationMember
from tests.test_client_frames import assert_error, assert_usable
from tests.test_sse import EventReader, logged_in, post
from tests.wsclient import Client

LIMIT = DEFAULTS["MAX_JSON_DEPTH"]
DEEP = 10_000
AGENTAPP = Path(__file__).resolve().parent.parent / "agentapp"


def arrays(depth: int) -> str:
    """``depth`` nested arrays: ``[[...]]`` (depth 0 is ``null``)."""
    return "[" * depth + "]" * depth if depth else "null"


def objects(depth: int) -> str:
    """``depth`` nested objects: ``{"a":{"a":...null}}``."""
    return '{"a":' * depth + "null" + "}" * depth


def inside(body: dict[str, Any], nested: str) -> str:
    """The JSON object ``body`` with one more key whose value is ``nested``: one level deeper than ``nested``."""
    return json.dumps(body)[:-1] + ', "x": ' + nested + "}"


NESTINGS = {"arrays": arrays, "objects": objects}

# Texts refused as not JSON (or not JSON we take), each wrapped in a cancel frame or given alone.
NOT_OURS = {
    "int_over_python_limit": '{"type": "cancel", "n": ' + "1" * 5000 + "}",
    "long_int": '{"type": "cancel", "n": ' + "1" * (protocol.MAX_JSON_NUMBER_CHARS + 1) + "}",
    "long_float": '{"type": "cancel", "n": 0.' + "1" * protocol.MAX_JSON_NUMBER_CHARS + "}",
    "nan": '{"type": "cancel", "n": NaN}',
    "infinity": '{"type": "cancel", "n": Infinity}',
    "minus_infinity": '{"type": "cancel", "n": -Infinity}',
    "overflowing_float": '{"type": "cancel", "n": 1e999}',
}


### The one parser ###


@pytest.mark.parametrize("nesting", list(NESTINGS))
def test_decode_json_refuses_nesting_past_the_limit(nesting: str) -> None:
    nested = NESTINGS[nesting]
    assert protocol.decode_json(nested(LIMIT), LIMIT) is not None
    for depth in (LIMIT + 1, 1000, DEEP):
        with pytest.raises(protocol.ProtocolError) as refused:
            protocol.decode_json(nested(depth), LIMIT)
        assert refused.value.code == protocol.ERR_TOO_DEEP, depth
    with pytest.raises(protocol.ProtocolError) as unclosed:
        protocol.decode_json(nested(DEEP)[: DEEP * 2], LIMIT)  # the opening half only
    assert unclosed.value.code in (protocol.ERR_TOO_DEEP, protocol.ERR_INVALID_JSON)


def test_decode_json_counts_depth_as_documented() -> None:
    """A scalar is depth 0; ``[]`` and ``{}`` are 1; a wide value is as deep as its deepest branch."""
    assert protocol.decode_json("5", 0) == 5
    assert protocol.decode_json("[]", 1) == []
    wide = json.dumps({"a": [1, 2, {"b": [[]]}], "c": {}})  # the deepest branch: {} [ {} [ [] -> 5
    assert protocol.decode_json(wide, 5) == json.loads(wide)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_json(wide, 4)


@pytest.mark.parametrize("name", list(NOT_OURS))
def test_decode_json_refuses_numbers_it_will_not_take(name: str) -> None:
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode_json(NOT_OURS[name], LIMIT)
    assert refused.value.code == protocol.ERR_INVALID_JSON
    assert refused.value.message


def test_decode_json_takes_ordinary_json_and_refuses_bad_bytes() -> None:
    longest = "-" + "9" * (protocol.MAX_JSON_NUMBER_CHARS - 1)
    text = '{"n": ' + longest + ', "f": -1.5e300, "s": "\\u00e9", "l": [true, false, null]}'
    assert protocol.decode_json(text.encode(), LIMIT) == json.loads(text)
    for raw in (b"\xff\xfe{}", b'{"a": "\xc3"}', b"\xef\xbb\xbf{}", "", "{", "[1,]"):
        with pytest.raises(protocol.ProtocolError) as refused:
            protocol.decode_json(raw, LIMIT)
        assert refused.value.code == protocol.ERR_INVALID_JSON, raw


def test_decode_json_reads_the_setting_by_default(settings: Any) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "MAX_JSON_DEPTH": 3}
    assert protocol.decode_json(arrays(3)) == [[[]]]
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_json(arrays(4))


def test_client_json_is_parsed_in_one_place() -> None:
    """No module of agentapp calls json.loads on what a client sent: decode_json is the only parser of it."""
    # What each other call parses: the server's own frames, and the offline model's tool arguments in a prompt.
    allowed = {("protocol.py", "decode_json"), ("loopback.py", "_send"), ("offline_model.py", "_plan")}
    found = set()
    for path in AGENTAPP.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and ast.unparse(node.func) in ("json.loads", "json.load", "loads"):
                    found.add((path.name, function.name))
    assert found <= allowed, found - allowed
    assert ("protocol.py", "decode_json") in found


### WebSocket ###


def ws_cases() -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, [(frame text, expected error code)]): far too deep, at the limit (a valid cancel) then one past it."""
    cases = []
    for name, nested in NESTINGS.items():
        cases += [
            (f"bare_{name}_{DEEP}", [(nested(DEEP), protocol.ERR_TOO_DEEP)]),
            (f"frame_{name}_{DEEP}", [(inside({"type": "cancel"}, nested(DEEP - 1)), protocol.ERR_TOO_DEEP)]),
            (
                f"frame_{name}_at_limit_then_past_it",
                [
                    (inside({"type": "cancel"}, nested(LIMIT - 1)), protocol.ERR_NO_ACTIVE_RUN),
                    (inside({"type": "cancel"}, nested(LIMIT)), protocol.ERR_TOO_DEEP),
                ],
            ),
        ]
    cases.append(("unclosed_arrays", [("[" * DEEP, protocol.ERR_TOO_DEEP)]))
    cases.append(("numbers", [(text, protocol.ERR_INVALID_JSON) for text in NOT_OURS.values()]))
    return cases


WS_CASES = ws_cases()


@pytest.fixture
def instant(settings: Any) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 0}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("name", "sent"), WS_CASES, ids=[case[0] for case in WS_CASES])
async def test_websocket_answers_deep_json_with_an_error_frame(instant, ada, name, sent) -> None:
    client = Client(user=ada)
    conversation_id = (await client.hello())["conversation_id"]
    for text, code in sent:
        assert len(text.encode()) <= DEFAULTS["MAX_FRAME_BYTES"], "the frame must pass the size check"
        await client.send_text(text)
        await assert_error(client, conversation_id, code)
    await assert_usable(client, conversation_id)
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_websocket_follows_the_depth_setting(settings, ada) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 0, "MAX_JSON_DEPTH": 4}
    client = Client(user=ada)
    conversation_id = (await client.hello())["conversation_id"]
    await client.send_text(inside({"type": "cancel"}, arrays(3)))
    await assert_error(client, conversation_id, protocol.ERR_NO_ACTIVE_RUN)
    await client.send_text(inside({"type": "cancel"}, arrays(4)))
    frame = await assert_error(client, conversation_id, protocol.ERR_TOO_DEEP)
    assert "4" in frame["message"]
    await assert_usable(client, conversation_id)
    await client.close()


### SSE POST ###


async def assert_prompt_streams(client: AsyncClient) -> None:
    """A prompt POSTed after the refusals still runs to completion."""
    reader = EventReader(await post(client, "/sse/", {"type": "prompt", "prompt": "Calculate 2+2"}))
    assert (await reader.frame())["type"] == protocol.CONVERSATION
    assert (await reader.rest())[-1]["status"] == protocol.STATUS_COMPLETED


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("nesting", list(NESTINGS))
async def test_sse_post_answers_deep_json_with_a_400(instant, ada, nesting) -> None:
    nested = NESTINGS[nesting]
    client = await logged_in(ada)
    for text in (nested(DEEP), inside({"type": "cancel"}, nested(DEEP - 1)), inside({"type": "cancel"}, nested(LIMIT))):
        response = await post(client, "/sse/", text)
        assert response.status_code == 400, response.content[:200]
        assert response.json()["error"] == protocol.ERR_TOO_DEEP
        assert response.json()["message"]
    for name, text in NOT_OURS.items():
        response = await post(client, "/sse/", text)
        assert (response.status_code, response.json()["error"]) == (400, protocol.ERR_INVALID_JSON), name
    # At the limit the frame is taken: a cancel with nothing to cancel is answered in the stream.
    reader = EventReader(await post(client, "/sse/", inside({"type": "cancel"}, nested(LIMIT - 1))))
    assert (await reader.frame())["type"] == protocol.CONVERSATION
    frames = await reader.rest()
    assert [(frame["type"], frame.get("code")) for frame in frames] == [(protocol.ERROR, protocol.ERR_NO_ACTIVE_RUN)]
    await assert_prompt_streams(client)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_sse_post_over_djangos_body_limit_is_a_json_413(settings, instant, ada) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50
    client = await logged_in(ada)
    response = await post(client, "/sse/", {"type": "prompt", "prompt": "Calculate 2+2", "pad": "x" * 50})
    assert response.status_code == 413 and response.json()["error"] == protocol.ERR_FRAME_TOO_LARGE
    await assert_prompt_streams(client)


### The conversations and members APIs ###


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob", password="x")


@pytest.fixture
def ada_client(ada) -> HttpClient:
    client = HttpClient()
    client.force_login(ada)
    return client


def post_text(client: HttpClient, url: str, text: str | bytes) -> Any:
    return client.post(url, text, content_type="application/json")


def assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.content[:200]
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == code and response.json()["message"]


@pytest.mark.parametrize("nesting", list(NESTINGS))
def test_conversations_api_answers_deep_json_with_a_400(ada_client, nesting) -> None:
    nested = NESTINGS[nesting]
    for text in (nested(DEEP), inside({"title": "deep"}, nested(DEEP - 1)), inside({"title": "deep"}, nested(LIMIT))):
        assert_refused(post_text(ada_client, "/api/conversations/", text), 400, protocol.ERR_TOO_DEEP)
    for text in NOT_OURS.values():
        assert_refused(post_text(ada_client, "/api/conversations/", text), 400, "invalid_json")
    assert not Conversation.objects.exists()
    created = post_text(ada_client, "/api/conversations/", inside({"title": "at the limit"}, nested(LIMIT - 1)))
    assert created.status_code == 201 and created.json()["title"] == "at the limit"
    assert ada_client.get("/api/conversations/").json()["count"] == 1
    # GET and DELETE take no body: a deep one changes nothing.
    url = created["Location"]
    assert ada_client.generic("GET", url, arrays(DEEP), content_type="application/json").status_code == 200
    assert ada_client.generic("DELETE", url, arrays(DEEP), content_type="application/json").status_code == 204


def test_conversations_api_limits_the_body_size(ada_client, settings) -> None:
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "MAX_FRAME_BYTES": 100}
    body = json.dumps({"title": "t", "pad": "x" * 100})
    assert_refused(post_text(ada_client, "/api/conversations/", body), 413, "body_too_large")
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50  # Django's own limit refuses before agentapp's
    assert_refused(post_text(ada_client, "/api/conversations/", body), 413, "body_too_large")


@pytest.mark.parametrize("nesting", list(NESTINGS))
def test_members_api_answers_deep_json_with_a_400(ada_client, ada, bob, nesting) -> None:
    nested = NESTINGS[nesting]
    conversation = Conversation.objects.create(owner=ada, title="shared")
    url = f"/api/conversations/{conversation.pk}/members/"
    share = {"username": "bob", "role": "viewer"}
    for text in (nested(DEEP), inside(share, nested(DEEP - 1)), inside(share, nested(LIMIT))):
        assert_refused(post_text(ada_client, url, text), 400, protocol.ERR_TOO_DEEP)
    for text in NOT_OURS.values():
        assert_refused(post_text(ada_client, url, text), 400, "invalid_json")
    assert_refused(post_text(ada_client, url, b'{"username": "\xff"}'), 400, "invalid_json")
    assert not ConversationMember.objects.exists()
    added = post_text(ada_client, url, inside(share, nested(LIMIT - 1)))
    assert added.status_code == 201 and added.json()["member"]["role"] == "viewer"
    assert [m["username"] for m in ada_client.get(url).json()["members"]] == ["bob"]


### Size in values, counted before parsing ###


def test_thousands_of_tiny_arrays_are_refused_before_parsing() -> None:
    """A frame of 21,000 empty arrays (63 kB) cost tens of milliseconds of the event loop to build and walk."""
    wide = '{"type": "cancel", "a": [' + ",".join(["[]"] * 21_000) + "]}"
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode_json(wide)
    assert refused.value.code == protocol.ERR_TOO_COMPLEX
    many_values = "[" + ",".join(["1"] * 5_000) + "]"
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode_json(many_values)
    assert refused.value.code == protocol.ERR_TOO_COMPLEX


def test_the_value_count_is_exact_at_the_limit_and_ignores_strings() -> None:
    at_limit = "[" + ",".join(["0"] * protocol.MAX_JSON_ITEMS) + "]"  # 1 array and 999 commas
    assert len(protocol.decode_json(at_limit)) == protocol.MAX_JSON_ITEMS
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode_json("[" + ",".join(["0"] * (protocol.MAX_JSON_ITEMS + 1)) + "]")
    assert refused.value.code == protocol.ERR_TOO_COMPLEX
    # Brackets and commas inside a string are text: a prompt full of them is taken whole.
    prompt = '[{"a": 1}, ' * 1400
    frame = protocol.parse_client_frame(json.dumps({"type": "prompt", "prompt": prompt}), None, 64_000, 16_000)
    assert frame.prompt == prompt


def test_unterminated_strings_are_read_once() -> None:
    """The strings are taken out in one left-to-right pass, even when no string is ever closed."""
    for text in ('"\\' * 32_000, '"a' * 32_000, '"' + "\\\\" * 32_000, "[" + '"[,' * 20_000):
        with pytest.raises(protocol.ProtocolError) as refused:
            protocol.decode_json(text)
        assert refused.value.code in (protocol.ERR_INVALID_JSON, protocol.ERR_TOO_COMPLEX)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_websocket_answers_a_frame_of_tiny_arrays_with_too_complex(instant, ada) -> None:
    client = Client(user=ada)
    conversation_id = (await client.hello())["conversation_id"]
    await client.send_text('{"type": "cancel", "a": [' + ",".join(["[]"] * 21_000) + "]}")
    await assert_error(client, conversation_id, protocol.ERR_TOO_COMPLEX)
    await assert_usable(client, conversation_id)
    await client.close()
