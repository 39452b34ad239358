"""``scripts/genproto --check`` fails, with the diff, when the .proto and the modules differ.

``scripts/test`` runs the check itself on the checked-in modules, with the pinned
generators it installs once into ``.venv-genproto/``; this test runs the script on a
changed copy of the .proto, and is skipped until those generators are installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATORS = ROOT / ".venv-genproto"
PROTO = Path("proto") / "django_raft" / "raft.proto"
GENERATED = [Path("django_raft") / "proto" / name for name in ("raft_pb2.py", "raft_pb2.pyi")]


def genproto_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "genproto"), "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(
    not any(GENERATORS.glob(".installed-*")),
    reason="the pinned protobuf generators are not installed: scripts/test installs them",
)
def test_the_check_fails_with_a_diff_when_the_proto_changes(tmp_path: Path) -> None:
    for relative in [Path("scripts") / "genproto", PROTO, *GENERATED]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, tmp_path / relative)
    os.symlink(GENERATORS, tmp_path / ".venv-genproto")
    unchanged = genproto_check(tmp_path)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    proto = tmp_path / PROTO
    proto.write_text(proto.read_text() + "\nmessage Added {\n  uint64 field = 1;\n}\n")
    result = genproto_check(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "+++ django_raft/proto/raft_pb2.py" in result.stdout
    assert "stale" in result.stderr
