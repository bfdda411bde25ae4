"""Building the agent for a conversation: the configured factory, the default agent and its model."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from strands import Agent, ModelRetryStrategy
from strands.models.model import Model

from .approvals import ApprovalHook
from .conf import app_settings


def build_model() -> Model:
    """The model named by ``AGENTAPP["MODEL"]``: the offline model, or Amazon Bedrock through boto3."""
    choice = app_settings.MODEL
    if choice == "offline":
        from .offline_model import OfflineModel

        return OfflineModel(tokens_per_second=float(app_settings.OFFLINE_TOKENS_PER_SECOND))
    if choice == "bedrock":
        from strands.models.bedrock import BedrockModel

        return BedrockModel(**bedrock_options())
    raise ImproperlyConfigured(f"AGENTAPP['MODEL'] must be 'offline' or 'bedrock', not {choice!r}.")


def bedrock_options() -> dict[str, Any]:
    """Keyword arguments for ``BedrockModel`` from the ``BEDROCK_*`` settings; ``BEDROCK_OPTIONS`` wins."""
    options: dict[str, Any] = {"model_id": app_settings.BEDROCK_MODEL_ID, **app_settings.BEDROCK_OPTIONS}
    if app_settings.BEDROCK_REGION and "boto_session" not in options:
        options.setdefault("region_name", app_settings.BEDROCK_REGION)
    if app_settings.BEDROCK_ENDPOINT_URL:
        options.setdefault("endpoint_url", app_settings.BEDROCK_ENDPOINT_URL)
    if app_settings.BEDROCK_CLIENT_CONFIG is not None and "boto_client_config" not in options:
        from botocore.config import Config
        from strands.models.bedrock import DEFAULT_READ_TIMEOUT

        config = {"read_timeout": DEFAULT_READ_TIMEOUT, **app_settings.BEDROCK_CLIENT_CONFIG}
        options["boto_client_config"] = Config(**config)
    return options


def model_retry_options() -> dict[str, Any]:
    """Agent keyword arguments for throttling retries: ``BEDROCK_RETRY`` on Bedrock, strands' default otherwise."""
    if app_settings.MODEL != "bedrock":
        return {}
    return {"retry_strategy": ModelRetryStrategy(**app_settings.BEDROCK_RETRY)}


def build_default_agent(conversation: Any, user: Any) -> Agent:
    """The default agent: the configured model, the safe calculator and the allowlisted http_get tool."""
    from .tools import DEFAULT_TOOLS

    return Agent(
        model=build_model(),
        tools=list(DEFAULT_TOOLS),
        system_prompt=app_settings.SYSTEM_PROMPT,
        callback_handler=None,
        name="agentapp",
        **model_retry_options(),
    )


def agent_factory() -> Any:
    """The callable named by ``AGENTAPP["AGENT_FACTORY"]``."""
    return import_string(app_settings.AGENT_FACTORY)


def build_agent(conversation: Any, user: Any, history: list[dict[str, Any]]) -> Agent:
    """Build the conversation's agent with the factory, add the approval hook and give it the stored history.

    Tools named in ``AGENTAPP["APPROVAL_TOOLS"]`` or marked with ``requires_approval`` then pause for approval.
    """
    agent = agent_factory()(conversation, user)
    if not isinstance(agent, Agent):
        raise ImproperlyConfigured(
            f"{app_settings.AGENT_FACTORY} returned {type(agent).__name__}, not a strands.Agent."
        )
    agent.hooks.add_hook(ApprovalHook(app_settings.APPROVAL_TOOLS))
    agent.messages = history
    return agent
