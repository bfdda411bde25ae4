"""Attachments: sniffing, the upload and download endpoints, and who may use them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from agentapp import sniffing
from agentapp.models import Attachment, Conversation, ConversationMember
from tests import attachment_files as files


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    """A fresh MEDIA_ROOT: what the tests store lands here and nowhere else."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


@pytest.fixture
def people(db: Any) -> dict[str, Any]:
    make = get_user_model().objects.create_user
    return {name: make(name, password="x") for name in ("owner", "stranger", "viewer")}


@pytest.fixture
def conversation(people: dict[str, Any]) -> Conversation:
    conversation = Conversation.objects.create(owner=people["owner"])
    ConversationMember.objects.create(conversation=conversation, user=people["viewer"], role="viewer")
    return conversation


def logged_in(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def upload(client: Client, conversation_id: Any, name: str, data: bytes, content_type: str = "application/x-any"):
    return client.post(
        f"/api/conversations/{conversation_id}/attachments/",
        {"file": SimpleUploadedFile(name, data, content_type=content_type)},
    )


def stored_files(media: Path) -> list[Path]:
    return [path for path in media.rglob("*") if path.is_file()] if media.exists() else []


### Sniffing ###


@pytest.mark.parametrize(
    ("data", "mime", "size"),
    [
        (files.png(2, 3), "image/png", (2, 3)),
        (files.jpeg(5, 4), "image/jpeg", (5, 4)),
        (files.gif(7, 6), "image/gif", (7, 6)),
        (files.webp(9, 8), "image/webp", (9, 8)),
        (files.PDF, "application/pdf", None),
    ],
)
def test_sniff_reads_type_and_size_from_bytes(data, mime, size):
    assert sniffing.sniff(data, "whatever.txt") == mime
    assert sniffing.image_size(data) == size


def test_sniff_tells_text_by_bytes_then_extension():
    assert sniffing.sniff(b"a,b\n1,2\n", "table.csv") == "text/csv"
    assert sniffing.sniff(b"# Title\n", "notes.md") == "text/markdown"
    assert sniffing.sniff(b"plain words", "notes.png") == "text/plain"
    assert sniffing.sniff(files.ZIP, "a.zip") is None
    assert sniffing.sniff(files.NOT_A_PNG, "a.png") is None
    assert sniffing.sniff(b"\xff\xfe\xfd", "a.txt") is None


def test_jpeg_reader_is_linear_on_hostile_bytes():
    # A JPEG of fill bytes and bare markers, long: walked once, no size found.
    assert sniffing.image_size(b"\xff\xd8" + b"\xff" * 200_000) is None
    assert sniffing.image_size(b"\xff\xd8" + b"\xff\xd0" * 100_000) is None


### Upload ###


def test_upload_stores_file_and_row_with_sniffed_type(media, people, conversation):
    client = logged_in(people["owner"])
    data = files.png(2, 3)
    response = upload(client, conversation.pk, "cat.png", data, content_type="application/pdf")
    assert response.status_code == 201, response.content
    body = response.json()
    attachment = Attachment.objects.get()
    assert body == {
        "id": str(attachment.pk),
        "name": "cat.png",
        "mime_type": "image/png",
        "size": len(data),
        "url": f"/api/attachments/{attachment.pk}/",
        "width": 2,
        "height": 3,
    }
    assert attachment.conversation == conversation and attachment.owner == people["owner"]
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    assert attachment.file.read() == data
    assert stored_files(media) == [Path(attachment.file.path)]


def test_upload_needs_csrf_token(media, people, conversation):
    client = logged_in(people["owner"], enforce_csrf_checks=True)
    assert upload(client, conversation.pk, "cat.png", files.png()).status_code == 403
    assert not Attachment.objects.exists()
    client.get(f"/api/conversations/{conversation.pk}/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post(
        f"/api/conversations/{conversation.pk}/attachments/",
        {"file": SimpleUploadedFile("cat.png", files.png())},
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("name", "data", "settings_patch", "status", "code"),
    [
        ("big.pdf", files.PDF + b"x" * 2000, {"ATTACHMENT_MAX_BYTES": 1000}, 413, "file_too_large"),
        # Refused by its declared length, before the body is read.
        ("huge.pdf", files.PDF + b"x" * 40_000, {"ATTACHMENT_MAX_BYTES": 1000}, 413, "file_too_large"),
        ("big.png", files.png(300, 300) + b"\x00" * 600, {"ATTACHMENT_MAX_IMAGE_BYTES": 500}, 413, "file_too_large"),
        ("archive.zip", files.ZIP, {}, 415, "unsupported_type"),
        ("fake.png", files.NOT_A_PNG, {}, 415, "unsupported_type"),
        ("cat.png", files.png(), {"ATTACHMENT_TYPES": ["application/pdf"]}, 415, "unsupported_type"),
        ("empty.txt", b"", {}, 400, "missing_file"),
    ],
)
def test_refused_upload_stores_nothing(media, settings, people, conversation, name, data, settings_patch, status, code):
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), **settings_patch}
    response = upload(logged_in(people["owner"]), conversation.pk, name, data, content_type="image/png")
    assert response.status_code == status, response.content
    assert response.json()["error"] == code
    assert response.json()["message"]
    assert not Attachment.objects.exists()
    assert stored_files(media) == []


