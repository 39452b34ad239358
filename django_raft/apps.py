"""Django application configuration for django_raft."""

from django.apps import AppConfig


class DjangoRaftConfig(AppConfig):
    """Registers django_raft with Django."""

    name = "django_raft"
    verbose_name = "Raft"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks; forward the signals ``SIGNAL_TASKS`` names."""
        from . import checks  # noqa: F401
        from .conf import raft_settings

        if raft_settings.SIGNAL_TASKS and not raft_settings.coded_problems():
            from .contrib.celery.signals import forward_signals

            forward_signals(raft_settings.SIGNAL_TASKS)
