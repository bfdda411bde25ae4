"""The sharing JSON API: the owner lists, adds and removes the members of a conversation.

Session authentication and Django's CSRF protection apply as on any Django view (send ``X-CSRFToken``).
Errors answer ``{"error": code, "message": text}``; a conversation the caller may not see answers 404.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import ensure_csrf_cookie

from . import protocol
from .access import OWNER, find_conversation, is_authenticated, role_of, store_new
from .api_conversations import error, json_body
from .models import Conversation
from .sharing import SharingError, member_entry, members_of, share, unshare

# The largest user id a database column holds (a signed 64-bit integer); a larger one in the path names no member.
MAX_USER_ID = 2**63 - 1


def owned_conversation(request: HttpRequest, conversation_id: Any) -> Conversation | JsonResponse:
    """The conversation if the caller owns it; otherwise the error to answer with."""
    if not is_authenticated(request.user):
        return error(401, protocol.ERR_LOGIN_REQUIRED, "Log in to share conversations.")
    conversation = find_conversation(conversation_id, request.user, None)
    role = role_of(conversation, request.user, None) if conversation is not None else None
    if role is None:
        return error(404, protocol.ERR_NOT_FOUND, "No such conversation.")
    if role != OWNER:
        return error(403, protocol.ERR_FORBIDDEN, "Only the owner manages who the conversation is shared with.")
    refused = store_new(conversation)  # sharing a fresh conversation (no prompt yet) stores it
    if refused is not None:
        return error(429, refused.code, refused.message)
    return conversation


@ensure_csrf_cookie
def members(request: HttpRequest, conversation_id: Any) -> HttpResponse:
    """GET: the members (and the CSRF cookie). POST ``{"username", "role"}``: share, or change a role (201 when new)."""
    if request.method not in ("GET", "POST"):
        return error(405, "method_not_allowed", "Allowed methods: GET, POST.")
    conversation = owned_conversation(request, conversation_id)
    if isinstance(conversation, JsonResponse):
        return conversation
    if request.method == "GET":
        return JsonResponse({"conversation_id": str(conversation.pk), "members": members_of(conversation)})
    body = json_body(request)
    if isinstance(body, JsonResponse):
        return body
    if not isinstance(body, dict) or not isinstance(body.get("username"), str):
        return error(400, "invalid_body", 'Send {"username": "...", "role": "member" or "viewer"}.')
    try:
        member, created = share(conversation, body["username"], body.get("role", "viewer"))
    except SharingError as exc:
        return error(400, exc.code, exc.message)
    return JsonResponse({"member": member_entry(member)}, status=201 if created else 200)


def member(request: HttpRequest, conversation_id: Any, user_id: int) -> HttpResponse:
    """DELETE: stop sharing the conversation with this user (their open connections are closed)."""
    if request.method != "DELETE":
        return error(405, "method_not_allowed", "Allowed methods: DELETE.")
    conversation = owned_conversation(request, conversation_id)
    if isinstance(conversation, JsonResponse):
        return conversation
    if user_id > MAX_USER_ID or not unshare(conversation, user_id):
        return error(404, "not_a_member", "This user is not a member of the conversation.")
    return HttpResponse(status=204)
