"""The registry of command handlers, and of the hooks that snapshot the replicated state.

Apps register their handlers in their ``AppConfig.ready()``::

    from . import commands

    @commands.command("kv.set")
    def set_value(context: commands.Context, key: str, value: str) -> int:
        ...

A handler is called as ``handler(context, **arguments)`` on every node, for every
committed entry carrying its name, inside a database transaction on
``context.using``; it returns a JSON-serialisable result, or raises to have its
changes rolled back and its error recorded as the command's outcome.

A handler may instead take a whole run of calls at once, to write them with one bulk
statement::

    @commands.command("kv.set", batch=True)
    def set_values(context: commands.Context, calls: Sequence[commands.Call]) -> list[Any]:
        ...

It is called as ``handler(context, calls)`` with consecutive committed calls of its
command (``context.index``/``term`` are those of the first call) and returns one
result per call, in order. It must have the effect of handling the calls one by one,
in order: a call that fails is answered with an exception instance in its place and
must leave no change behind. If the handler raises instead, the whole run is rolled
back and applied again call by call, each call alone in a batch of one. The calls of
client sessions (every ``django_raft.do()``) come together too, once their sessions have
admitted them; should the handler read the log time (``locks.check_token`` does) while
its calls were stamped with different ones, the run is applied again call by call, so
that each call sees its own.

django_raft's own commands (sessions, locks, beat claims, registrations, the clock
entry; named in ``protocol.request``) are builtins: their names are taken in every
process (``is_builtin``), the node registers their handlers when it loads its apply
pipeline, ``reset`` keeps them, and ``names`` leaves them out.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS

from .protocol.request import (
    ANNOUNCE,
    ANNOUNCE_RENEW,
    ANNOUNCE_WITHDRAW,
    BEAT_CLAIM,
    CLOCK,
    KEEP_ALIVE,
    LOCK_ACQUIRE,
    LOCK_RELEASE,
    OPEN_SESSION,
)

__all__ = [
    "Call",
    "Context",
    "Handler",
    "StateHooks",
    "UnknownCommandError",
    "changed",
    "changes_to",
    "check_call",
    "command",
    "get",
    "get_arguments",
    "get_state_hooks",
    "is_batch",
    "is_builtin",
    "is_read_only",
    "names",
    "preserved",
    "register",
    "reset",
    "state_hooks",
]


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler knows about the entry it applies (go-raft's ``Context``).

    ``using`` is the database alias of the node's replicated state: handlers read and
    write through it (``Model.objects.using(context.using)``) so their changes share
    the transaction that records the applied index.
    """

    node_id: str
    index: int
    term: int
    using: str = DEFAULT_DB_ALIAS

    def changed(self, model: type[Any] | str, pk: Any, *, call: Call | None = None) -> None:
        """Tell watches that this command changed row ``pk`` of ``model`` (see ``changed``)."""
        changed(model, pk, call=call)


@dataclass(frozen=True, slots=True)
class Call:
    """One call of a batch handler: the entry's index and term, and the arguments."""

    index: int
    term: int
    arguments: Mapping[str, Any]


Handler = Callable[..., Any]
"""``handler(context, **arguments) -> JSON-serialisable result``; a batch handler is
``handler(context, calls) -> list of results (or exception instances)``."""

F = TypeVar("F", bound=Handler)


@dataclass(frozen=True, slots=True)
class StateHooks:
    """An app's own way to snapshot the replicated state instead of the model dump.

    ``save(using)`` returns the state as bytes; ``restore(data, using)`` replaces the
    state with what ``save`` returned. Both run inside a transaction on ``using``.
    """

    save: Callable[[str], bytes]
    restore: Callable[[bytes, str], None]


class UnknownCommandError(LookupError):
    """No handler is registered under the command's name."""


_changes = threading.local()
"""Where the changes declared on this thread go (``changes_to``): the node's apply
thread sets it while it applies a run."""


def changed(model: type[Any] | str, pk: Any, *, call: Call | None = None) -> None:
    """Tell watches that the entry being applied changed row ``pk`` of ``model`` (a model
    class or its ``"app_label.ModelName"``).

    Saves and deletes of model instances are seen without it (Django's ``post_save`` and
    ``post_delete``); declare the writes that send no signal: ``update()``,
    ``bulk_create()``, ``bulk_update()``, raw SQL. In a batch handler, pass the ``call``
    that made the change, else it counts for every call of the batch. Outside a node's
    apply thread it does nothing.
    """
    record = getattr(_changes, "record", None)
    if record is None:
        return
    label = model.lower() if isinstance(model, str) else model._meta.label_lower
    record(label, str(pk), None if call is None else call.index)


