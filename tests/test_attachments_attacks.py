"""Attachments under attack: who may upload and fetch, hostile names and bytes, odd bodies, and prompt frames.

Each test asserts the behaviour that is safe; a refused request must never store a row or a file, nor answer 500.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient, Client

from agentapp import attachments, protocol
from agentapp.access import fresh_conversation
from agentapp.models import Attachment, Conversation, ConversationMember, Run
from tests import attachment_files as files
from tests.test_resume import TOKENS
from tests.wsclient import Client as SocketClient

BOUNDARY = "attackboundary"
CSP = "default-src 'none'; sandbox"


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    """A fresh MEDIA_ROOT, anonymous use off: what the tests store lands here and nowhere else."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ALLOW_ANONYMOUS": False, "OFFLINE_TOKENS_PER_SECOND": 0}
    return tmp_path / "media"


@pytest.fixture
def people(db: Any) -> dict[str, Any]:
    """An owner, a member, a viewer of ``conversation`` and a stranger."""
    make = get_user_model().objects.create_user
    return {name: make(name, password="x") for name in ("owner", "member", "viewer", "stranger")}


@pytest.fixture
def conversation(people: dict[str, Any]) -> Conversation:
    """The owner's conversation, with a member and a viewer."""
    conversation = Conversation.objects.create(owner=people["owner"])
    ConversationMember.objects.create(conversation=conversation, user=people["member"], role="member")
    ConversationMember.objects.create(conversation=conversation, user=people["viewer"], role="viewer")
    return conversation


def demo(settings: Any, **patch: Any) -> None:
    """Turn anonymous (demo) use on, with any other settings given."""
    settings.AGENTAPP = {**settings.AGENTAPP, "ALLOW_ANONYMOUS": True, **patch}


def logged_in(user: Any, **kwargs: Any) -> Client:
    """A test client logged in as ``user``."""
    client = Client(**kwargs)
    client.force_login(user)
    return client


def upload_url(conversation_id: Any) -> str:
    """The upload endpoint of a conversation."""
    return f"/api/conversations/{conversation_id}/attachments/"


def upload(client: Client, conversation_id: Any, name: str, data: bytes, **extra: Any) -> Any:
    """Upload one file as the multipart field ``file``."""
    return client.post(upload_url(conversation_id), {"file": SimpleUploadedFile(name, data)}, **extra)


