"""The fast tests on every supported Django version: ``nox`` (or ``nox -s "django(4.2)"``).

Each version gets a virtualenv of its own in ``.nox/``, made on the first run and reused
afterwards (installed again only when pyproject.toml changes). ``scripts/test`` runs the
4.2 and 6.0 sessions after the whole suite, which runs on the default version (5.2, in
``.venv``). Arguments after ``--`` replace the default pytest arguments:
``nox -s "django(6.0)" -- tests/core -x``.

Django 6.0 needs Python 3.12 or newer: its session looks for one on the ``PATH``, then
among pyenv's versions, and is reported missing (an error under ``CI=true``) without it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = os.environ.get("CI") == "true"

QUICK_TESTS: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
    "django-raft"
]["quick-tests"]
"""The fast tests, as ``scripts/test --quick`` runs them (listed in pyproject.toml)."""


def python_at_least(minor: int) -> str:
    """A working ``python3.N`` (N >= ``minor``): on the ``PATH``, else among pyenv's.

    A pyenv shim that is on the PATH but not enabled fails when run, so each candidate is
    tried; when none works, the bare version is returned for nox to report missing.
    """
    candidates: list[str] = []
    for n in range(minor, 16):
        if found := shutil.which(f"python3.{n}"):
            candidates.append(found)
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    for n in range(minor, 16):
        candidates += sorted(map(str, Path(pyenv_root, "versions").glob(f"3.{n}.*/bin/python3")))
    for candidate in candidates:
        try:
            subprocess.run([candidate, "-c", "pass"], check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        return candidate
    return f"3.{minor}"


DEFAULT_ARGS = ["-n", "2", "-m", "not slow", *QUICK_TESTS]

# Each supported Django version, on the oldest Python it supports here.
VERSIONS = [("4.2", "3.11"), ("5.2", "3.11"), ("6.0", python_at_least(12))]


@nox.session
@nox.parametrize(
    "python,django", [nox.param(python, django, id=django) for django, python in VERSIONS]
)
def django(session: nox.Session, django: str) -> None:
    """``scripts/test --quick``'s tests, ``check`` and the migrations check on one Django."""
    install(session, "-e", ".[test]", f"Django=={django}.*")
    session.run("python", "-c", "import django; print('Django', django.get_version())")
    session.run("python", "manage.py", "check")
    session.run("python", "manage.py", "makemigrations", "--check", "--dry-run")
    session.run("pytest", "-q", "-p", "no:cacheprovider", *(session.posargs or DEFAULT_ARGS))


def install(session: nox.Session, *requirements: str) -> None:
    """``pip install`` once per content of pyproject.toml: a reused virtualenv whose
    stamp matches has everything already, and skips pip's few seconds of checking."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(repr(requirements).encode())
    location = Path(str(session.virtualenv.location))
    stamp = location / f".installed-{digest.hexdigest()[:16]}"
    if stamp.exists():
        return
    session.install(*requirements)
    for old in location.glob(".installed-*"):
        old.unlink()
    stamp.touch()
