"""The conversations JSON API: list, search, create, read, rename, export and delete, with the WebSocket's access rules.

Session authentication and Django's CSRF protection apply as on any Django view; ``docs/api.md`` describes
each endpoint for client authors. A conversation the caller may not open answers 404, so ids do not leak.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

from . import params, protocol, search, titles
from .access import (
    LOGIN_REQUIRED,
    TOO_MANY_CONVERSATIONS,
    Denied,
    is_authenticated,
    may_prompt,
    open_conversation,
    open_stored,
    role_of,
)
from .conf import app_settings
from .export import export_json, export_markdown
from .history import wire_message
from .models import Conversation, Message, Run, ToolResult
from .recorder import run_in_progress
from .storable import storable_text
from .views import visible_conversations

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# The largest ``limit`` accepted (served as MAX_LIMIT) and the largest ``offset``.
LIMIT_RANGE_MAX = 1000
OFFSET_MAX = 1_000_000_000
TITLE_MAX_CHARS = Conversation._meta.get_field("title").max_length

ERR_INVALID_PARAMETER = params.ERR_INVALID_PARAMETER
ERR_BODY_TOO_LARGE = "body_too_large"
ERR_METHOD_NOT_ALLOWED = "method_not_allowed"
ERR_INVALID_BODY = "invalid_body"

### Responses ###


def error(status: int, code: str, message: str) -> JsonResponse:
    """An error answer: ``{"error": code, "message": text}`` with an HTTP status."""
    return JsonResponse({"error": code, "message": message}, status=status)


def method_not_allowed(allowed: list[str]) -> JsonResponse:
    response = error(405, ERR_METHOD_NOT_ALLOWED, f"Allowed methods: {', '.join(allowed)}.")
    response["Allow"] = ", ".join(allowed)
    return response


def denied(reason: Denied) -> JsonResponse:
    """The answer for a refusal from ``agentapp.access``: 401 to log in, 404 otherwise (and in demo mode)."""
    if reason is LOGIN_REQUIRED and not app_settings.ALLOW_ANONYMOUS:
        return error(401, reason.code, reason.message)
    return error(404, protocol.ERR_NOT_FOUND, "No such conversation.")


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def conversation_summary(conversation: Conversation, run_count: int) -> dict[str, Any]:
    """A conversation as listed: id, title, times and how many runs it has had."""
    return {
        "id": str(conversation.pk),
        "title": conversation.title,
        "created": _time(conversation.created_at),
        "updated": _time(conversation.updated_at),
        "run_count": run_count,
    }


def conversation_detail(conversation: Conversation) -> dict[str, Any]:
    """A conversation with its messages in order (each with its tool results) and its runs."""
    results: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in ToolResult.objects.filter(conversation=conversation).order_by("created_at", "id").values():
        results[row["message_id"]].append(
            {
                "tool_use_id": row["tool_use_id"],
                "tool_name": row["tool_name"],
                "tool_input": protocol.json_safe(protocol.from_storable(row["tool_input"])),
                "status": row["status"],
                "content": protocol.json_safe(protocol.from_storable(row["content"])),
                "duration_ms": row["duration_ms"],
            }
        )
    messages = [
        {**wire_message(row), "created": _time(row["created_at"]), "tool_results": results.get(row["id"], [])}
        for row in Message.objects.filter(conversation=conversation).order_by("position").values()
    ]
    runs = [
        {
            "id": str(run.pk),
            "prompt": run.prompt,
            "status": run.status,
            "stop_reason": run.stop_reason,
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "total_tokens": run.total_tokens,
            "latency_ms": run.latency_ms,
            "error": run.error,
            "structured_output": run.structured_output,
            "started": _time(run.started_at),
            "finished": _time(run.finished_at),
        }
        for run in Run.objects.filter(conversation=conversation).order_by("started_at")
    ]
    return {**conversation_summary(conversation, len(runs)), "messages": messages, "runs": runs}


### Who is asking ###


def session_key(request: HttpRequest, create: bool = False) -> str | None:
    """The anonymous caller's session key (saving a new session when ``create``); None for a logged-in user."""
    if is_authenticated(request.user):
        return None
    if create and not request.session.session_key and app_settings.ALLOW_ANONYMOUS:
        request.session.save()
    return request.session.session_key


