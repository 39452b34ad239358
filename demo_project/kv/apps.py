"""Django application configuration of the demo key-value store."""

from django.apps import AppConfig


class KvConfig(AppConfig):
    """Registers the ``kv.*`` commands with django_raft."""

    name = "demo_project.kv"
    label = "kv"
    verbose_name = "Replicated key-value store"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_raft import commands

        from . import commands as kv_commands

        for name, handler in kv_commands.HANDLERS.items():
            if name in kv_commands.BATCH_HANDLERS:
                commands.register(
                    name, kv_commands.BATCH_HANDLERS[name], batch=True, arguments=handler
                )
            else:
                commands.register(name, handler, read_only=name in kv_commands.READ_ONLY)