def test_upload_without_file_is_refused(media, people, conversation):
    response = logged_in(people["owner"]).post(f"/api/conversations/{conversation.pk}/attachments/", {})
    assert response.status_code == 400
    assert response.json()["error"] == "missing_file"


def test_upload_stores_a_fresh_conversation(media, people):
    from agentapp.access import fresh_conversation

    fresh = fresh_conversation(people["owner"], None)
    response = upload(logged_in(people["owner"]), fresh.pk, "notes.md", b"# Notes\n")
    assert response.status_code == 201, response.content
    assert Conversation.objects.get(pk=fresh.pk).owner == people["owner"]
    assert Attachment.objects.get().mime_type == "text/markdown"


def test_uploads_per_hour_are_limited_per_uploader(media, settings, people, conversation):
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ATTACHMENTS_PER_HOUR": 2}
    owner = logged_in(people["owner"])
    assert [upload(owner, conversation.pk, "a.txt", b"a").status_code for _ in range(2)] == [201, 201]
    refused = upload(owner, conversation.pk, "a.txt", b"a")
    assert refused.status_code == 429
    assert refused.json()["error"] == "rate_limited"
    assert Attachment.objects.count() == 2
    assert len(stored_files(media)) == 2
    other = Conversation.objects.create(owner=people["stranger"])  # another uploader has an allowance of its own
    assert upload(logged_in(people["stranger"]), other.pk, "a.txt", b"a").status_code == 201


def test_upload_bytes_per_hour_are_limited(media, settings, people, conversation):
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ATTACHMENT_BYTES_PER_HOUR": 100}
    owner = logged_in(people["owner"])
    assert upload(owner, conversation.pk, "a.txt", b"a" * 60).status_code == 201
    refused = upload(owner, conversation.pk, "b.txt", b"b" * 41)  # 60 + 41 would pass 100
    assert (refused.status_code, refused.json()["error"]) == (429, "rate_limited")
    assert upload(owner, conversation.pk, "c.txt", b"c" * 40).status_code == 201
    assert sorted(Attachment.objects.values_list("size", flat=True)) == [40, 60]


def test_upload_allowance_counts_the_last_hour_only(media, settings, people, conversation):
    from datetime import timedelta

    from django.utils import timezone

    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ATTACHMENTS_PER_HOUR": 1}
    owner = logged_in(people["owner"])
    assert upload(owner, conversation.pk, "a.txt", b"a").status_code == 201
    Attachment.objects.update(created_at=timezone.now() - timedelta(minutes=61))
    assert upload(owner, conversation.pk, "a.txt", b"a").status_code == 201


### Who may upload and fetch ###


