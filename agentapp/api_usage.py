"""The usage JSON API: tokens and cost of a user's runs, summed per day, model, conversation or user.

``GET api/usage/`` answers the caller's own usage; staff may ask for another user's (``?user=<id>``) or everyone's
(``?user=all``). Query parameters are strict (agentapp.params); ``docs/usage.md`` describes the answer.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from . import params, protocol, quotas, usage
from .access import is_authenticated
from .api_conversations import error, method_not_allowed, query_error
from .models import Run

DEFAULT_DAYS = 30
# The longest span one request may sum over, in days.
MAX_DAYS = 3660
MAX_USER_ID = 2**63 - 1
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _date(query: params.QueryDict, name: str, default: date) -> date:
    """``name`` as an ISO date ``YYYY-MM-DD``."""
    value = params.single(query, name)
    if value is None:
        return default
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise params.ParameterError(f"{name} must be a date as YYYY-MM-DD.") from None


def _whose(query: params.QueryDict, request: HttpRequest) -> int | None:
    """The user whose runs are summed: the caller, another user for staff, or None (everyone, staff only)."""
    value = params.single(query, "user")
    if value is None:
        return request.user.pk
    if value == "all":
        return None
    if len(value) > len(str(MAX_USER_ID)) or not value.isascii() or not value.isdigit():
        raise params.ParameterError("user must be a user id in ASCII digits, or all.")
    return int(value)


def usage_view(request: HttpRequest) -> HttpResponse:
    """``GET``: the sums of the runs started from ``since`` to ``until`` (dates, inclusive), grouped by ``by``."""
    if request.method != "GET":
        return method_not_allowed(["GET"])
    if not is_authenticated(request.user):
        return error(401, protocol.ERR_LOGIN_REQUIRED, "Log in to see usage.")
    today = timezone.localdate()
    try:
        query = params.query(request)
        by = params.choice(query, "by", usage.GROUPINGS, default="day")
        until = _date(query, "until", today)
        since = _date(query, "since", until - timedelta(days=DEFAULT_DAYS - 1))
        user_id = _whose(query, request)
        conversation = params.single(query, "conversation")
        conversation_id = params.canonical_uuid(conversation) if conversation is not None else None
        if conversation is not None and conversation_id is None:
            raise params.ParameterError("conversation must be a conversation id (a UUID).")
        if since > until or (until - since).days >= MAX_DAYS:
            raise params.ParameterError(f"since must not be after until, and the span at most {MAX_DAYS} days.")
    except params.ParameterError as refused:
        return query_error(refused)
    if user_id != request.user.pk and not request.user.is_staff:
        return error(403, protocol.ERR_FORBIDDEN, "Only staff may see the usage of other users.")
    runs = Run.objects.filter(started_at__date__gte=since, started_at__date__lte=until)
    if user_id is not None:
        runs = runs.filter(user_id=user_id)
    if conversation_id is not None:
        runs = runs.filter(conversation_id=conversation_id)
    answer = {
        "user": user_id if user_id is not None else "all",
        "by": by,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "totals": usage.totals(runs),
        "groups": usage.aggregate(runs, by),
    }
    if user_id is not None:
        answer["quotas"] = [budget.as_dict() for budget in quotas.budgets(user_id)]
    return JsonResponse(answer)
