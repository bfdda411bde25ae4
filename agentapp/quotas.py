"""Quotas: token and cost budgets per user and calendar period, checked before a prompt's run is written.

A ``Quota`` names a user or a group, a period (day, week from Monday, month, in the current time zone) and a
token and/or cost limit. A user's own quota for a period replaces their groups' quotas for that period; every
quota left applies. A budget is spent once the runs the user started in the period reach its limit: the
prompt after that is refused with ``quota_exceeded`` until the period ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Q, Sum
from django.utils import timezone

from .models import Quota, Run

PERIOD_WORDS = {Quota.Period.DAY: "daily", Quota.Period.WEEK: "weekly", Quota.Period.MONTH: "monthly"}


def now() -> datetime:
    """The current time; tests replace it to move across a period's end."""
    return timezone.now()


def period_bounds(period: str, at: datetime) -> tuple[datetime, datetime]:
    """The start and end of the calendar period holding ``at``, in the current time zone."""
    local = timezone.localtime(at)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Quota.Period.DAY:
        return start, start + timedelta(days=1)
    if period == Quota.Period.WEEK:
        start -= timedelta(days=start.weekday())
        return start, start + timedelta(days=7)
    if period == Quota.Period.MONTH:
        start = start.replace(day=1)
        following = (
            start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        )
        return start, following
    raise ValueError(f"Unknown quota period {period!r}")


def applicable(user_id: Any) -> list[Quota]:
    """The quotas that bind a user: their own, and their groups' for the periods they have none of their own."""
    quotas = list(Quota.objects.filter(Q(user_id=user_id) | Q(group__user__pk=user_id)).distinct().order_by("pk"))
    own = {quota.period for quota in quotas if quota.user_id is not None}
    return [quota for quota in quotas if quota.user_id is not None or quota.period not in own]


@dataclass(frozen=True)
class Budget:
    """One quota's state for a user at a moment: what was used of it in the current period, and when that ends."""

    quota: Quota
    starts_at: datetime
    resets_at: datetime
    used_tokens: int
    used_cost: Decimal

    @property
    def spent(self) -> bool:
        """Whether the user reached one of its limits."""
        quota = self.quota
        return (quota.max_tokens is not None and self.used_tokens >= quota.max_tokens) or (
            quota.max_cost is not None and self.used_cost >= quota.max_cost
        )

    @property
    def message(self) -> str:
        """What the refused user is told: which budget, how much was used, when it resets."""
        quota, word = self.quota, PERIOD_WORDS.get(self.quota.period, self.quota.period)
        if quota.max_tokens is not None and self.used_tokens >= quota.max_tokens:
            spent = f"{word} budget of {quota.max_tokens} tokens is spent ({self.used_tokens} used)"
        else:
            spent = f"{word} cost budget of {quota.max_cost} is spent ({self.used_cost} used)"
        return f"Your {spent}; it resets at {self.resets_at.isoformat()}."

    def as_dict(self) -> dict[str, Any]:
        """The wire form shown by the usage API."""
        quota = self.quota
        return {
            "period": quota.period,
            "scope": "user" if quota.user_id is not None else "group",
            "max_tokens": quota.max_tokens,
            "max_cost": str(quota.max_cost) if quota.max_cost is not None else None,
            "used_tokens": self.used_tokens,
            "used_cost": str(self.used_cost),
            "starts_at": self.starts_at.isoformat(),
            "resets_at": self.resets_at.isoformat(),
            "spent": self.spent,
        }


def budgets(user_id: Any, at: datetime | None = None) -> list[Budget]:
    """Each quota binding the user, with what they used of it in its current period."""
    at = now() if at is None else at
    found = []
    for quota in applicable(user_id):
        start, end = period_bounds(quota.period, at)
        sums = Run.objects.filter(user_id=user_id, started_at__gte=start, started_at__lt=end).aggregate(
            tokens=Sum("total_tokens"), cost=Sum("cost")
        )
        found.append(Budget(quota, start, end, int(sums["tokens"] or 0), Decimal(sums["cost"] or 0)))
    return found


def spent_budget(user_id: Any, at: datetime | None = None) -> Budget | None:
    """The spent budget that lifts last (a prompt waits for every spent one), or None when the user may prompt."""
    spent = [budget for budget in budgets(user_id, at) if budget.spent]
    return max(spent, key=lambda budget: budget.resets_at) if spent else None
