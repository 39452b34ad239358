"""The host-loop example in ``rawnode``'s docstring is complete and runs as written."""

from __future__ import annotations

import textwrap

from django_raft.core import rawnode


def example_source() -> str:
    """Return the code block of the module docstring (the indented lines after '::')."""
    doc = rawnode.__doc__
    assert doc is not None
    block = doc.split("::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_host_loop_example_runs() -> None:
    source = example_source()
    assert "storage.persist(ready.hard_state, ready.entries, ready.snapshot)" in source
    assert "read_states" in source
    namespace: dict[str, object] = {}
    exec(compile(source, "rawnode-example", "exec"), namespace)
    assert namespace["state_machine"] == [b"x", b"y"]
