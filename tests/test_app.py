"""django_raft is installed in the demo project, passes the system checks and
has no model changes without a migration."""

from io import StringIO

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
