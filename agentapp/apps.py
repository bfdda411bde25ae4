"""Django application configuration for agentapp."""

from django.apps import AppConfig


class AgentappConfig(AppConfig):
    """Registers agentapp with Django."""

    name = "agentapp"
    verbose_name = "Agent conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Fail at startup, naming the pip extra, when a setting needs an optional package that is missing."""
        from django.conf import settings

        from . import checks  # noqa: F401 (registers agentapp's system checks)
        from .conf import app_settings
        from .extras import check_settings

        check_settings(getattr(settings, "CHANNEL_LAYERS", {}), app_settings.MODEL)
