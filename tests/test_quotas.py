"""Quotas: a token or cost budget per user or group and period refuses prompts until the period ends."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from agentapp import protocol, quotas
from agentapp.models import Conversation, Quota, Run
from agentapp.recorder import QuotaExceeded, create_run
from tests.wsclient import Client


@pytest.fixture
def ada(db) -> Any:
    return get_user_model().objects.create_user("ada", password=None)


def spend(user: Any, tokens: int, cost: str | None = None, started: datetime | None = None) -> Run:
    conversation = Conversation.objects.create(owner=user)
    run = Run.objects.create(conversation=conversation, user=user, prompt="p", status="completed", total_tokens=tokens)
    Run.objects.filter(pk=run.pk).update(
        cost=Decimal(cost) if cost is not None else None, started_at=started or timezone.now()
    )
    return run


def prompt(conversation: Conversation, user: Any, text: str) -> None:
    """Start a run as a prompt does (``create_run``), then end it."""
    run_id = uuid.uuid4()
    create_run(conversation.pk, run_id, user.pk, text)
    Run.objects.filter(pk=run_id).update(status="completed")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_spent_daily_budget_refuses_prompts_until_the_next_day(settings, ada, monkeypatch):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    await Quota.objects.acreate(user=ada, period="day", max_tokens=1)
    client = Client(user=ada)
    await client.hello()
    await client.prompt("Calculate 2+2")
    assert (await client.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    used = (await Run.objects.aget()).total_tokens
    assert used > 1

    await client.prompt("Calculate 3+4")
    refused = await client.receive()
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert refused["type"] == protocol.ERROR and refused["code"] == protocol.ERR_QUOTA_EXCEEDED
    assert "run_id" not in refused
    assert datetime.fromisoformat(refused["resets_at"]) == midnight
    assert refused["message"] == (
        f"Your daily budget of 1 tokens is spent ({used} used); it resets at {midnight.isoformat()}."
    )
    assert await Run.objects.acount() == 1

    # The next day the budget is whole again.
    monkeypatch.setattr(quotas, "now", lambda: midnight + timedelta(seconds=1))
    await client.prompt("Calculate 3+4")
    assert (await client.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    assert await Run.objects.acount() == 2
    await client.close()


def test_a_cost_budget_lifts_once_its_runs_fall_out_of_the_period(ada):
    Quota.objects.create(user=ada, period="week", max_cost=Decimal("0.50"))
    spend(ada, 10, "0.30")
    conversation = Conversation.objects.create(owner=ada)
    prompt(conversation, ada, "under budget")
    run = spend(ada, 10, "0.25")
    with pytest.raises(QuotaExceeded) as refused:
        prompt(conversation, ada, "over budget")
    assert refused.value.code == "quota_exceeded"
    assert "weekly cost budget of 0.50" in refused.value.message
    _, end = quotas.period_bounds("week", timezone.now())
    assert refused.value.resets_at == end.isoformat()
    # The same runs, started before this week: the budget is untouched.
    Run.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(days=8))
    prompt(conversation, ada, "under budget again")
    assert Run.objects.filter(conversation=conversation).count() == 2


def test_group_quotas_apply_unless_the_user_has_their_own(ada):
    team = Group.objects.create(name="team")
    ada.groups.add(team)
    Quota.objects.create(group=team, period="month", max_tokens=100)
    Quota.objects.create(group=Group.objects.create(name="others"), period="day", max_tokens=1)  # not ada's group
    spend(ada, 100)
    spent = quotas.spent_budget(ada.pk)
    assert spent is not None and spent.quota.group_id == team.pk
    assert "monthly budget of 100 tokens" in spent.message
    # Her own monthly quota replaces the group's.
    Quota.objects.create(user=ada, period="month", max_tokens=1000)
    assert quotas.spent_budget(ada.pk) is None
    # Another user, of no group, is free.
    assert quotas.spent_budget(get_user_model().objects.create_user("bob").pk) is None


def test_of_several_spent_budgets_the_one_lifting_last_is_told(ada):
    Quota.objects.create(user=ada, period="day", max_tokens=10)
    Quota.objects.create(user=ada, period="month", max_tokens=10)
    spend(ada, 10)
    spent = quotas.spent_budget(ada.pk)
    assert spent is not None and spent.quota.period == "month"


def test_period_bounds_follow_the_calendar_in_the_current_time_zone(settings):
    settings.TIME_ZONE = "Europe/Paris"
    paris = ZoneInfo("Europe/Paris")
    at = datetime(2026, 12, 31, 23, 30, tzinfo=paris)  # a Thursday
    assert quotas.period_bounds("day", at) == (datetime(2026, 12, 31, tzinfo=paris), datetime(2027, 1, 1, tzinfo=paris))
    assert quotas.period_bounds("week", at) == (
        datetime(2026, 12, 28, tzinfo=paris),
        datetime(2027, 1, 4, tzinfo=paris),
    )
    assert quotas.period_bounds("month", at) == (
        datetime(2026, 12, 1, tzinfo=paris),
        datetime(2027, 1, 1, tzinfo=paris),
    )
    with pytest.raises(ValueError):
        quotas.period_bounds("year", at)


def test_a_quota_names_a_user_or_a_group_and_a_limit(ada):
    with pytest.raises(ValidationError):
        Quota(period="day", max_tokens=1).full_clean()
    with pytest.raises(ValidationError):
        Quota(user=ada, period="day").full_clean()
    with transaction.atomic(), pytest.raises(IntegrityError):
        Quota.objects.create(user=ada, group=Group.objects.create(name="g"), period="day", max_tokens=1)


def test_staff_set_quotas_in_the_admin_and_the_api_shows_them(client, django_user_model, ada):
    staff = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(staff)
    added = client.post(
        reverse("admin:agentapp_quota_add"), {"user": ada.pk, "period": "day", "max_tokens": "50", "max_cost": ""}
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    assert Quota.objects.get().max_tokens == 50
    neither = client.post(reverse("admin:agentapp_quota_add"), {"period": "day", "max_tokens": "5"})
    assert neither.status_code == 200 and "Choose a user or a group" in neither.content.decode()
    spend(ada, 20)
    client.force_login(ada)
    shown = client.get("/api/usage/").json()["quotas"]
    assert [(q["period"], q["max_tokens"], q["used_tokens"], q["spent"]) for q in shown] == [("day", 50, 20, False)]
