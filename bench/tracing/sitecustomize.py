"""Timestamps on the path of a command, for ``bench/path.py``: loaded by every Python
process started with this folder on ``PYTHONPATH`` and ``RAFT_TRACE`` set to a folder.

Each process appends ``<CLOCK_MONOTONIC ns> <tag>`` lines to ``$RAFT_TRACE/<pid>.log``
as django_raft's modules run the stages below; nothing in the package knows of it (the
modules' functions are wrapped as each module is imported). Without ``RAFT_TRACE`` it
does nothing.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_FOLDER = os.environ.get("RAFT_TRACE", "")
_out: Any = None


def mark(tag: str) -> None:
    """Record that this process reached ``tag`` now."""
    global _out
    if _out is None:
        _out = open(os.path.join(_FOLDER, f"{os.getpid()}.log"), "a", buffering=1)  # noqa: SIM115
    _out.write(f"{time.monotonic_ns()} {tag}\n")


def _around(owner: Any, name: str, before: str | None, after: str | None) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            mark(before)
        result = original(*args, **kwargs)
        if after:
            mark(after)
        return result

    setattr(owner, name, wrapper)


def _when(owner: Any, name: str, tag: Callable[..., str | None]) -> None:
    """Mark ``tag(result, *args)`` after each call that gives one (None: no mark)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        found = tag(result, *args)
        if found:
            mark(found)
        return result

    setattr(owner, name, wrapper)


def _kinds(requests: list[Any]) -> str | None:
    if not requests:
        return None
    names = sorted({type(r).__name__ for r in requests})
    return "loop takes " + "+".join(names)


def _runner(module: Any) -> None:
    node = module.RaftNode
    _when(node, "_take", lambda result, *args: _kinds(result))
    _around(node, "_hand_over", "loop hands over to the applier", None)
    _around(node, "_applied", "loop hears applied", None)
    _around(node, "deliver", "peer stream delivers", None)
    _around(node, "read_index", "node asks for a read index", "node has the read index")
    _when(
        node,
        "_send",
        lambda result, self, messages: "loop sends " + messages[0].type.value if messages else None,
    )


def _storage(module: Any) -> None:
    _around(module.DjangoStorage, "persist", "persist starts", "persist ends")


def _applier(module: Any) -> None:
    _around(module.Applier, "_apply", "apply starts", "apply ends")


def _command_streams(module: Any) -> None:
    _around(module, "requests_of", "node reads a client frame", None)
    _around(module._Answers, "put", "answer ready", None)
    _when(module._Answers, "_write_now", lambda result, *args: "answer written" if result else None)


def _command_stream(module: Any) -> None:
    _around(module.CommandStream, "_flush", "client sends", None)
    _around(module.CommandStream, "_deliver", "client receives", None)


def _reads(module: Any) -> None:
    _around(module, "applied_index", "client reads its applied index", None)


def _send(module: Any) -> None:
    _around(module, "post", "client posts", "client has the answer")


def _views(module: Any) -> None:
    _around(module, "command_answer", "node handles the request", "node answered the request")


PATCHES: dict[str, Callable[[Any], None]] = {
    "django_raft.node.runner": _runner,
    "django_raft.node.storage": _storage,
    "django_raft.node.applier": _applier,
    "django_raft.node.http.command_streams": _command_streams,
    "django_raft.protocol.command_stream": _command_stream,
    "django_raft.client.reads": _reads,
    "django_raft.protocol.send": _send,
    "django_raft.node.http.views": _views,
}


class _Patching(importlib.abc.MetaPathFinder):
    """Finds the modules above as usual, and wraps their functions once executed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = PATCHES.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            load(module)
            patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _FOLDER:
    sys.meta_path.insert(0, _Patching())
