"""Django application configuration for agentapp."""

from django.apps import AppConfig


class AgentappConfig(AppConfig):
    """Registers agentapp with Django."""

    name = "agentapp"
    verbose_name = "Agent conversations"
    default_auto_field = "django.db.models.BigAutoField"
