"""Files uploaded into a conversation: stored, checked, referred to by prompts and given to the model as blocks.

A stored message keeps ``{"attachment": reference}`` in place of the bytes; ``expand`` turns it back into a Strands
``image`` or ``document`` block when the history is given to the agent again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.files.base import ContentFile
from django.db.models import Count, Sum
from django.urls import reverse
from django.utils import timezone

from . import protocol
from .conf import app_settings
from .models import Attachment
from .sniffing import DOCUMENT_FORMATS, IMAGE_FORMATS, image_size, sniff

logger = logging.getLogger(__name__)

ERR_UNKNOWN_ATTACHMENT = protocol.ERR_UNKNOWN_ATTACHMENT
ERR_FILE_TOO_LARGE = "file_too_large"
ERR_UNSUPPORTED_TYPE = "unsupported_type"
ERR_MISSING_FILE = "missing_file"
# Text given to the model in place of a file that is gone from storage.
MISSING_TEXT = "[Attachment {name} is no longer available.]"
# Bedrock allows letters, digits, spaces, hyphens, parentheses and square brackets in a document's name.
_NAME_UNSAFE_RE = re.compile(r"[^A-Za-z0-9\-()\[\] ]")


@dataclass(frozen=True)
class Refused(Exception):
    """An upload that is not stored: the HTTP status, the error code and a message for the user."""

    status: int
    code: str
    message: str


### Upload ###


def check_allowance(user: Any, session_key: str, size: int = 0) -> None:
    """Raise Refused (429) when the uploader's last hour of uploads, plus ``size`` bytes more, passes a limit."""
    count_limit, bytes_limit = app_settings.ATTACHMENTS_PER_HOUR, app_settings.ATTACHMENT_BYTES_PER_HOUR
    if not count_limit and not bytes_limit:
        return
    if getattr(user, "is_authenticated", False):
        uploaded = Attachment.objects.filter(owner_id=user.pk)
    else:
        uploaded = Attachment.objects.filter(owner__isnull=True, session_key=session_key)
    recent = uploaded.filter(created_at__gte=timezone.now() - timedelta(hours=1)).aggregate(
        files=Count("pk"), total=Sum("size")
    )
    if count_limit and recent["files"] >= count_limit:
        raise Refused(429, protocol.ERR_RATE_LIMITED, f"You uploaded {count_limit} files in the last hour; try later.")
    if bytes_limit and (recent["total"] or 0) + size > bytes_limit:
        raise Refused(429, protocol.ERR_RATE_LIMITED, f"Uploads are limited to {bytes_limit} bytes an hour; try later.")


def store(conversation: Any, user: Any, session_key: str, name: str, data: bytes) -> Attachment:
    """Check an uploaded file (size, type by its bytes, the uploader's hourly allowance) and store it.

    Raise Refused, storing nothing, when a check fails.
    """
    limit = app_settings.ATTACHMENT_MAX_BYTES
    if len(data) > limit:
        raise Refused(413, ERR_FILE_TOO_LARGE, f"Files are limited to {limit} bytes.")
    if not data:
        raise Refused(400, ERR_MISSING_FILE, "The file is empty.")
    check_allowance(user, session_key, len(data))
    mime_type = sniff(data, name)
    if mime_type is None or mime_type not in app_settings.ATTACHMENT_TYPES:
        allowed = ", ".join(app_settings.ATTACHMENT_TYPES)
        raise Refused(415, ERR_UNSUPPORTED_TYPE, f"This file's content is not an accepted type ({allowed}).")
    size = None
    if mime_type in IMAGE_FORMATS:
        if len(data) > app_settings.ATTACHMENT_MAX_IMAGE_BYTES:
            raise Refused(
                413, ERR_FILE_TOO_LARGE, f"Images are limited to {app_settings.ATTACHMENT_MAX_IMAGE_BYTES} bytes."
            )
        size = image_size(data)
        if size is None:
            raise Refused(415, ERR_UNSUPPORTED_TYPE, "The image's header cannot be read.")
    attachment = Attachment(
        id=uuid.uuid4(),
        conversation=conversation,
        owner=user if getattr(user, "is_authenticated", False) else None,
        session_key="" if getattr(user, "is_authenticated", False) else session_key,
        original_name=(name or "file")[:255],
        mime_type=mime_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        width=size[0] if size else None,
        height=size[1] if size else None,
    )
    attachment.file.save(str(attachment.id), ContentFile(data), save=False)
    try:
        attachment.save(force_insert=True)
    except Exception:
        attachment.file.delete(save=False)  # no row: no file either
        raise
    return attachment