def raw_part(disposition: bytes, data: bytes, field: bytes = b"file") -> bytes:
    """One multipart part whose Content-Disposition parameters after ``name`` are given raw."""
    return (
        b"--" + BOUNDARY.encode() + b"\r\n"
        b'Content-Disposition: form-data; name="' + field + b'"; ' + disposition + b"\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    )


def raw_upload(client: Client, conversation_id: Any, parts: list[bytes], **extra: Any) -> Any:
    """POST a hand-made multipart body."""
    body = b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"
    return client.generic(
        "POST", upload_url(conversation_id), body, content_type=f"multipart/form-data; boundary={BOUNDARY}", **extra
    )


def stored_files(media: Path) -> list[Path]:
    """Every file under MEDIA_ROOT."""
    return [path for path in media.rglob("*") if path.is_file()] if media.exists() else []


def assert_nothing_stored(media: Path) -> None:
    """No attachment row and no file."""
    assert not Attachment.objects.exists()
    assert stored_files(media) == []


def assert_json_error(response: Any, status: int, code: str) -> None:
    """A JSON error answer with this status and code, and no traceback."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == code
    assert b"Traceback" not in response.content


def body_of(response: Any) -> bytes:
    """The streamed body of a file response."""
    return b"".join(response.streaming_content)


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring ``width`` x ``height`` (no pixel data)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(header))


### Who may upload and fetch ###


def test_wrong_methods_are_refused_and_store_nothing(media, people, conversation):
    """Upload takes POST only, download GET only: anything else is 405 with Allow."""
    client = logged_in(people["owner"])
    for method in ("get", "put", "patch", "delete"):
        response = getattr(client, method)(upload_url(conversation.pk))
        assert_json_error(response, 405, "method_not_allowed")
        assert response["Allow"] == "POST"
    assert_nothing_stored(media)
    url = upload(client, conversation.pk, "cat.png", files.png()).json()["url"]
    for method in ("post", "put", "patch", "delete"):
        response = getattr(client, method)(url)
        assert_json_error(response, 405, "method_not_allowed")
        assert response["Allow"] == "GET"
    assert Attachment.objects.count() == 1 and len(stored_files(media)) == 1


def test_ids_that_are_no_uuid_or_unknown_are_not_found(media, people, conversation):
    """A download or upload URL with a non-UUID id, or an unknown one, is 404 and stores nothing."""
    client = logged_in(people["owner"])
    for bad in ("not-a-uuid", "..%2F..%2Fetc%2Fpasswd", "1 OR 1=1", "0" * 5000):
        assert client.get(f"/api/attachments/{bad}/").status_code == 404
        assert upload(client, bad, "cat.png", files.png()).status_code == 404
    assert_json_error(client.get(f"/api/attachments/{uuid.uuid4()}/"), 404, protocol.ERR_NOT_FOUND)
    assert_json_error(upload(client, uuid.uuid4(), "cat.png", files.png()), 404, protocol.ERR_NOT_FOUND)
    assert_nothing_stored(media)


def test_member_uploads_and_all_with_access_fetch(media, people, conversation):
    """A member may upload; owner, member and viewer fetch the same bytes; a stranger gets the same 404 as no file."""
    response = upload(logged_in(people["member"]), conversation.pk, "cat.png", files.png())
    assert response.status_code == 201, response.content
    url = response.json()["url"]
    assert Attachment.objects.get().owner == people["member"]
    for name in ("owner", "member", "viewer"):
        assert body_of(logged_in(people[name]).get(url)) == files.png()
    stranger = logged_in(people["stranger"]).get(url)
    missing = logged_in(people["stranger"]).get(f"/api/attachments/{uuid.uuid4()}/")
    assert (
        (stranger.status_code, stranger.json())
        == (missing.status_code, missing.json())
        == (
            404,
            {"error": "not_found", "message": "No such attachment."},
        )
    )


def test_removed_member_loses_upload_and_download(media, people, conversation):
    """Access is checked on every request: a member removed from the conversation can neither upload nor fetch."""
    client = logged_in(people["member"])
    url = upload(client, conversation.pk, "cat.png", files.png()).json()["url"]
    ConversationMember.objects.filter(user=people["member"]).delete()
    assert_json_error(client.get(url), 404, protocol.ERR_NOT_FOUND)
    assert_json_error(upload(client, conversation.pk, "dog.png", files.png()), 404, protocol.ERR_NOT_FOUND)
    assert Attachment.objects.count() == 1


def test_anonymous_session_in_demo_mode_is_a_stranger_to_others(media, settings, people, conversation):
    """In demo mode an anonymous session uploads into its own conversation only, and fetches only its own files."""
    demo(settings)
    anonymous = Client()
    assert_json_error(upload(anonymous, conversation.pk, "cat.png", files.png()), 404, protocol.ERR_NOT_FOUND)
    assert_nothing_stored(media)
    anonymous.get("/api/conversations/")  # a session of its own
    anonymous.session.save()

    fresh = fresh_conversation(None, anonymous.session.session_key)
    response = upload(anonymous, fresh.pk, "notes.txt", b"mine")
    assert response.status_code == 201, response.content
    url = response.json()["url"]
    attachment = Attachment.objects.get()
    assert attachment.owner is None and attachment.session_key == anonymous.session.session_key
    assert body_of(anonymous.get(url)) == b"mine"
    for other in (Client(), logged_in(people["stranger"]), logged_in(people["owner"])):
        assert_json_error(other.get(url), 404, protocol.ERR_NOT_FOUND)
        assert_json_error(upload(other, fresh.pk, "x.txt", b"theirs"), 404, protocol.ERR_NOT_FOUND)
    assert Attachment.objects.count() == 1


def test_anonymous_upload_without_demo_mode_is_401(media, people, conversation):
    """Without ``ALLOW_ANONYMOUS`` an anonymous upload or download is 401 and stores nothing (not even a session)."""
    url = upload(logged_in(people["owner"]), conversation.pk, "cat.png", files.png()).json()["url"]
    anonymous = Client()
    assert_json_error(upload(anonymous, conversation.pk, "x.txt", b"x"), 401, protocol.ERR_LOGIN_REQUIRED)
    assert_json_error(anonymous.get(url), 401, protocol.ERR_LOGIN_REQUIRED)
    assert Attachment.objects.count() == 1
    assert "sessionid" not in anonymous.cookies


def test_csrf_is_checked_for_every_uploader(media, settings, people, conversation):
    """An upload without the CSRF token is 403 for a member and for an anonymous demo session, storing nothing."""
    member = logged_in(people["member"], enforce_csrf_checks=True)
    assert upload(member, conversation.pk, "cat.png", files.png()).status_code == 403
    demo(settings)
    anonymous = Client(enforce_csrf_checks=True)
    assert upload(anonymous, uuid.uuid4(), "cat.png", files.png()).status_code == 403
    wrong = upload(member, conversation.pk, "cat.png", files.png(), HTTP_X_CSRFTOKEN="x" * 32)
    assert wrong.status_code == 403
    assert_nothing_stored(media)
    assert not Conversation.objects.exclude(pk=conversation.pk).exists()


def test_refused_upload_into_a_fresh_id_stores_no_conversation(media, people):
    """A refused upload stores nothing (docs/api.md): no empty conversation for a fresh id either."""

    client = logged_in(people["stranger"])
    fresh = [fresh_conversation(people["stranger"], None).pk for _ in range(3)]
    assert_json_error(upload(client, fresh[0], "a.zip", files.ZIP), 415, "unsupported_type")
    assert_json_error(upload(client, fresh[1], "a.txt", b""), 400, "missing_file")
    assert_json_error(client.post(upload_url(fresh[2]), {}), 400, "missing_file")
    assert_nothing_stored(media)
    assert not Conversation.objects.filter(pk__in=fresh).exists()


def test_latin1_name_bytes_are_refused_or_kept_without_500(media, people, conversation):
    """A raw non-UTF-8 byte in the part's file name never answers 500 nor leaves a file behind."""
    client = logged_in(people["owner"])
    client.raise_request_exception = False
    response = raw_upload(client, conversation.pk, [raw_part(b'filename="caf\xe9.txt"', b"plain words")])
    assert response.status_code in (201, 400), response.content[:300]
    if response.status_code == 400:
        assert_nothing_stored(media)


def test_long_names_are_cut_to_255_characters(media, people, conversation):
    """A name over the column's 255 characters is cut, not refused with a database error."""
    client = logged_in(people["owner"])
    response = raw_upload(client, conversation.pk, [raw_part(b'filename="' + "\u00e9".encode() * 300 + b'.txt"', b"x")])
    assert response.status_code == 201, response.content[:300]
    name = response.json()["name"]
    assert len(name) == 255 and name.endswith("\u00e9.txt") and name == Attachment.objects.get().original_name
    oversized = raw_upload(client, conversation.pk, [raw_part(b'filename="' + b"n" * 2000 + b'.txt"', b"x")])
    assert oversized.status_code == 400  # Django's multipart parser refuses a part header this long
    assert Attachment.objects.count() == 1


### Hostile names ###


@pytest.mark.parametrize(
    "disposition",
    [
        b'filename="../../../../etc/passwd.txt"',
        b'filename="..\\\\..\\\\windows\\\\win.ini.txt"',
        b'filename="a\\"b.txt"',
        b'filename="a%22b;c=d.txt"',
        b'filename="a&#13;&#10;Set-Cookie: x=1.txt"',
        b"filename*=utf-8''a%0d%0aSet-Cookie%3a%20x%3d1.txt",
        b"filename*=utf-8''..%2f..%2fescape.txt",
        b"filename*=utf-8''%E2%80%AEtxt.exe",
        b"filename*=utf-8''%ff%fe.txt",
        b'filename="\xf0\x9f\x90\x88.txt"',
        b'filename="' + b"n" * 800 + b'.txt"',
        b'filename="' + "\u00e9".encode() * 300 + b'.txt"',
        b'filename="<script>alert(1)</script>.txt"',
        b'filename="a\tb.txt"',
    ],
)
def test_hostile_names_are_stored_safely_and_sent_back_in_one_header(media, people, conversation, disposition):
    """A hostile file name never places the file outside its folder, never splits a header and never answers 500."""
    client = logged_in(people["owner"])
    response = raw_upload(client, conversation.pk, [raw_part(disposition, b"plain words")])
    assert response.status_code == 201, response.content[:500]
    attachment = Attachment.objects.get()
    assert attachment.file.name == f"agentapp/attachments/{conversation.pk}/{attachment.pk}"
    assert [path.relative_to(media) for path in stored_files(media)] == [Path(attachment.file.name)]
    assert 0 < len(attachment.original_name) <= 255
    assert response.json()["name"] == attachment.original_name
    download = client.get(response.json()["url"])
    assert download.status_code == 200
    assert body_of(download) == b"plain words"
    for header, value in download.items():
        assert "\r" not in value and "\n" not in value, (header, value)
    assert download["Content-Disposition"].startswith("attachment; filename")
    assert "Set-Cookie" not in download.headers and not download.cookies


def test_name_with_a_nul_is_refused_or_stored_without_500(media, people, conversation):
    """A NUL in the name (RFC 2231 ``%00``) must not reach PostgreSQL (which refuses it): no 500, no orphan file."""
    client = logged_in(people["owner"])
    response = raw_upload(client, conversation.pk, [raw_part(b"filename*=utf-8''a%00b.txt", b"plain words")])
    assert response.status_code in (201, 400), response.content[:500]
    if response.status_code == 201:
        assert "\x00" not in Attachment.objects.get().original_name
        assert client.get(response.json()["url"]).status_code == 200
    else:
        assert_nothing_stored(media)


def test_name_for_the_model_is_clean(media, people, conversation):
    """The document name given to the model keeps only the characters Bedrock allows."""
    assert attachments.document_name('../../a\r\nb"<x>.pdf') == "a b x"
    assert attachments.document_name("....") == "document"
    assert attachments.document_name("\u202etxt.exe") == "txt"


### Hostile bytes ###


@pytest.mark.parametrize(
    ("name", "data", "mime"),
    [
        ("evil.png", b"<html><script>alert(document.cookie)</script></html>", "text/plain"),
        ("evil.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "text/plain"),
        ("evil.html", b"<!doctype html><script>alert(1)</script>", "text/plain"),
        ("report.pdf", b"<html><body onload=alert(1)>", "text/plain"),
        ("evil.md", b"[x](javascript:alert(1))", "text/markdown"),
        ("evil.csv", b'=HYPERLINK("http://evil","x"),1\n', "text/csv"),
        ("evil.pdf", b"%PDF-1.4\n<script>alert(1)</script>", "application/pdf"),
    ],
)
def test_active_content_is_never_served_as_html(media, people, conversation, name, data, mime):
    """Markup is kept as text or PDF and downloaded as an attachment, with nosniff and a sandbox CSP."""
    client = logged_in(people["owner"])
    response = upload(client, conversation.pk, name, data)
    assert response.status_code == 201, response.content
    assert response.json()["mime_type"] == mime
    download = client.get(response.json()["url"])
    assert download["Content-Type"].split(";")[0] == mime
    assert download["Content-Disposition"].startswith("attachment;")
    assert download["X-Content-Type-Options"] == "nosniff"
    assert download["Content-Security-Policy"] == CSP
    assert body_of(download) == data


@pytest.mark.parametrize(
    ("name", "data", "extensions"),
    [
        ("evil.html", b"<script>alert(1)</script>", (".txt",)),
        ("evil.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', (".txt",)),
        ("evil.exe.pdf", b"MZ not a pdf", (".txt",)),
        ("photo.html", files.png() + b"<script>alert(1)</script>", (".png",)),
        ("notes.md", b"# T", (".md", ".markdown")),
    ],
)
def test_download_name_has_the_sniffed_types_extension(media, people, conversation, name, data, extensions):
    """The name a browser saves the file under ends with its sniffed type's extension, so HTML kept as text/plain
    is not saved as ``.html`` and opened from disk as a page.
    """
    client = logged_in(people["owner"])
    download = client.get(upload(client, conversation.pk, name, data).json()["url"])
    disposition = download["Content-Disposition"]
    assert disposition.rstrip('"').endswith(extensions), disposition


def test_image_polyglot_is_shown_only_as_an_image(media, people, conversation):
    """A real PNG header followed by HTML stays image/png, inline, with nosniff and a sandbox CSP."""
    client = logged_in(people["owner"])
    data = files.png(2, 2) + b"<html><script>alert(1)</script></html>"
    response = upload(client, conversation.pk, "x.html", data)
    assert response.status_code == 201
    download = client.get(response.json()["url"])
    assert download["Content-Type"] == "image/png"
    assert download["Content-Disposition"].startswith("inline;")
    assert download["X-Content-Type-Options"] == "nosniff"
    assert download["Content-Security-Policy"] == CSP


@pytest.mark.parametrize(
    ("name", "data", "mime", "inline"),
    [
        ("a.png", files.png(), "image/png", True),
        ("a.jpg", files.jpeg(), "image/jpeg", True),
        ("a.gif", files.gif(), "image/gif", True),
        ("a.webp", files.webp(), "image/webp", True),
        ("a.pdf", files.PDF, "application/pdf", False),
        ("a.txt", b"words", "text/plain", False),
        ("a.csv", b"a,b\n", "text/csv", False),
        ("a.md", b"# T\n", "text/markdown", False),
    ],
)
def test_download_headers_of_each_type(media, people, conversation, name, data, mime, inline):
    """Every allowed type is sent with its sniffed type, nosniff, a sandbox CSP, and inline only for images."""
    client = logged_in(people["owner"])
    download = client.get(upload(client, conversation.pk, name, data).json()["url"])
    assert download.status_code == 200
    assert download["Content-Type"] == mime
    assert download["X-Content-Type-Options"] == "nosniff"
    assert download["Content-Security-Policy"] == CSP
    assert download["Content-Disposition"] == f'{"inline" if inline else "attachment"}; filename="{name}"'
    assert download["Content-Length"] == str(len(data))


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("empty.png", b"", 400, "missing_file"),
        ("sig.png", b"\x89PNG\r\n\x1a\n", 415, "unsupported_type"),
        ("ihdr.png", png_header(2, 2)[:20], 415, "unsupported_type"),
        ("soi.jpg", b"\xff\xd8\xff", 415, "unsupported_type"),
        ("sof.jpg", files.jpeg()[:25], 415, "unsupported_type"),
        ("head.gif", b"GIF89a", 415, "unsupported_type"),
        ("riff.webp", b"RIFF\x00\x00\x00\x00WEBP", 415, "unsupported_type"),
        (
            "vp8.webp",
            b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00\x00\x00\x00\x9d\x01\x2a\x01",
            415,
            "unsupported_type",
        ),
        ("nul.txt", b"abc\x00def", 415, "unsupported_type"),
        ("latin1.txt", b"caf\xe9", 415, "unsupported_type"),
        ("utf16.txt", "hello".encode("utf-16"), 415, "unsupported_type"),
        ("zip.pdf", files.ZIP, 415, "unsupported_type"),
    ],
)
def test_empty_and_truncated_files_are_refused(media, people, conversation, name, data, status, code):
    """An empty file, or an image whose header stops before its size, is refused and stores nothing."""
    response = upload(logged_in(people["owner"]), conversation.pk, name, data)
    assert_json_error(response, status, code)
    assert_nothing_stored(media)


@pytest.mark.parametrize(
    "data",
    [b"RIFF\x00\x00\x00\x00WEBPVP8X", b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f"],
)
def test_truncated_webp_header_is_refused(media, people, conversation, data):
    """A WebP whose VP8X/VP8L header stops before its size is refused with 415, as a truncated PNG or GIF is."""
    response = upload(logged_in(people["owner"]), conversation.pk, "cut.webp", data)
    assert_json_error(response, 415, "unsupported_type")
    assert_nothing_stored(media)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("zero.png", png_header(0, 0)),
        ("zero.gif", b"GIF89a\x00\x00\x00\x00\x00\x00\x00;"),
        ("huge.png", png_header(0xFFFFFFFF, 0xFFFFFFFF)),
        ("wide.png", png_header(2**31, 1)),
    ],
)
def test_impossible_image_sizes_are_refused_without_500(media, people, conversation, name, data):
    """A header declaring zero pixels or more than PNG allows (2**31 - 1) is refused with 415, never a 500."""
    client = logged_in(people["owner"])
    client.raise_request_exception = False
    response = upload(client, conversation.pk, name, data)
    assert_json_error(response, 415, "unsupported_type")
    assert_nothing_stored(media)