def login_required(request: HttpRequest) -> JsonResponse | None:
    """401 for an anonymous caller unless ``ALLOW_ANONYMOUS`` is on."""
    if is_authenticated(request.user) or app_settings.ALLOW_ANONYMOUS:
        return None
    return denied(LOGIN_REQUIRED)


def owns(conversation: Conversation, request: HttpRequest) -> bool:
    """Whether the caller owns the conversation: its user, or for an anonymous one, its session."""
    if is_authenticated(request.user):
        return conversation.owner_id == request.user.pk
    key = request.session.session_key
    return conversation.owner_id is None and bool(key) and conversation.session_key == key


def json_body(request: HttpRequest, empty: Any = None) -> Any:
    """The JSON of the request body (``empty`` when it is blank), parsed by ``protocol.decode_json``.

    A body it refuses answers the JsonResponse returned instead: 413 ``body_too_large`` over ``MAX_FRAME_BYTES``,
    400 ``invalid_json`` or ``too_deep``.
    """
    limit = app_settings.MAX_FRAME_BYTES
    try:
        body = request.body
    except RequestDataTooBig:
        body = None
    if body is None or len(body) > limit:
        return error(413, ERR_BODY_TOO_LARGE, f"Request bodies are limited to {limit} bytes.")
    if not body.strip():
        return empty
    try:
        return protocol.decode_json(body)
    except protocol.ProtocolError as refused:
        return error(400, refused.code, refused.message)


def query_error(refused: params.ParameterError) -> JsonResponse:
    """The 400 answering a query parameter ``agentapp.params`` refused."""
    return error(400, refused.code, refused.message)


def _page(request: HttpRequest) -> tuple[int, int] | JsonResponse:
    try:
        query = params.query(request)
        limit = params.integer(query, "limit", DEFAULT_LIMIT, 1, LIMIT_RANGE_MAX)
        offset = params.integer(query, "offset", 0, 0, OFFSET_MAX)
    except params.ParameterError as refused:
        return query_error(refused)
    return min(limit, MAX_LIMIT), offset


def _search_query(request: HttpRequest) -> str | JsonResponse:
    """The ``q`` parameter: required, not blank, at most ``SEARCH_MAX_CHARS``, no NUL or lone surrogate."""
    limit = app_settings.SEARCH_MAX_CHARS
    try:
        value = params.single(params.query(request), "q")
    except params.ParameterError as refused:
        return query_error(refused)
    if value is None or not value.strip() or len(value) > limit or storable_text(value) != value:
        return error(400, ERR_INVALID_PARAMETER, f"q must be a non-blank text of at most {limit} characters.")
    return value.strip()


def _new_title(request: HttpRequest) -> str | JsonResponse:
    """The title of a ``PATCH`` body ``{"title": "..."}``, cleaned by ``titles.clean_title``."""
    body = json_body(request, empty={})
    if isinstance(body, JsonResponse):
        return body
    if not isinstance(body, dict) or set(body) != {"title"}:
        return error(400, ERR_INVALID_BODY, 'Send the JSON object {"title": "..."}.')
    try:
        return titles.clean_title(body["title"])
    except titles.TitleError as refused:
        return error(400, refused.code, refused.message)


def _title(request: HttpRequest) -> str | JsonResponse:
    body = json_body(request, empty={})
    if isinstance(body, JsonResponse):
        return body
    if not isinstance(body, dict):
        return error(400, protocol.ERR_INVALID_JSON, "The request body must be a JSON object.")
    title = body.get("title", "")
    if not isinstance(title, str) or len(title) > TITLE_MAX_CHARS:
        return error(400, ERR_INVALID_PARAMETER, f"title must be a string of at most {TITLE_MAX_CHARS} characters.")
    return titles.normalize(title)  # storable, as a rename's


### Views ###


