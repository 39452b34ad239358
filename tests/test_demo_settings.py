"""The demo project's settings: DEBUG off unless asked, no built-in key outside development.

Each case imports the settings module in a fresh interpreter with its own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOW = "import demo_project.settings as s; print(s.DEBUG, s.SECRET_KEY == s.INSECURE_SECRET_KEY)"


def load(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RAFT_"))}
    return subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({}, "False True"),  # development on this machine: the built-in key will do
        ({"DJANGO_DEBUG": "1"}, "True True"),
        ({"DJANGO_DEBUG": "yes"}, "False True"),  # only "1" turns it on
        (
            {"DJANGO_ALLOWED_HOSTS": "raft.example.com", "DJANGO_SECRET_KEY": "k" * 50},
            "False False",
        ),
        ({"DJANGO_ALLOWED_HOSTS": "localhost", "DJANGO_SECRET_KEY": "k" * 50}, "False False"),
    ],
)
def test_debug_is_off_by_default_and_a_given_key_is_used(env: dict[str, str], shown: str) -> None:
    result = load(**env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == shown


def test_the_built_in_key_is_refused_outside_development() -> None:
    result = load(DJANGO_ALLOWED_HOSTS="raft.example.com")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "django.core.exceptions.ImproperlyConfigured: DJANGO_SECRET_KEY is not set"
    )
