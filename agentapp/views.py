"""HTTP views: the chat page."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from . import params
from .access import find_conversation, is_authenticated, may_open
from .conf import app_settings
from .models import Conversation

# Where agentapp.routing serves the WebSocket; a project mounting it elsewhere overrides the template.
WEBSOCKET_PATH = "/ws/agent/"
# How many conversations the page lists.
CONVERSATION_LIST_LIMIT = 50


def visible_conversations(user: Any, session_key: str | None) -> QuerySet[Conversation]:
    """The conversations this user (or anonymous session) owns, newest first."""
    if is_authenticated(user):
        return Conversation.objects.filter(owner=user)
    if not session_key:
        return Conversation.objects.none()
    return Conversation.objects.filter(owner__isnull=True, session_key=session_key)


def requested_conversation(request: HttpRequest, user: Any, session_key: str | None) -> Conversation | None:
    """The conversation named by the ``c`` query parameter (None without one); 404 unless it is one UUID they may open.

    A malformed, repeated or unknown id answers as one the caller may not open, so ids do not leak.
    """
    try:
        value = params.single(params.query(request), "c")
    except params.ParameterError:
        raise Http404("No such conversation.") from None
    if value is None:
        return None
    conversation_id = params.canonical_uuid(value)
    # A fresh conversation of theirs (no prompt yet, so no row) opens too: a reload, a second tab.
    conversation = find_conversation(conversation_id, user, session_key) if conversation_id else None
    if conversation is None or not may_open(conversation, user, session_key):
        raise Http404("No such conversation.")
    return conversation


@ensure_csrf_cookie  # the share panel sends the token with its members API requests
def chat(request: HttpRequest) -> HttpResponse:
    """The chat page; anonymous visitors get a session in demo mode, a login redirect otherwise."""
    if not request.user.is_authenticated:
        if not app_settings.ALLOW_ANONYMOUS:
            return redirect_to_login(request.get_full_path())
        if not request.session.session_key:
            request.session.save()
    session_key = None if request.user.is_authenticated else request.session.session_key
    current = requested_conversation(request, request.user, session_key)
    # Conversations are created on connect; list only those with a prompt (a title), plus the open one.
    shown = ~Q(title="")
    if current is not None:
        shown |= Q(pk=current.pk)
    listed = visible_conversations(request.user, session_key).filter(shown)
    context = {
        "allow_anonymous": app_settings.ALLOW_ANONYMOUS,
        "conversations": listed.order_by("-updated_at")[:CONVERSATION_LIST_LIMIT],
        "current": current,
        "websocket_path": WEBSOCKET_PATH,
        "login_url": redirect_to_login(request.get_full_path()).url,
    }
    return render(request, "agentapp/chat.html", context)