def test_stranger_and_viewer_cannot_upload(media, settings, people, conversation):
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ALLOW_ANONYMOUS": False}
    assert upload(logged_in(people["stranger"]), conversation.pk, "cat.png", files.png()).status_code == 404
    assert upload(logged_in(people["viewer"]), conversation.pk, "cat.png", files.png()).status_code == 403
    assert upload(Client(), conversation.pk, "cat.png", files.png()).status_code == 401
    assert not Attachment.objects.exists()
    assert stored_files(media) == []


def test_only_those_with_access_fetch_the_file(media, settings, people, conversation):
    url = upload(logged_in(people["owner"]), conversation.pk, "cat.png", files.png()).json()["url"]
    for name in ("owner", "viewer"):
        response = logged_in(people[name]).get(url)
        assert response.status_code == 200
        assert b"".join(response.streaming_content) == files.png()
        assert response["Content-Type"] == "image/png"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert not response["Content-Disposition"].startswith("attachment")
    response = logged_in(people["stranger"]).get(url)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ALLOW_ANONYMOUS": True}
    assert Client().get(url).status_code == 404  # in demo mode an anonymous session is a stranger too
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "ALLOW_ANONYMOUS": False}
    assert Client().get(url).status_code == 401


def test_document_is_downloaded_not_shown(media, people, conversation):
    url = upload(logged_in(people["owner"]), conversation.pk, "report.pdf", files.PDF).json()["url"]
    response = logged_in(people["owner"]).get(url)
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    assert 'filename="report.pdf"' in response["Content-Disposition"]
    assert response["X-Content-Type-Options"] == "nosniff"


def test_file_goes_with_its_conversation(media, people, conversation):
    upload(logged_in(people["owner"]), conversation.pk, "cat.png", files.png())
    assert len(stored_files(media)) == 1
    conversation.delete()
    assert not Attachment.objects.exists()
    assert stored_files(media) == []


### Admin ###


def test_admin_lists_attachments_read_only(media, people, conversation):
    from django.urls import reverse

    from agentapp.models import Message

    attachment_ref = upload(logged_in(people["owner"]), conversation.pk, "<em>cat.png", files.png(2, 3)).json()
    Message.objects.create(
        conversation=conversation, position=0, role="user", content=[{"text": "Hi"}, {"attachment": attachment_ref}]
    )
    boss = get_user_model().objects.create_superuser("boss", "boss@example.com", "x")
    client = logged_in(boss)
    page = client.get(reverse("admin:agentapp_attachment_changelist")).content.decode()
    assert "&lt;em&gt;cat.png" in page and "<em>cat" not in page
    assert "image/png" in page and "2x3" in page
    attachment = Attachment.objects.get()
    assert client.get(reverse("admin:agentapp_attachment_add")).status_code == 403
    change = client.post(reverse("admin:agentapp_attachment_change", args=[attachment.pk]), {"original_name": "x"})
    assert change.status_code == 403
    assert Attachment.objects.get().original_name == "<em>cat.png"
    transcript = client.get(reverse("admin:agentapp_conversation_change", args=[conversation.pk])).content.decode()
    assert "Attachment <strong>&lt;em&gt;cat.png</strong> (image/png," in transcript


### The run's input ###


def test_prompt_input_puts_blocks_after_the_text():
    from agentapp.history import UNANSWERED_NOTE, prompt_input

    image = {"image": {"format": "png", "source": {"bytes": files.png()}}}
    assert prompt_input([], "Look", [image]) == [{"text": "Look"}, image]
    assert prompt_input([], "Look", []) == "Look"
    # A history ending on tool results takes the prompt and its blocks into that message.
    results = [{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "status": "error", "content": []}}]}]
    assert prompt_input(results, "Look", [image]) is None
    assert results[-1]["content"][1:] == [{"text": "Look"}, image]
    # An unanswered prompt is closed by a note first.
    asked = [{"role": "user", "content": [{"text": "Hi"}]}]
    assert prompt_input(asked, "Look", [image]) == [{"text": "Look"}, image]
    assert asked[-1] == {"role": "assistant", "content": [{"text": UNANSWERED_NOTE}]}