def reference(attachment: Attachment) -> dict[str, Any]:
    """What a stored message and the wire carry for an attachment: its id, name, type, size and access-checked URL."""
    ref: dict[str, Any] = {
        "id": str(attachment.pk),
        "name": attachment.original_name,
        "mime_type": attachment.mime_type,
        "size": attachment.size,
        "url": reverse("agentapp:api_attachment", args=[attachment.pk]),
    }
    if attachment.width is not None:
        ref.update(width=attachment.width, height=attachment.height)
    return ref


### Prompts ###


@dataclass(frozen=True)
class PromptAttachment:
    """An attachment of a prompt: the reference stored with the prompt and the block given to the model."""

    reference: dict[str, Any]
    block: dict[str, Any]


def for_prompt(conversation_id: Any, ids: tuple[str, ...]) -> list[PromptAttachment]:
    """The prompt's attachments, read from storage (synchronous); ProtocolError unless each is of this conversation."""
    found = {str(a.pk): a for a in Attachment.objects.filter(conversation_id=conversation_id, pk__in=list(ids))}
    missing = [attachment_id for attachment_id in ids if attachment_id not in found]
    if missing:
        raise protocol.ProtocolError(ERR_UNKNOWN_ATTACHMENT, "No attachment of this conversation has this id.")
    loaded = []
    for attachment_id in ids:
        attachment = found[attachment_id]
        data = _read(attachment)
        if data is None:
            raise protocol.ProtocolError(ERR_UNKNOWN_ATTACHMENT, "An attachment's file is no longer available.")
        loaded.append(
            PromptAttachment(reference(attachment), content_block(attachment.mime_type, attachment.original_name, data))
        )
    return loaded


def content_block(mime_type: str, name: str, data: bytes) -> dict[str, Any]:
    """The Strands content block of a file: ``image`` for an image, ``document`` otherwise."""
    if mime_type in IMAGE_FORMATS:
        return {"image": {"format": IMAGE_FORMATS[mime_type], "source": {"bytes": data}}}
    return {"document": {"format": DOCUMENT_FORMATS[mime_type], "name": document_name(name), "source": {"bytes": data}}}


def document_name(name: str) -> str:
    """A document's name as Bedrock accepts it: no extension, only safe characters, no runs of spaces."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    cleaned = " ".join(_NAME_UNSAFE_RE.sub(" ", stem).split())
    return cleaned[:200] or "document"


def _read(attachment: Attachment) -> bytes | None:
    try:
        with attachment.file.open("rb") as handle:
            return handle.read()
    except (OSError, ValueError):
        logger.warning("agentapp: attachment %s has no file", attachment.pk)
        return None


### History ###


def expand(content: list[Any], conversation_id: Any) -> list[Any]:
    """Stored content with each attachment reference turned back into its content block (a note if the file is gone)."""
    refs = [
        block["attachment"]
        for block in content
        if isinstance(block, dict) and isinstance(block.get("attachment"), dict)
    ]
    if not refs:
        return content
    ids = [str(ref.get("id")) for ref in refs]
    found = {str(a.pk): a for a in Attachment.objects.filter(conversation_id=conversation_id, pk__in=ids)}
    expanded = []
    for block in content:
        ref = block.get("attachment") if isinstance(block, dict) else None
        if not isinstance(ref, dict):
            expanded.append(block)
            continue
        attachment = found.get(str(ref.get("id")))
        data = _read(attachment) if attachment is not None else None
        if attachment is None or data is None:
            expanded.append({"text": MISSING_TEXT.format(name=ref.get("name", ""))})
        else:
            expanded.append(content_block(attachment.mime_type, attachment.original_name, data))
    return expanded
