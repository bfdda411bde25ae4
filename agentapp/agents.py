"""Building the agent for a conversation: the configured factory and the default agent (models: providers.py)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from strands import Agent, ModelRetryStrategy

from .approvals import ApprovalHook
from .conf import app_settings
from .providers import bedrock_options, build_model, shared_model

__all__ = ["bedrock_options", "build_agent", "build_default_agent", "build_model", "shared_model"]


def model_retry_options() -> dict[str, Any]:
    """Agent keyword arguments for throttling retries: ``MODEL_RETRY`` (over ``BEDROCK_RETRY`` on Bedrock)."""
    options = {**(app_settings.BEDROCK_RETRY if app_settings.MODEL == "bedrock" else {}), **app_settings.MODEL_RETRY}
    return {"retry_strategy": ModelRetryStrategy(**options)} if options else {}


def build_default_agent(conversation: Any, user: Any) -> Agent:
    """The default agent: the process's shared model, the safe calculator and the allowlisted http_get tool."""
    from .tools import DEFAULT_TOOLS

    return Agent(
        model=shared_model(),
        tools=list(DEFAULT_TOOLS),
        system_prompt=app_settings.SYSTEM_PROMPT,
        callback_handler=None,
        name="agentapp",
        **model_retry_options(),
    )


def agent_factory() -> Any:
    """The callable named by ``AGENTAPP["AGENT_FACTORY"]``."""
    return import_string(app_settings.AGENT_FACTORY)


def build_agent(conversation: Any, user: Any, history: list[dict[str, Any]]) -> Any:
    """Build the conversation's agent with the factory, add the approval hook and give it the stored history.

    Tools named in ``AGENTAPP["APPROVAL_TOOLS"]`` or marked with ``requires_approval`` then pause for approval. A
    Strands Swarm or Graph is returned as built, its agents refusing such tools (``agentapp.multiagent``).
    """
    from .multiagent import is_team, prepare_team

    agent = agent_factory()(conversation, user)
    if is_team(agent):
        return prepare_team(agent)
    if not isinstance(agent, Agent):
        raise ImproperlyConfigured(
            f"{app_settings.AGENT_FACTORY} returned {type(agent).__name__}, not a strands.Agent, Swarm or Graph."
        )
    agent.hooks.add_hook(ApprovalHook(app_settings.APPROVAL_TOOLS))
    agent.messages = history
    return agent
