"""The package as a user gets it: one version, a changelog entry for it, classifiers that
match the Django versions tested, and a wheel that installs and runs in a new project."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

import django_raft

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def noxfile_versions() -> list[str]:
    """The Django versions noxfile.py runs the fast tests on."""
    text = (ROOT / "noxfile.py").read_text()
    versions = re.search(r"^VERSIONS = \[(.*)\]$", text, re.MULTILINE)
    assert versions, "noxfile.py lists its Django versions in VERSIONS"
    return re.findall(r'\("(\d+\.\d+)", ', versions[1])


def test_the_version_is_written_once() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "django_raft.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", django_raft.__version__)
    assert django_raft.__version__ not in (ROOT / "setup.py").read_text()


def test_the_changelog_has_an_entry_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.MULTILINE)
    assert headings and headings[0] == django_raft.__version__
    entry = changelog.split("\n## ", 2)[1]
    assert "### Added" in entry and len(entry) > 500


def test_the_classifiers_name_the_django_versions_that_are_tested() -> None:
    tested = noxfile_versions()
    assert tested == ["4.2", "5.2", "6.0"]
    classified = [
        c.rsplit(" :: ", 1)[1]
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Framework :: Django :: [\d.]+", c)
    ]
    assert classified == tested
    django = next(d for d in PROJECT["dependencies"] if d.lower().startswith("django>"))
    low, high = re.fullmatch(r"Django>=([\d.]+),<([\d.]+)", django).groups()  # type: ignore[union-attr]

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    assert key(low) == key(tested[0]) and key(tested[-1]) < key(high) <= (6, 1)
    assert "Typing :: Typed" in PROJECT["classifiers"]
    assert (ROOT / "django_raft" / "py.typed").exists()


def test_the_tools_that_build_and_test_the_package_are_pinned() -> None:
    dev = {
        re.split(r"[=<>\[]", d, maxsplit=1)[0]: d for d in PROJECT["optional-dependencies"]["dev"]
    }
    for tool in ("build", "twine", "nox"):
        assert re.fullmatch(rf"{tool}==[\d.]+", dev[tool]), dev.get(tool)


def test_the_fast_tests_are_listed_once() -> None:
    quick = PYPROJECT["tool"]["django-raft"]["quick-tests"]
    assert all((ROOT / path).exists() for path in quick)
    assert "quick-tests" in (ROOT / "scripts" / "test").read_text()
    assert "quick-tests" in (ROOT / "noxfile.py").read_text()


@pytest.mark.slow
def test_the_wheel_and_the_sdist_build_check_install_and_run(tmp_path: Path) -> None:
    """scripts/package-check: build, twine check, contents, a clean install, a new project."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "package-check"), "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "every template, static file and migration" in result.stdout
    summary = re.search(
        rf"django-raft {re.escape(django_raft.__version__)}: wheel (\d+) KiB, sdist \d+ KiB; "
        r"installed with its dependencies in [\d.]+ s",
        result.stdout,
    )
    assert summary, result.stdout[-2000:]
    assert 50 < int(summary[1]) < 2048  # the package, not a stray folder
    wheel = next((tmp_path / "dist").glob("*.whl"))
    assert wheel.name == f"django_raft-{django_raft.__version__}-py3-none-any.whl"
