"""The checked-in protobuf modules are exactly what ``scripts/genproto`` makes of the .proto.

The first run installs the pinned generators into ``.venv-genproto/`` (about half a
minute, from the package index); later runs reuse it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENPROTO = ROOT / "scripts" / "genproto"
PROTO = Path("proto") / "django_raft" / "raft.proto"
GENERATED = [Path("django_raft") / "proto" / name for name in ("raft_pb2.py", "raft_pb2.pyi")]


def genproto_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "genproto"), "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_generated_modules_match_the_proto() -> None:
    result = genproto_check(ROOT)
    assert result.returncode == 0, (
        "the checked-in protobuf modules are stale: run scripts/genproto\n"
        f"{result.stdout}{result.stderr}"
    )


def test_the_check_fails_with_a_diff_when_the_proto_changes(tmp_path: Path) -> None:
    # A copy of what the script reads, sharing the generator venv when it exists.
    for relative in [Path("scripts") / "genproto", PROTO, *GENERATED]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, tmp_path / relative)
    if (ROOT / ".venv-genproto").is_dir():
        os.symlink(ROOT / ".venv-genproto", tmp_path / ".venv-genproto")
    proto = tmp_path / PROTO
    proto.write_text(proto.read_text() + "\nmessage Added {\n  uint64 field = 1;\n}\n")

    result = genproto_check(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "+++ django_raft/proto/raft_pb2.py" in result.stdout
    assert "stale" in result.stderr