def test_huge_but_valid_declared_size_is_kept_as_declared(media, people, conversation):
    """A PNG header declaring 2**31 - 1 pixels a side (no pixels behind it) is stored: nothing decodes it here."""
    response = upload(logged_in(people["owner"]), conversation.pk, "big.png", png_header(2**31 - 1, 65535))
    assert response.status_code == 201, response.content
    assert (response.json()["width"], response.json()["height"]) == (2**31 - 1, 65535)


### Odd bodies ###


def test_declared_length_over_the_limit_is_refused_unread(media, settings, people, conversation):
    """A Content-Length past the limit is refused with 413 before the body is parsed."""
    settings.AGENTAPP = {**settings.AGENTAPP, "ATTACHMENT_MAX_BYTES": 1000}
    client = logged_in(people["owner"])
    body = raw_part(b'filename="a.txt"', b"x" * 10)
    response = raw_upload(client, conversation.pk, [body], CONTENT_LENGTH=str(10**12))
    assert_json_error(response, 413, "file_too_large")
    assert_nothing_stored(media)


@pytest.mark.parametrize("length", ["", "abc", "-1", " 12 "])
def test_missing_or_bad_content_length_gives_no_500(media, people, conversation, length):
    """A body without a usable Content-Length (as a chunked upload has) is refused with a 4xx and stores nothing."""
    client = logged_in(people["owner"])
    client.raise_request_exception = False
    response = raw_upload(client, conversation.pk, [raw_part(b'filename="a.txt"', b"x" * 10)], CONTENT_LENGTH=length)
    assert 400 <= response.status_code < 500, response.status_code
    assert_nothing_stored(media)


