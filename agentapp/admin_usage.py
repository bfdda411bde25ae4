"""The admin's usage page: tokens and cost of the last 30 days as a server-rendered bar chart, per model and user.

It is the change list of the ``UsageReport`` proxy of Run (so it has its own entry and view permission in the
admin); ``?user=<id>`` narrows it to one user. Sums come from ``agentapp.usage``, as the API's do.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import usage
from .models import UsageReport

CHART_DAYS = 30
BAR_WIDTH = 22
BAR_GAP = 4
CHART_HEIGHT = 160
LABEL_HEIGHT = 18


def bar_chart(series: list[dict[str, Any]], field: str = "total_tokens") -> SafeString:
    """An inline SVG bar chart of ``field`` per day; each bar's tooltip gives the day, tokens, runs and cost."""
    top = max((entry[field] for entry in series), default=0) or 1
    bars = []
    for index, entry in enumerate(series):
        height = round(CHART_HEIGHT * entry[field] / top)
        x = index * (BAR_WIDTH + BAR_GAP)
        tooltip = f"{entry['day']}: {entry[field]} tokens, {entry['runs']} runs, cost {entry['cost'] or '-'}"
        label = entry["day"][8:] if index % 5 == 0 or index == len(series) - 1 else ""
        bars.append((x, CHART_HEIGHT - height, BAR_WIDTH, height, tooltip, x + BAR_WIDTH / 2, label))
    width = len(series) * (BAR_WIDTH + BAR_GAP)
    return format_html(
        '<svg class="agentapp-usage-chart" role="img" width="{}" height="{}" viewBox="0 0 {} {}">'
        "<title>Tokens per day</title>{}</svg>",
        width,
        CHART_HEIGHT + LABEL_HEIGHT,
        width,
        CHART_HEIGHT + LABEL_HEIGHT,
        format_html_join(
            "",
            '<g><rect x="{}" y="{}" width="{}" height="{}" fill="#417690"><title>{}</title></rect>'
            '<text x="{}" y="' + str(CHART_HEIGHT + LABEL_HEIGHT - 4) + '" font-size="10" text-anchor="middle">'
            "{}</text></g>",
            bars,
        ),
    )


@admin.register(UsageReport)
class UsageAdmin(admin.ModelAdmin):
    """Usage of the last 30 days: a chart of tokens per day, then sums per model and per user."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        first = timezone.localdate() - timedelta(days=CHART_DAYS - 1)
        runs = UsageReport.objects.filter(started_at__date__gte=first)
        user_id = request.GET.get("user", "")
        chosen = None
        if user_id.isascii() and user_id.isdigit() and len(user_id) < 19:
            chosen = get_user_model().objects.filter(pk=int(user_id)).first()
            runs = runs.filter(user_id=int(user_id))
        users = {user.pk: user for user in get_user_model().objects.filter(pk__in=runs.values("user_id"))}
        per_user = [
            {**entry, "name": str(users.get(entry["user"]) or "anonymous")} for entry in usage.aggregate(runs, "user")
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Usage of the last {CHART_DAYS} days" + (f" by {chosen}" if chosen else ""),
            "first": first,
            "chart": bar_chart(usage.daily_series(runs, first, CHART_DAYS)),
            "totals": usage.totals(runs),
            "per_model": usage.aggregate(runs, "model"),
            "per_user": per_user,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "agentapp/admin_usage.html", context)
