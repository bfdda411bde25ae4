"""Usage and cost: the model id and every token kind stored per run, priced by PRICING, summed by API and admin."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from agentapp import usage
from agentapp.models import Conversation, Run
from agentapp.recorder import finish_run
from tests.wsclient import Client

PRICING = {
    "big": {"input": 3, "output": 15, "cache_read": "0.3", "cache_write": "3.75"},
    "small": {"input": "0.25", "output": "1.25"},
}
URL = "/api/usage/"


@pytest.fixture
def people(db) -> dict[str, Any]:
    users = get_user_model().objects
    return {name: users.create_user(name, password=None) for name in ("ada", "bob")}


def finished(
    conversation: Conversation, user: Any, model_id: str, usage_dict: dict[str, int], days_ago: int = 0
) -> Run:
    """A run recorded through ``finish_run`` with this model and usage, started ``days_ago`` days back."""
    run = Run.objects.create(conversation=conversation, user=user, prompt="p")
    finish_run(run.pk, conversation.pk, {"status": "completed", "usage": usage_dict, "model_id": model_id})
    if days_ago:
        Run.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(days=days_ago))
    run.refresh_from_db()
    return run


def test_a_finished_run_stores_the_model_every_token_kind_and_its_cost(settings, people):
    settings.AGENTAPP = {"PRICING": PRICING}
    conversation = Conversation.objects.create(owner=people["ada"])
    reported = {
        "inputTokens": 1000,
        "outputTokens": 200,
        "totalTokens": 1200,
        "cacheReadInputTokens": 10_000,
        "cacheWriteInputTokens": 400,
    }
    run = finished(conversation, people["ada"], "big", reported)
    assert (run.model_id, run.input_tokens, run.output_tokens, run.total_tokens) == ("big", 1000, 200, 1200)
    assert (run.cache_read_input_tokens, run.cache_write_input_tokens) == (10_000, 400)
    # 1000*3 + 200*15 + 10000*0.3 + 400*3.75 = 10500 per million tokens
    assert run.cost == Decimal("0.0105")
    assert run.usage == reported

    unpriced = finished(conversation, people["ada"], "unknown-model", {"inputTokens": 5, "totalTokens": 5})
    assert (unpriced.model_id, unpriced.input_tokens, unpriced.cost) == ("unknown-model", 5, None)


def test_a_bad_price_is_logged_and_the_run_still_recorded(settings, people, caplog):
    settings.AGENTAPP = {"PRICING": {"m": {"input": "lots"}}}
    conversation = Conversation.objects.create(owner=people["ada"])
    run = finished(conversation, people["ada"], "m", {"inputTokens": 5, "totalTokens": 5})
    assert (run.status, run.input_tokens, run.cost) == ("completed", 5, None)
    assert "PRICING" in caplog.text
    with pytest.raises(ValueError, match="unknown token kinds"):
        usage.cost_of("m", {}, {"m": {"inputs": 1}})


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_prompt_records_the_agents_model_id_and_cost(settings, people):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0, "PRICING": {"agentapp-offline": {"input": 1, "output": 2}}}
    client = Client(user=people["ada"])
    await client.hello()
    await client.prompt("Calculate 2+2")
    frames = await client.until_finished()
    reported = next(frame for frame in frames if frame["type"] == "result")["result"]["usage"]
    run = await Run.objects.aget()
    assert run.model_id == "agentapp-offline"
    assert run.input_tokens == reported["inputTokens"] > 0
    assert run.cost == Decimal(reported["inputTokens"] * 1 + reported["outputTokens"] * 2) / 1_000_000
    await client.close()


def test_usage_api_sums_per_day_model_conversation_and_user(client, settings, people):
    settings.AGENTAPP = {"PRICING": PRICING}
    ada, bob = people["ada"], people["bob"]
    first = Conversation.objects.create(owner=ada, title="First")
    second = Conversation.objects.create(owner=ada, title="Second")
    finished(first, ada, "big", {"inputTokens": 100, "outputTokens": 10, "totalTokens": 110})
    finished(first, ada, "small", {"inputTokens": 1000, "outputTokens": 100, "totalTokens": 1100}, days_ago=1)
    finished(
        second, ada, "big", {"inputTokens": 200, "outputTokens": 20, "totalTokens": 220, "cacheReadInputTokens": 50}
    )
    finished(second, ada, "other", {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10}, days_ago=2)
    finished(second, ada, "big", {"inputTokens": 9, "totalTokens": 9}, days_ago=40)  # outside the default 30 days
    theirs = Conversation.objects.create(owner=bob)
    finished(theirs, bob, "big", {"inputTokens": 5000, "totalTokens": 5000})

    client.force_login(ada)
    by_model = client.get(URL, {"by": "model"}).json()
    assert by_model["user"] == ada.pk
    models = {group["model"]: group for group in by_model["groups"]}
    assert sorted(models) == ["big", "other", "small"]
    assert (models["big"]["runs"], models["big"]["total_tokens"], models["big"]["cache_read_input_tokens"]) == (
        2,
        330,
        50,
    )
    # big: (300*3 + 30*15 + 50*0.3) / 1e6; small: (1000*0.25 + 100*1.25) / 1e6; other has no price
    assert models["big"]["cost"] == "0.00136500"
    assert models["small"]["cost"] == "0.00037500"
    assert (models["other"]["cost"], models["other"]["unpriced_runs"]) == (None, 1)
    totals = by_model["totals"]
    assert (totals["runs"], totals["total_tokens"], totals["cost"], totals["unpriced_runs"]) == (
        4,
        1440,
        "0.00174000",
        1,
    )

    by_day = client.get(URL, {"by": "day"}).json()["groups"]
    today = timezone.localdate()
    assert [(group["day"], group["total_tokens"]) for group in by_day] == [
        ((today - timedelta(days=2)).isoformat(), 10),
        ((today - timedelta(days=1)).isoformat(), 1100),
        (today.isoformat(), 330),
    ]
    by_conversation = client.get(URL, {"by": "conversation", "since": (today - timedelta(days=60)).isoformat()}).json()
    assert [(g["conversation"], g["title"], g["runs"]) for g in by_conversation["groups"]] == sorted(
        [(str(first.pk), "First", 2), (str(second.pk), "Second", 3)]
    )
    one = client.get(URL, {"conversation": str(first.pk), "since": today.isoformat(), "until": today.isoformat()})
    assert one.json()["totals"]["total_tokens"] == 110

    # Only staff see other users' usage.
    assert client.get(URL, {"user": str(bob.pk)}).status_code == 403
    assert client.get(URL, {"user": "all"}).status_code == 403
    staff = get_user_model().objects.create_user("staff", password=None, is_staff=True)
    client.force_login(staff)
    assert client.get(URL, {"user": str(bob.pk)}).json()["totals"]["total_tokens"] == 5000
    per_user = client.get(URL, {"user": "all", "by": "user"}).json()["groups"]
    assert [(group["user"], group["total_tokens"]) for group in per_user] == [(ada.pk, 1440), (bob.pk, 5000)]


@pytest.mark.parametrize(
    "query",
    [
        {"by": "week"},
        {"since": "2026-13-01"},
        {"since": "2026-1-01"},
        {"until": "yesterday"},
        {"since": "2026-12-03", "until": "2026-12-01"},
        {"since": "2000-01-01", "until": "2026-12-01"},
        {"user": "-1"},
        {"user": "\uff11"},  # a fullwidth digit one
        {"conversation": "nope"},
    ],
)
def test_usage_api_refuses_bad_parameters(client, people, query):
    client.force_login(people["ada"])
    answer = client.get(URL, query)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_parameter"


def test_usage_api_needs_a_login_and_a_get(client, people):
    assert client.get(URL).status_code == 401
    client.force_login(people["ada"])
    assert client.post(URL).status_code == 405
    repeated = client.get(URL + "?by=day&by=model")
    assert (repeated.status_code, repeated.json()["error"]) == (400, "invalid_parameter")


def test_admin_usage_page_charts_the_last_30_days(client, settings, django_user_model, people):
    settings.AGENTAPP = {"PRICING": PRICING}
    conversation = Conversation.objects.create(owner=people["ada"])
    finished(conversation, people["ada"], "big", {"inputTokens": 100, "outputTokens": 10, "totalTokens": 110})
    finished(conversation, people["bob"], "small", {"inputTokens": 40, "totalTokens": 40}, days_ago=3)
    staff = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(staff)
    page = client.get(reverse("admin:agentapp_usagereport_changelist"))
    assert page.status_code == 200
    text = page.content.decode()
    assert text.count("<rect ") == 30  # one bar per day, empty days included
    assert f"{timezone.localdate().isoformat()}: 110 tokens, 1 runs" in text
    assert "<td>big</td>" in text and "<td>small</td>" in text
    narrowed = client.get(reverse("admin:agentapp_usagereport_changelist"), {"user": str(people["bob"].pk)})
    assert "<td>big</td>" not in narrowed.content.decode()
    # The run list shows the new columns.
    runs = client.get(reverse("admin:agentapp_run_changelist"), {"model_id": "big"}).content.decode()
    assert "0.00045000" in runs