def test_body_over_the_limit_with_a_short_declared_length_stores_nothing_too_big(media, settings, people, conversation):
    """A file over the limit inside a body whose Content-Length is within it is still refused with 413."""
    settings.AGENTAPP = {**settings.AGENTAPP, "ATTACHMENT_MAX_BYTES": 1000}
    response = upload(logged_in(people["owner"]), conversation.pk, "big.txt", b"x" * 1001)
    assert_json_error(response, 413, "file_too_large")
    assert_nothing_stored(media)


def test_several_file_parts_store_one_file(media, people, conversation):
    """A body with several ``file`` parts stores exactly one attachment."""
    client = logged_in(people["owner"])
    parts = [raw_part(b'filename="one.txt"', b"one"), raw_part(b'filename="two.png"', files.png())]
    response = raw_upload(client, conversation.pk, parts)
    assert response.status_code == 201, response.content
    assert Attachment.objects.count() == 1 and len(stored_files(media)) == 1
    assert body_of(client.get(response.json()["url"])) in (b"one", files.png())


def test_too_many_parts_are_refused(media, settings, people, conversation):
    """More file parts than ``DATA_UPLOAD_MAX_NUMBER_FILES`` is a 400, storing nothing."""
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    client = logged_in(people["owner"])
    client.raise_request_exception = False
    parts = [raw_part(f'filename="{n}.txt"'.encode(), b"x", field=f"f{n}".encode()) for n in range(5)]
    response = raw_upload(client, conversation.pk, [*parts, raw_part(b'filename="a.txt"', b"x")])
    assert response.status_code == 400
    assert_nothing_stored(media)


