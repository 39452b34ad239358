"""django_raft is installed in the demo project, passes the system checks and
has no model changes without a migration."""

from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command

from django_raft.apps import DjangoRaftConfig


def test_app_is_installed() -> None:
    config = apps.get_app_config("django_raft")
    assert isinstance(config, DjangoRaftConfig)
    assert config.verbose_name == "Raft"


def test_system_checks_pass() -> None:
    # Raises SystemCheckError when any check reports an error.
    call_command("check", stdout=StringIO())


@pytest.mark.django_db  # makemigrations checks the recorded migration history
def test_no_missing_migrations() -> None:
    out = StringIO()
    try:
        call_command("makemigrations", check=True, dry_run=True, stdout=out, stderr=out)
    except SystemExit:
        pytest.fail(f"models changed without a migration:\n{out.getvalue()}")
    assert "No changes detected" in out.getvalue()


def test_raftnode_skips_the_checks_of_what_a_node_never_serves() -> None:
    """A node renders no template, resolves no URL of the project and shows no admin:
    those checks (which import every template tag library, URL module and ModelAdmin)
    are left to ``manage.py check``; the models', the database's and django_raft's run."""
    from django.core import checks as django_checks

    from django_raft import checks
    from django_raft.management.commands.raftnode import Command

    ran: list[str] = []
    registry = django_checks.registry.CheckRegistry()
    for tag in (
        django_checks.Tags.templates,
        django_checks.Tags.urls,
        django_checks.Tags.admin,
        django_checks.Tags.models,
        django_checks.Tags.database,
        checks.TAG,
    ):
        registry.register(_recording(ran, tag), tag)
    registry.run_checks(tags=Command.requires_system_checks, include_deployment_checks=False)
    assert sorted(ran) == sorted(
        [django_checks.Tags.models, django_checks.Tags.database, checks.TAG]
    )


def _recording(ran: list[str], tag: str) -> Any:
    """A check that records its tag in ``ran`` and finds nothing."""

    def check(**kwargs: Any) -> list[Any]:
        ran.append(tag)
        return []

    return check
