"""Usage and cost: the token kinds a model reports, their price by the ``PRICING`` setting, and sums over runs.

A run stores its model id and each token kind Strands reports in its ``Usage`` (input, output, total, cache read,
cache write) when it ends; its cost is worked out then, so a later price change does not rewrite history.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncDate

from .conf import app_settings
from .models import Run

logger = logging.getLogger(__name__)

# Strands' Usage key -> Run field.
TOKEN_FIELDS: dict[str, str] = {
    "inputTokens": "input_tokens",
    "outputTokens": "output_tokens",
    "totalTokens": "total_tokens",
    "cacheReadInputTokens": "cache_read_input_tokens",
    "cacheWriteInputTokens": "cache_write_input_tokens",
}
# PRICING key (price per million tokens) -> Run field it prices. totalTokens is a sum, never priced.
PRICED_FIELDS: dict[str, str] = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write": "cache_write_input_tokens",
}
MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("0.00000001")
# What ``aggregate`` may group by: the API's ``by`` parameter.
GROUPINGS = ("day", "model", "conversation", "user")
SUMMED = ("input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens", "cache_write_input_tokens")


def model_id_of(agent: Any) -> str:
    """The model id in the agent's Strands model config (``get_config()["model_id"]``), or "" when it has none."""
    try:
        config = agent.model.get_config()
    except Exception:
        return ""
    model_id = config.get("model_id") if isinstance(config, Mapping) else None
    return str(model_id)[:200] if model_id else ""


def token_counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """The Run token fields from a Strands ``Usage`` dict; a kind the model did not report is 0."""
    counts = {}
    for key, field in TOKEN_FIELDS.items():
        value = usage.get(key)
        counts[field] = max(0, int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
    return counts


def _price(value: Any) -> Decimal:
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"PRICING prices must be numbers, not {value!r}") from None
    if not price.is_finite() or price < 0:
        raise ValueError(f"PRICING prices must be finite and not negative, not {value!r}")
    return price


def cost_of(model_id: str, counts: Mapping[str, int], pricing: Mapping[str, Any] | None = None) -> Decimal | None:
    """What these token counts cost on this model by ``PRICING`` (prices per million tokens); None when unpriced."""
    prices = (app_settings.PRICING if pricing is None else pricing).get(model_id)
    if not isinstance(prices, Mapping):
        return None
    unknown = set(prices) - set(PRICED_FIELDS)
    if unknown:
        raise ValueError(f"PRICING[{model_id!r}] has unknown token kinds {sorted(unknown)}; use {list(PRICED_FIELDS)}")
    total = sum(
        (_price(prices[kind]) * counts.get(field, 0) for kind, field in PRICED_FIELDS.items() if kind in prices),
        Decimal(0),
    )
    return (total / MILLION).quantize(COST_PLACES)


def run_usage_fields(model_id: str, usage: Mapping[str, Any]) -> dict[str, Any]:
    """The Run fields ``finish_run`` stores: model id, every token kind and the cost."""
    counts = token_counts(usage)
    try:
        cost = cost_of(model_id, counts)
    except ValueError:
        # A bad PRICING entry must not lose the run's record: it is stored unpriced and the mistake logged.
        logger.exception("agentapp: the PRICING of model %r is invalid; the run is stored without a cost", model_id)
        cost = None
    return {"model_id": model_id[:200], **counts, "cost": cost}


### Sums ###


def _sums() -> dict[str, Any]:
    # Aliases differ from the field names: an aggregate may not shadow the field it sums.
    sums: dict[str, Any] = {f"sum_{field}": Sum(field) for field in SUMMED}
    sums.update(n_runs=Count("pk"), sum_cost=Sum("cost"), n_priced=Count("cost"))
    return sums


def _entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of sums in wire form: integers for tokens and runs, the cost as a decimal string (None: nothing priced)."""
    entry = {field: int(row.get(f"sum_{field}") or 0) for field in SUMMED}
    entry["runs"] = int(row.get("n_runs") or 0)
    entry["unpriced_runs"] = entry["runs"] - int(row.get("n_priced") or 0)
    cost = row.get("sum_cost")
    entry["cost"] = str(Decimal(cost).quantize(COST_PLACES)) if cost is not None else None
    return entry


def totals(runs: QuerySet[Run]) -> dict[str, Any]:
    """Sums over every run of the queryset."""
    return _entry(runs.aggregate(**_sums()))


def aggregate(runs: QuerySet[Run], by: str) -> list[dict[str, Any]]:
    """Sums per ``day`` (in the current time zone), ``model``, ``conversation`` or ``user``, keys in order."""
    if by == "day":
        rows = runs.annotate(key=TruncDate("started_at")).values("key")
    elif by == "model":
        rows = runs.values(key=F("model_id"))
    elif by == "conversation":
        rows = runs.values(key=F("conversation_id"), title=F("conversation__title"))
    elif by == "user":
        rows = runs.values(key=F("user_id"))
    else:
        raise ValueError(f"by must be one of {GROUPINGS}")
    grouped = rows.annotate(**_sums()).order_by("key")
    entries = []
    for row in grouped:
        key = row["key"]
        entry: dict[str, Any] = {
            by: key.isoformat() if isinstance(key, date) else (str(key) if by == "conversation" else key)
        }
        if by == "conversation":
            entry["title"] = row["title"]
        entries.append({**entry, **_entry(row)})
    return entries


def daily_series(runs: QuerySet[Run], first: date, days: int) -> list[dict[str, Any]]:
    """One entry per day from ``first`` for ``days`` days (days with no run included, with zeros)."""
    found = {entry["day"]: entry for entry in aggregate(runs.filter(started_at__date__gte=first), "day")}
    series = []
    for offset in range(days):
        day = date.fromordinal(first.toordinal() + offset).isoformat()
        series.append(found.get(day) or {"day": day, **_entry({})})
    return series