def test_file_under_another_field_or_without_a_name_is_missing(media, people, conversation):
    """Only a ``file`` part with a file name counts: a plain field or another name is 400 ``missing_file``."""
    client = logged_in(people["owner"])
    assert_json_error(client.post(upload_url(conversation.pk), {"file": "just text"}), 400, "missing_file")
    other = raw_upload(client, conversation.pk, [raw_part(b'filename="a.txt"', b"x", field=b"upload")])
    assert_json_error(other, 400, "missing_file")
    nameless = raw_upload(client, conversation.pk, [raw_part(b'filename=""', b"x")])
    assert_json_error(nameless, 400, "missing_file")
    json_body = client.post(upload_url(conversation.pk), {"file": "x"}, content_type="application/json")
    assert_json_error(json_body, 400, "missing_file")
    assert_nothing_stored(media)


### Storage exhaustion ###


def test_uploads_per_hour_are_limited(media, settings, people, conversation):
    """Past ``ATTACHMENTS_PER_HOUR`` files an uploader is refused with 429 ``rate_limited`` (docs/api.md)."""
    settings.AGENTAPP = {**settings.AGENTAPP, "ATTACHMENTS_PER_HOUR": 3, "ATTACHMENT_BYTES_PER_HOUR": 0}
    client = logged_in(people["owner"])
    for n in range(3):
        assert upload(client, conversation.pk, f"{n}.txt", b"x").status_code == 201
    assert_json_error(upload(client, conversation.pk, "4.txt", b"x"), 429, protocol.ERR_RATE_LIMITED)
    assert Attachment.objects.count() == 3 and len(stored_files(media)) == 3
    # Another user has an allowance of their own.
    assert upload(logged_in(people["member"]), conversation.pk, "m.txt", b"x").status_code == 201


