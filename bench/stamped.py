"""A bench-only agent factory whose model writes each text delta's emit time in place of its text.

Served with ``DJANGO_SETTINGS_MODULE=bench.settings_stamped``, every ``data`` frame's text is one
``time.monotonic()`` stamp per delta, so a client on the same machine can tell how long each token took from
the model to its socket (CLOCK_MONOTONIC is system-wide on Linux).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable
from typing import Any

from strands import Agent
from strands.types.streaming import StreamEvent

from agentapp.conf import app_settings
from agentapp.offline_model import OfflineModel
from bench.baseline import build_agent as build_baseline_agent


def stamp() -> str:
    """The current monotonic time as one whitespace-terminated token."""
    return f"{time.monotonic():.6f} "


class StampedModel(OfflineModel):
    """The offline model, with each text delta's text replaced by the time it was emitted (after the pacer)."""

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterable[StreamEvent]:
        """The parent's events, unchanged except for the text of ``contentBlockDelta`` text deltas."""
        async for event in super().stream(*args, **kwargs):
            delta = event.get("contentBlockDelta", {}).get("delta", {})
            if "text" in delta:
                yield {"contentBlockDelta": {**event["contentBlockDelta"], "delta": {**delta, "text": stamp()}}}
            else:
                yield event


def build_agent(conversation: Any, user: Any) -> Agent:
    """An ``AGENT_FACTORY``: agentapp's default agent with the stamped offline model, paced as configured."""
    return build_baseline_agent(float(app_settings.OFFLINE_TOKENS_PER_SECOND), model_class=StampedModel)
