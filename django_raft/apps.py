"""Django application configuration for django_raft."""

from django.apps import AppConfig


class DjangoRaftConfig(AppConfig):
    """Registers django_raft with Django."""

    name = "django_raft"
    verbose_name = "Raft"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks."""
        from . import checks  # noqa: F401