def test_upload_bytes_per_hour_are_limited(media, settings, people, conversation):
    """Past ``ATTACHMENT_BYTES_PER_HOUR`` bytes an uploader is refused with 429, storing nothing more."""
    settings.AGENTAPP = {**settings.AGENTAPP, "ATTACHMENTS_PER_HOUR": 0, "ATTACHMENT_BYTES_PER_HOUR": 2500}
    client = logged_in(people["owner"])
    assert upload(client, conversation.pk, "a.txt", b"x" * 1000).status_code == 201
    assert upload(client, conversation.pk, "b.txt", b"x" * 1000).status_code == 201
    assert_json_error(upload(client, conversation.pk, "c.txt", b"x" * 1000), 429, protocol.ERR_RATE_LIMITED)
    assert Attachment.objects.count() == 2 and len(stored_files(media)) == 2


### Prompt frames ###


@sync_to_async
def stored(conversation_id: Any, user: Any, name: str, data: bytes) -> dict[str, Any]:
    """Store an attachment directly and return its reference."""
    conversation = Conversation.objects.get(pk=conversation_id)
    return attachments.reference(attachments.store(conversation, user, "", name, data))


@sync_to_async
def new_conversation(user: Any) -> str:
    """A conversation of ``user``."""
    return str(Conversation.objects.create(owner=user).pk)


