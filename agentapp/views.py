"""HTTP views: the chat page."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .conf import app_settings


def chat(request: HttpRequest) -> HttpResponse:
    """The chat page; anonymous visitors get a session in demo mode, a login redirect otherwise."""
    if not request.user.is_authenticated:
        if not app_settings.ALLOW_ANONYMOUS:
            return redirect_to_login(request.get_full_path())
        if not request.session.session_key:
            request.session.save()
    return render(request, "agentapp/chat.html", {"allow_anonymous": app_settings.ALLOW_ANONYMOUS})