@contextmanager
def changes_to(record: Callable[[str, str, int | None], None]) -> Iterator[None]:
    """Send the changes declared on this thread (``changed``) to ``record(label, pk,
    index or None)`` meanwhile."""
    previous = getattr(_changes, "record", None)
    _changes.record = record
    try:
        yield
    finally:
        _changes.record = previous


_BUILTIN = frozenset(
    (
        OPEN_SESSION,
        KEEP_ALIVE,
        LOCK_ACQUIRE,
        LOCK_RELEASE,
        BEAT_CLAIM,
        ANNOUNCE,
        ANNOUNCE_RENEW,
        ANNOUNCE_WITHDRAW,
        CLOCK,
    )
)
"""The builtin commands' names: reserved wherever the registry is imported, even where
their handlers (the node's) are not."""

_handlers: dict[str, Handler] = {}
_builtin_handlers: dict[str, Handler] = {}
_batch: set[str] = set()
_read_only: set[str] = set()
_arguments: dict[str, Handler] = {}
_state_hooks: StateHooks | None = None


def register(
    name: str,
    handler: Handler,
    *,
    batch: bool = False,
    read_only: bool = False,
    arguments: Handler | None = None,
) -> None:
    """Register ``handler`` for the command ``name`` (a batch handler if ``batch``).

    A ``read_only`` handler only reads: ``django_raft.Client().read(name)`` runs it on
    one node after a ReadIndex round, without a log entry (``django_raft.client.reads``).
    ``arguments``, for a batch handler, is a function whose signature (after the
    context) is that of one call: the leader checks each command's arguments against
    it before proposing (see ``check_call``).

    Registering the same handler again is a no-op (``ready()`` may run twice); a second,
    different handler for a name, or any handler for a builtin's name, is a configuration
    error.
    """
    if not isinstance(name, str) or not name:
        raise ImproperlyConfigured(f"a command name must be a non-empty string, not {name!r}")
    if name in _BUILTIN:
        raise ImproperlyConfigured(
            f"command {name!r} is one of django_raft's builtin commands; "
            f"register {_describe(handler)} under another name"
        )
    if not callable(handler):
        raise ImproperlyConfigured(f"the handler of command {name!r} must be callable")
    if not isinstance(batch, bool) or not isinstance(read_only, bool):
        raise ImproperlyConfigured("batch and read_only must be True or False")
    if batch and read_only:
        raise ImproperlyConfigured(f"command {name!r} cannot be both batch and read-only")
    existing = _handlers.get(name)
    if existing is not None and (existing is not handler or (name in _batch) != batch):
        raise ImproperlyConfigured(
            f"command {name!r} is already handled by {_describe(existing)}; "
            f"cannot register {_describe(handler)} too"
        )
    _handlers[name] = handler
    if batch:
        _batch.add(name)
    if read_only:
        _read_only.add(name)
    if arguments is not None:
        _arguments[name] = arguments


def _register_builtin(name: str, handler: Handler) -> None:
    """Register the node's handler of builtin command ``name`` (``node.sessions`` does).

    Dispatched like an application's handler, it is called as ``handler(context,
    **arguments)`` with the node's richer context and returns the entry's outcome.
    ``reset`` and ``preserved`` keep it.
    """
    if name not in _BUILTIN:
        raise ImproperlyConfigured(f"{name!r} is not the name of a builtin command")
    existing = _builtin_handlers.get(name)
    if existing is not None and existing is not handler:
        raise ImproperlyConfigured(
            f"builtin command {name!r} is already handled by {_describe(existing)}; "
            f"cannot register {_describe(handler)} too"
        )
    _builtin_handlers[name] = _handlers[name] = handler


def command(
    name: str, *, batch: bool = False, read_only: bool = False, arguments: Handler | None = None
) -> Callable[[F], F]:
    """Decorator: register the decorated function as the handler of ``name``.

    With ``batch=True`` it receives runs of calls (see the module's docstring), and
    ``arguments`` may give the signature of one call.
    """

    def decorator(handler: F) -> F:
        register(name, handler, batch=batch, read_only=read_only, arguments=arguments)
        return handler

    return decorator


def is_batch(name: str) -> bool:
    """Whether the handler of ``name`` takes runs of calls."""
    return name in _batch


def is_builtin(name: str) -> bool:
    """Whether ``name`` is one of django_raft's own commands (sessions, locks, beat
    claims, registrations, the clock entry): always session-tracked, and never an
    application's."""
    return name in _BUILTIN


