"""An agent's own instance of a hook provider of agentapp's, added to the agent the first time it is asked for."""

from __future__ import annotations

import weakref
from typing import TypeVar, cast

from strands import Agent
from strands.hooks import HookProvider

Provider = TypeVar("Provider", bound=HookProvider)

_providers: weakref.WeakKeyDictionary[Agent, dict[type[HookProvider], HookProvider]] = weakref.WeakKeyDictionary()


def attached(agent: Agent, kind: type[Provider]) -> Provider:
    """The agent's ``kind`` hooks: made (``kind()``) and added to the agent once, then the same object each time."""
    providers = _providers.setdefault(agent, {})
    provider = providers.get(kind)
    if provider is None:
        provider = providers[kind] = kind()
        agent.hooks.add_hook(provider)
    return cast(Provider, provider)