@pytest.fixture
def socket_setup(settings: Any, tmp_path: Path) -> None:
    """A fresh MEDIA_ROOT and an instant offline model."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 0}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("ids", "code"),
    [
        ([1], protocol.ERR_INVALID_FRAME),
        ([None], protocol.ERR_INVALID_FRAME),
        ([{"id": "x"}], protocol.ERR_INVALID_FRAME),
        ([["00000000-0000-4000-8000-000000000000"]], protocol.ERR_INVALID_FRAME),
        ({"0": "00000000-0000-4000-8000-000000000000"}, protocol.ERR_INVALID_FRAME),
        (None, protocol.ERR_INVALID_FRAME),
        (["../" * 100], protocol.ERR_INVALID_FRAME),
        (["00000000-0000-4000-8000-000000000000' OR '1'='1"], protocol.ERR_INVALID_FRAME),
        (["a" * 20_000], protocol.ERR_INVALID_FRAME),
        (["a" * 70_000], protocol.ERR_FRAME_TOO_LARGE),
        (["0" * 32 + "\x00"], protocol.ERR_INVALID_FRAME),
        (["00000000-0000-4000-8000-000000000000"] * 6, protocol.ERR_TOO_MANY_ATTACHMENTS),
    ],
)
async def test_socket_refuses_malformed_attachment_lists(socket_setup, ada, ids, code):
    """Non-string, nested, huge or too many ids are refused with a clear error and start no run."""
    conversation_id = await new_conversation(ada)
    client = SocketClient(f"/ws/agent/{conversation_id}/", user=ada)
    await client.hello()
    await client.send({"type": "prompt", "prompt": "Hi", "attachments": ids})
    error = await client.receive()
    assert error["type"] == protocol.ERROR and error["code"] == code, error
    await client.close()
    assert not await Run.objects.filter(conversation_id=conversation_id).aexists()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_socket_dedupes_and_normalises_ids(socket_setup, ada):
    """The same id repeated, in other spellings of the UUID, gives the model the file once."""
    conversation_id = await new_conversation(ada)
    image = await stored(conversation_id, ada, "cat.png", files.png())
    spellings = [image["id"], image["id"].upper(), "{" + image["id"] + "}", image["id"].replace("-", "")]
    client = SocketClient(f"/ws/agent/{conversation_id}/", user=ada)
    await client.hello()
    await client.send({"type": "prompt", "prompt": "Look", "attachments": spellings})
    frames = await client.until_finished()
    await client.close()
    [started] = [frame for frame in frames if frame["type"] == protocol.RUN_STARTED]
    assert started["attachments"] == [image]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_queued_prompt_cannot_carry_anothers_attachment(socket_setup, settings, ada, stranger):
    """An ``if_busy: enqueue`` prompt with another conversation's attachment is refused, and nothing is queued."""
    settings.AGENTAPP = {**settings.AGENTAPP, "OFFLINE_TOKENS_PER_SECOND": 600}
    theirs = await new_conversation(stranger)
    secret = await stored(theirs, stranger, "secret.txt", b"secret")
    conversation_id = await new_conversation(ada)
    mine = await stored(conversation_id, ada, "mine.txt", b"mine")
    client = SocketClient(f"/ws/agent/{conversation_id}/", user=ada)
    await client.hello()
    await client.prompt(f"Stream {TOKENS} tokens")
    await client.until(protocol.DATA)
    frame = {"type": "prompt", "prompt": "Read it", "if_busy": "enqueue", "attachments": [mine["id"], secret["id"]]}
    await client.send(frame)
    error = await client.until(protocol.ERROR)
    assert error[-1]["code"] == protocol.ERR_UNKNOWN_ATTACHMENT
    assert not [seen for seen in error if seen["type"] == protocol.RUN_QUEUED]
    await client.until_finished()
    await client.close()
    assert await Run.objects.filter(conversation_id=conversation_id).acount() == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_viewer_cannot_prompt_with_attachments(socket_setup, ada, stranger):
    """A viewer's prompt carrying the conversation's own attachment is refused as read-only."""
    conversation_id = await new_conversation(ada)
    await ConversationMember.objects.acreate(conversation_id=conversation_id, user=stranger, role="viewer")
    image = await stored(conversation_id, ada, "cat.png", files.png())
    client = SocketClient(f"/ws/agent/{conversation_id}/", user=stranger)
    await client.hello()
    await client.send({"type": "prompt", "prompt": "Look", "attachments": [image["id"]]})
    error = await client.receive()
    assert error["type"] == protocol.ERROR and error["code"] == protocol.ERR_READ_ONLY, error
    await client.close()
    assert not await Run.objects.filter(conversation_id=conversation_id).aexists()


