"""Fixtures of the fault suite: FUSE for the power-cut tests."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.faults.power import fuse_problem
from tests.integration.cluster import ROOT


@pytest.fixture(scope="session")
def fuse() -> None:
    """FUSE mounts can be made, or the test is skipped (outside CI) or fails (CI=true).

    Debian's fuse3 is installed by ``scripts/install-fuse`` when fusermount3 is missing.
    """
    if shutil.which("fusermount3") is None and os.path.exists("/dev/fuse"):
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-fuse")],
            capture_output=True,
            timeout=300,
            check=False,
        )
    problem = fuse_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"power cuts need FUSE under CI: {problem}")
        pytest.skip(f"power cuts need FUSE: {problem}")
