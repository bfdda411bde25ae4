"""``agent.state`` for AG-UI: what ``preparing.Memory`` saved of it in the conversation (an ``AgentState`` row).

A run's agent starts from the saved state and saves it again when the run ends, so the row read before a run is the
state it starts from, and the row read after its end the state it left. See docs/agui.md.
"""

from __future__ import annotations

from typing import Any

from . import protocol
from .models import AgentState


def saved_state(conversation_id: Any) -> dict[str, Any]:
    """The conversation's saved ``agent.state`` (its most recently saved agent's), ``{}`` if none (database thread)."""
    data = (
        AgentState.objects.filter(conversation_id=conversation_id)
        .order_by("-updated_at")
        .values_list("data", flat=True)
        .first()
    )
    state = data.get("state") if isinstance(data, dict) else None
    return protocol.json_safe(state) if isinstance(state, dict) else {}