async def sse_post(client: AsyncClient, path: str, frame: Any) -> Any:
    """POST a client frame to the SSE endpoint."""
    return await client.post(path, json.dumps(frame), content_type="application/json")


async def sse_frames(response: Any) -> list[dict[str, Any]]:
    """Every data frame of a finished event stream."""
    assert response.status_code == 200, response.content
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    frames = []
    for block in raw.split("\n\n"):
        data = [line[len("data: ") :] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            frames.append(json.loads("\n".join(data)))
    return frames


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_sse_prompt_cannot_carry_anothers_attachment(socket_setup, settings, ada, stranger):
    """Over SSE a prompt with another conversation's attachment is refused, malformed lists are 400, no run starts."""
    settings.AGENTAPP = {**settings.AGENTAPP, "ALLOW_ANONYMOUS": False}
    theirs = await new_conversation(stranger)
    secret = await stored(theirs, stranger, "secret.txt", b"secret")
    conversation_id = await new_conversation(ada)
    client = AsyncClient()
    await client.aforce_login(ada)
    path = f"/sse/{conversation_id}/"
    frames = await sse_frames(
        await sse_post(client, path, {"type": "prompt", "prompt": "x", "attachments": [secret["id"]]})
    )
    assert [(frame["type"], frame.get("code")) for frame in frames[1:]] == [
        (protocol.ERROR, protocol.ERR_UNKNOWN_ATTACHMENT)
    ]
    for ids, code in (([1], protocol.ERR_INVALID_FRAME), ([secret["id"]] * 6, protocol.ERR_TOO_MANY_ATTACHMENTS)):
        response = await sse_post(client, path, {"type": "prompt", "prompt": "x", "attachments": ids})
        assert (response.status_code, response.json()["error"]) == (400, code)
    # The stranger cannot prompt into ada's conversation with their own file either.
    outsider = AsyncClient()
    await outsider.aforce_login(stranger)
    refused = await sse_post(outsider, path, {"type": "prompt", "prompt": "x", "attachments": [secret["id"]]})
    assert refused.status_code in (403, 404)
    assert not await Run.objects.filter(conversation_id__in=[conversation_id, theirs]).aexists()


### Bodies over ASGI ###


async def asgi_upload(conversation_id: str, chunks: int, chunk_bytes: int, declared: int | None) -> tuple[int, int]:
    """POST an upload to the example site's ASGI application, body in ``chunks``; the answer's status and the body
    bytes it read."""
    from project.asgi import application

    read = 0
    sent: list[dict[str, Any]] = []
    blocked = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read >= chunks * chunk_bytes:
            await blocked.wait()  # the body is over: the client only waits for the answer
        read += chunk_bytes
        return {"type": "http.request", "body": b"x" * chunk_bytes, "more_body": read < chunks * chunk_bytes}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": upload_url(conversation_id),
        "raw_path": upload_url(conversation_id).encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(application(scope, receive, send), 60)
    [start] = [message for message in sent if message["type"] == "http.response.start"]
    return start["status"], read


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("declared", [50 * 2**20, None], ids=["content-length", "chunked"])
async def test_oversized_body_is_refused_before_it_is_read(settings, tmp_path, declared):
    """An upload body far over ``ATTACHMENT_MAX_BYTES`` is answered without reading it all (it is not spooled to disk).

    Django's ASGI handler reads a whole body before any view runs: ``agentapp.bodylimit.BodyLimit`` stops it first.
    """
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ALLOW_ANONYMOUS": False, "ATTACHMENT_MAX_BYTES": 1000}
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000  # the limit is the larger of the two, plus multipart room
    status, read = await asgi_upload(str(uuid.uuid4()), chunks=50, chunk_bytes=2**20, declared=declared)
    assert status == 413
    assert read <= 1000 + 16_384 + 2**20, f"{read} bytes read before answering {status}"
    assert not await Attachment.objects.aexists()
