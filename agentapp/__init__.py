"""agentapp: a Strands Agents agent behind Django Channels, streamed, persisted and broadcast."""

__version__ = "0.1.0"
