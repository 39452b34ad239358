"""What applying one entry gave, described the same way on every node."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_ERROR_LENGTH", "Outcome", "describe_error"]

MAX_ERROR_LENGTH = 2000
"""Characters of an error's description kept."""

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one entry gave: ``value`` when ``ok``, else the ``error`` message."""

    ok: bool
    value: Any = None
    error: str = ""


def describe_error(error: BaseException) -> str:
    """Describe ``error`` the same way on every node: class name and message only.

    No traceback, and no memory addresses (``<object at 0x...>``), which differ between
    processes.
    """
    name = type(error).__name__
    try:
        message = _ADDRESS.sub("", str(error))
    except Exception:
        message = ""
    text = f"{name}: {message}" if message else name
    return text[:MAX_ERROR_LENGTH]
