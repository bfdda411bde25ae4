"""The attachments API: upload a file into a conversation (multipart, CSRF-protected) and fetch it back.

Only those who may prompt in the conversation upload; only those who may open it fetch. A refused upload stores
nothing. A fresh conversation id (the page's, before its first prompt) is stored by its first upload, by the rules
(and the ``CONVERSATIONS_PER_HOUR`` limit) that store it on a first prompt.
"""

from __future__ import annotations

from django.db import transaction
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse

from . import protocol
from .access import Denied, may_open, may_prompt, open_conversation, role_of
from .api_conversations import denied, error, login_required, method_not_allowed, session_key
from .attachments import ERR_FILE_TOO_LARGE, ERR_MISSING_FILE, Refused, check_allowance, reference, store
from .bodylimit import MULTIPART_OVERHEAD_BYTES
from .conf import app_settings
from .models import Attachment
from .sniffing import IMAGE_FORMATS

# The extension a downloaded file's name gets, by its sniffed type (not the one the uploader's name had).
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "application/pdf": "pdf",
    "text/plain": "txt",
    "text/csv": "csv",
    "text/markdown": "md",
}


def upload(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """``POST`` a multipart ``file``: 201 with the attachment's reference, or 400, 403, 404, 413, 415 or 429."""
    refused = login_required(request)
    if refused is not None:
        return refused
    if request.method != "POST":
        return method_not_allowed(["POST"])
    limit = app_settings.ATTACHMENT_MAX_BYTES
    if _declared_length(request) > limit + MULTIPART_OVERHEAD_BYTES:  # refused before the body is read
        return error(413, ERR_FILE_TOO_LARGE, f"Files are limited to {limit} bytes.")
    key = session_key(request, create=True)
    try:
        check_allowance(request.user, key or "")  # before the multipart body is parsed
    except Refused as refusal:
        return error(refusal.status, refusal.code, refusal.message)
    request.FILES  # noqa: B018 (the multipart body is parsed before the transaction, not inside it)
    with transaction.atomic():  # a refused upload stores nothing: not even the fresh conversation it opened
        response = _store_upload(request, key, conversation_id, limit)
        if response.status_code != 201:
            transaction.set_rollback(True)
    return response


def _store_upload(request: HttpRequest, key: str | None, conversation_id: str, limit: int) -> HttpResponse:
    opened = open_conversation(request.user, key, conversation_id)
    if isinstance(opened, Denied):
        return denied(opened)
    if not may_prompt(role_of(opened, request.user, key)):
        return error(403, protocol.ERR_FORBIDDEN, "Only the owner or a member may attach files.")
    uploaded = request.FILES.get("file")
    if uploaded is None:
        return error(400, ERR_MISSING_FILE, "Send the file as the multipart field 'file'.")
    if uploaded.size > limit:
        return error(413, ERR_FILE_TOO_LARGE, f"Files are limited to {limit} bytes.")
    try:
        attachment = store(opened, request.user, key or "", uploaded.name or "", uploaded.read())
    except Refused as refusal:
        return error(refusal.status, refusal.code, refusal.message)
    return JsonResponse(reference(attachment), status=201)


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def download(request: HttpRequest, attachment_id: str) -> HttpResponse:
    """``GET`` the file of an attachment, for anyone who may open its conversation (404 for anyone else)."""
    refused = login_required(request)
    if refused is not None:
        return refused
    if request.method != "GET":
        return method_not_allowed(["GET"])
    attachment = Attachment.objects.select_related("conversation").filter(pk=attachment_id).first()
    if attachment is None or not may_open(attachment.conversation, request.user, session_key(request)):
        return error(404, protocol.ERR_NOT_FOUND, "No such attachment.")
    try:
        handle = attachment.file.open("rb")
    except (OSError, ValueError):
        return error(404, protocol.ERR_NOT_FOUND, "The attachment's file is no longer available.")
    inline = attachment.mime_type in IMAGE_FORMATS
    response = FileResponse(
        handle, content_type=attachment.mime_type, as_attachment=not inline, filename=download_name(attachment)
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def download_name(attachment: Attachment) -> str:
    """The name a browser saves the file under: the uploader's, with the extension of the type its bytes showed."""
    extension = EXTENSIONS.get(attachment.mime_type, "bin")
    name = attachment.original_name or "file"
    stem, dot, current = name.rpartition(".")
    if dot and stem and (current.lower() == extension or (extension == "md" and current.lower() == "markdown")):
        return name
    return f"{stem if dot and stem else name}.{extension}"
