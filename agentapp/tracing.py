"""Putting the conversation, run and user on a run's OpenTelemetry spans, so a trace backend groups them.

Strands copies an agent's public ``trace_attributes`` onto every span of an invocation (agent, cycle, model and
tool spans). The agent of a connection serves many runs, so the attributes are set again before each one; those a
factory set itself are kept. Spans are only recorded once a tracer provider is configured (docs/tracing.md).
"""

from __future__ import annotations

import logging
from typing import Any

from strands import Agent

logger = logging.getLogger(__name__)

CONVERSATION_ID = "agentapp.conversation_id"
RUN_ID = "agentapp.run_id"
USER_ID = "agentapp.user_id"
# The OpenTelemetry semantic-convention names trace backends (Langfuse, Phoenix, ...) group sessions and users by.
SESSION_ID = "session.id"
ENDUSER_ID = "user.id"


def run_attributes(conversation_id: Any, run_id: Any, user_id: Any) -> dict[str, str]:
    """The attributes of one run's spans; the user ones only for a logged-in user."""
    attributes = {CONVERSATION_ID: str(conversation_id), SESSION_ID: str(conversation_id), RUN_ID: str(run_id)}
    if user_id is not None:
        attributes.update({USER_ID: str(user_id), ENDUSER_ID: str(user_id)})
    return attributes


def tag_run(agent: Agent, conversation_id: Any, run_id: Any, user_id: Any) -> None:
    """Set the run's attributes on the agent before it runs, replacing those of its previous run; never raises."""
    try:
        current = dict(getattr(agent, "trace_attributes", None) or {})
        for key in (CONVERSATION_ID, SESSION_ID, RUN_ID, USER_ID, ENDUSER_ID):
            current.pop(key, None)
        agent.trace_attributes = {**current, **run_attributes(conversation_id, run_id, user_id)}
    except Exception:
        # Traces are a help, not part of the run: an agent that refuses the attributes runs untagged.
        logger.warning("agentapp: could not set the trace attributes of run %s", run_id, exc_info=True)
