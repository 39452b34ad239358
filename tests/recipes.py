"""The runnable examples of ``docs/recipes.md``, by name, for the tests that run them.

A block is marked ``<!-- recipe: NAME -->`` on the line before its fenced Python code;
the tests run it as written (``exec`` in a namespace they prepare, or in a subprocess).
"""

from __future__ import annotations

import re
from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
_MARKED = re.compile(r"<!-- recipe: (\S+) -->\n```python\n(.*?)```", re.DOTALL)


def recipes() -> dict[str, str]:
    """Every marked block of ``docs/recipes.md`` by name (a name is used once)."""
    found = _MARKED.findall(RECIPES.read_text())
    named = dict(found)
    assert len(named) == len(found), "two recipes share a name"
    return named


def recipe(name: str) -> str:
    """The code of the block marked ``name``."""
    return recipes()[name]
