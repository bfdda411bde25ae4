"""The feedback JSON API: list a conversation's feedback, or give (change, take back) one's own on a message.

``GET`` is open to anyone who may open the conversation; ``POST {"position", "rating", "comment"?}`` to its owner
and members (viewers get 403 ``read_only``), as on the socket. The change reaches open connections at once.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import ensure_csrf_cookie

from . import feedback, protocol
from .access import Denied, may_prompt, open_with_role
from .api_conversations import denied, error, json_body, login_required, method_not_allowed, session_key
from .conf import app_settings


@ensure_csrf_cookie
def feedback_view(request: HttpRequest, conversation_id: Any) -> HttpResponse:
    """``GET``: every feedback of the conversation, by message position. ``POST``: give the caller's."""
    refused = login_required(request)
    if refused is not None:
        return refused
    if request.method not in ("GET", "POST"):
        return method_not_allowed(["GET", "POST"])
    key = session_key(request)
    opened = open_with_role(request.user, key, conversation_id)
    if isinstance(opened, Denied):
        return denied(opened)
    conversation_id = str(opened.conversation.pk)
    if request.method == "GET":
        return JsonResponse({"conversation_id": conversation_id, "feedback": feedback.listing(conversation_id)})
    if not may_prompt(opened.role):
        return error(403, protocol.ERR_READ_ONLY, "Viewers may not give feedback.")
    body = json_body(request)
    if isinstance(body, JsonResponse):
        return body
    if not isinstance(body, dict):
        return error(400, protocol.ERR_INVALID_FEEDBACK, 'Send {"position": n, "rating": "up" or "down"}.')
    try:
        position, rating, comment = protocol.parse_feedback(body, app_settings.FEEDBACK_COMMENT_MAX_CHARS)
        given = feedback.give(conversation_id, position, request.user, key, rating, comment)
    except (protocol.ProtocolError, feedback.FeedbackError) as refused_feedback:
        status = 404 if refused_feedback.code == protocol.ERR_UNKNOWN_MESSAGE else 400
        return error(status, refused_feedback.code, refused_feedback.message)
    feedback.announce(conversation_id, given)
    return JsonResponse({"conversation_id": conversation_id, "feedback": given})