def is_read_only(name: str) -> bool:
    """Whether the handler of ``name`` only reads (runs without a log entry)."""
    return name in _read_only


def get(name: str) -> Handler:
    """Return the handler of ``name``; raise ``UnknownCommandError`` if there is none."""
    try:
        return _handlers[name]
    except KeyError:
        raise UnknownCommandError(f"no handler is registered for command {name!r}") from None


def check_call(name: str, arguments: Mapping[str, Any], size: int, max_size: int) -> None:
    """Refuse, before it is proposed, a command that could only fail on every node.

    Raise ``InvalidRequestError`` when no handler is registered under ``name``, when
    ``arguments`` do not bind to the handler's keyword parameters (for a batch handler,
    to those of the ``arguments`` function it was registered with, if any), or when the
    encoded command
    (``size`` bytes) is over ``max_size``. Such a command never enters the log.
    """
    from .exceptions import InvalidRequestError  # exceptions imports the core; keep it lazy

    if size > max_size:
        raise InvalidRequestError(
            f"command {name!r} is {size} bytes, over MAX_COMMAND_SIZE ({max_size} bytes)"
        )
    handler = _handlers.get(name)
    if handler is None:
        raise InvalidRequestError(f"no handler is registered for command {name!r}")
    if name in _batch:
        handler = _arguments.get(name)
        if handler is None:
            return
    signature = _signature(handler)
    if signature is None:
        return  # a callable without a signature: nothing to check it against
    try:
        signature.bind(None, **arguments)
    except TypeError as error:
        raise InvalidRequestError(f"command {name!r}: {error}") from None


def _signature(handler: Handler) -> inspect.Signature | None:
    """``handler``'s signature, computed once per handler (every proposal checks it)."""
    try:
        return _signature_cached(handler)
    except TypeError:  # not hashable: look at it every time
        return _signature_of(handler)


def _signature_of(handler: Handler) -> inspect.Signature | None:
    try:
        return inspect.signature(handler)
    except (TypeError, ValueError):
        return None


_signature_cached = functools.lru_cache(maxsize=1024)(_signature_of)


def get_arguments(name: str) -> Handler | None:
    """Return the function describing one call of batch command ``name``, if any."""
    return _arguments.get(name)


def names() -> list[str]:
    """Return the names of the applications' registered commands, sorted (no builtin)."""
    return sorted(name for name in _handlers if name not in _BUILTIN)


def state_hooks(save: Callable[[str], bytes], restore: Callable[[bytes, str], None]) -> None:
    """Snapshot the replicated state with ``save``/``restore`` instead of the model dump.

    The pair replaces the dump of ``DJANGO_RAFT["REPLICATED_MODELS"]``; cluster
    membership is still saved and restored by django_raft around it.
    """
    global _state_hooks
    if not callable(save) or not callable(restore):
        raise ImproperlyConfigured("state_hooks() takes two callables: save and restore")
    hooks = StateHooks(save, restore)
    if _state_hooks is not None and _state_hooks != hooks:
        raise ImproperlyConfigured(
            f"state hooks are already set to {_describe(_state_hooks.save)} and "
            f"{_describe(_state_hooks.restore)}"
        )
    _state_hooks = hooks


def get_state_hooks() -> StateHooks | None:
    """Return the hooks set with ``state_hooks``, or None for the model dump."""
    return _state_hooks


def reset() -> None:
    """Forget every application's handler and the state hooks (for tests); the builtins'
    handlers stay."""
    global _state_hooks
    _handlers.clear()
    _handlers.update(_builtin_handlers)
    _batch.clear()
    _read_only.clear()
    _arguments.clear()
    _state_hooks = None


@contextmanager
def preserved() -> Iterator[None]:
    """Restore every registration (handlers, their kinds, state hooks) on exit (for tests);
    a builtin registered meanwhile stays."""
    global _state_hooks
    saved = (
        dict(_handlers),
        set(_batch),
        set(_read_only),
        dict(_arguments),
        _state_hooks,
    )
    try:
        yield
    finally:
        handlers, batch, read_only, arguments, _state_hooks = saved
        _handlers.clear()
        _handlers.update(handlers)
        _handlers.update(_builtin_handlers)
        _batch.clear()
        _batch.update(batch)
        _read_only.clear()
        _read_only.update(read_only)
        _arguments.clear()
        _arguments.update(arguments)


def _describe(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__name__
    return f"{module}.{name}"