@ensure_csrf_cookie
def conversations(request: HttpRequest) -> HttpResponse:
    """``GET``: the caller's conversations, most recently updated first, paginated. ``POST``: a new one."""
    refused = login_required(request)
    if refused is not None:
        return refused
    if request.method == "GET":
        page = _page(request)
        if isinstance(page, JsonResponse):
            return page
        limit, offset = page
        listed = visible_conversations(request.user, session_key(request)).annotate(run_count=Count("runs"))
        listed = listed.order_by("-updated_at", "-created_at", "-pk")
        return JsonResponse(
            {
                "conversations": [conversation_summary(row, row.run_count) for row in listed[offset : offset + limit]],
                "count": listed.count(),
                "limit": limit,
                "offset": offset,
            }
        )
    if request.method == "POST":
        title = _title(request)
        if isinstance(title, JsonResponse):
            return title
        created = open_conversation(request.user, session_key(request, create=True), None)
        if created is TOO_MANY_CONVERSATIONS:  # CONVERSATIONS_PER_HOUR, as for a first prompt on a socket
            return error(429, created.code, created.message)
        if isinstance(created, Denied):
            return denied(created)
        if title:
            created.title = title
            created.save(update_fields=["title", "updated_at"])
        response = JsonResponse(conversation_summary(created, 0), status=201)
        response["Location"] = reverse("agentapp:api_conversation", args=[created.pk])
        return response
    return method_not_allowed(["GET", "POST"])


@ensure_csrf_cookie
def search_conversations(request: HttpRequest) -> HttpResponse:
    """``GET ?q=``: the caller's conversations and those shared with them whose title or messages match, paginated."""
    refused = login_required(request)
    if refused is not None:
        return refused
    if request.method != "GET":
        return method_not_allowed(["GET"])
    query = _search_query(request)
    if isinstance(query, JsonResponse):
        return query
    page = _page(request)
    if isinstance(page, JsonResponse):
        return page
    limit, offset = page
    found = search.search(search.searchable_conversations(request.user, session_key(request)), query)
    found = found.annotate(run_count=Count("runs")).order_by("-updated_at", "-created_at", "-pk")
    return JsonResponse(
        {
            "conversations": [conversation_summary(row, row.run_count) for row in found[offset : offset + limit]],
            "count": found.count(),
            "limit": limit,
            "offset": offset,
            "q": query,
        }
    )


@ensure_csrf_cookie
def conversation(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """``GET``: the conversation with its messages, tool results and runs. ``PATCH``: rename it (owner and members).
    ``DELETE``: remove it (owner only)."""
    refused = login_required(request)
    if refused is not None:
        return refused
    if request.method not in ("GET", "PATCH", "DELETE"):
        return method_not_allowed(["GET", "PATCH", "DELETE"])
    opening = open_conversation if request.method == "PATCH" else open_stored  # only a rename stores a fresh one
    opened = opening(request.user, session_key(request), conversation_id)
    if isinstance(opened, Denied):
        return denied(opened)
    if request.method == "GET":
        return JsonResponse(conversation_detail(opened))
    if request.method == "PATCH":
        return _rename(request, opened)
    if not owns(opened, request):
        return error(403, protocol.ERR_FORBIDDEN, "Only the owner may delete a conversation.")
    with transaction.atomic():
        # The lock create_run takes too, so no run can start between the check and the delete.
        Conversation.objects.select_for_update().filter(pk=opened.pk).first()
        if run_in_progress(opened.pk):
            return error(409, protocol.ERR_BUSY, "A run is in progress; cancel it or wait for it to finish.")
        opened.delete()
    return HttpResponse(status=204)


def _rename(request: HttpRequest, opened: Conversation) -> JsonResponse:
    """Rename the conversation (its owner or a member; a viewer gets 403) and tell its open pages."""
    if not may_prompt(role_of(opened, request.user, session_key(request))):
        return error(403, protocol.ERR_FORBIDDEN, "Only the owner or a member may rename a conversation.")
    title = _new_title(request)
    if isinstance(title, JsonResponse):
        return title
    titles.rename(opened, title)
    return JsonResponse(conversation_summary(opened, Run.objects.filter(conversation=opened).count()))


@ensure_csrf_cookie
def export(request: HttpRequest, conversation_id: str, kind: str) -> HttpResponse:
    """``GET``: the conversation as a JSON (``kind`` "json") or Markdown ("md") download, for anyone who may open it."""
    refused = login_required(request)
    if refused is not None:
        return refused
    if request.method != "GET":
        return method_not_allowed(["GET"])
    opened = open_stored(request.user, session_key(request), conversation_id)
    if isinstance(opened, Denied):
        return denied(opened)
    detail = conversation_detail(opened)
    if kind == "json":
        response: HttpResponse = JsonResponse(export_json(detail), json_dumps_params={"ensure_ascii": False})
    else:
        response = HttpResponse(export_markdown(detail), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="conversation-{opened.pk}.{kind}"'
    return response
