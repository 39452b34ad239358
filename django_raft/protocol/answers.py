"""The answers a node gives a client request, and the errors they name.

A JSON answer is ``{"ok": true, "value": ...}`` or ``{"ok": false, "error": message,
"error_type": name}``. ``ERRORS`` is the one table of names: every error a node may
send, by its class's name in ``django_raft.exceptions``. ``failure`` is the one way to
build a failing answer, from a class of that table or from an exception raised on the
node (named by its nearest class in the table; anything else is a ``NodeServerError``).
Whether a failure leaves open that its command was applied follows
``django_raft.exceptions.NOT_APPLIED``.
"""

from __future__ import annotations

from typing import Any

from .. import exceptions
from ..core import NotLeaderError, RaftError
from ..exceptions import (
    NOT_APPLIED,
    ClusterUnreachableError,
    CommandFailedError,
    CommandTimeoutError,
    InvalidRequestError,
    NodeServerError,
    NodeStoppedError,
)

__all__ = ["ERRORS", "LOST", "failure", "leaves_open", "raise_for", "settled"]

ERRORS: dict[str, type[RaftError]] = {
    name: kind
    for name in exceptions.__all__
    if isinstance(kind := getattr(exceptions, name), type)
    and issubclass(kind, RaftError)
    and kind is not RaftError
}
"""Every error a node may answer with, by the ``error_type`` of its JSON answer."""
LEGACY: dict[str, type[Exception]] = {
    "StopError": NodeStoppedError,
    "CommandError": CommandFailedError,
    "UnavailableError": ClusterUnreachableError,
    "BadRequest": InvalidRequestError,
    "ServerError": NodeServerError,
    "NotFound": InvalidRequestError,
    "MethodNotAllowed": InvalidRequestError,
    "Unsupported": NotImplementedError,
}
"""``error_type`` names older nodes answer with: read, never sent."""
LOST = "; it may have been applied"
"""How an error message ends when the command's outcome is unknown."""


def failure(
    error: type[RaftError] | BaseException, message: str = "", **extra: Any
) -> dict[str, Any]:
    """The JSON answer of a request that failed with ``error``: a class of ``ERRORS``
    (with ``message``), or an exception (its message unless ``message`` is given)."""
    if isinstance(error, type):
        kind: type[BaseException] = error
    else:
        kind = type(error)
        message = message or str(error)
    name = next((c.__name__ for c in kind.__mro__ if ERRORS.get(c.__name__) is c), None)
    if name is None:
        if isinstance(error, type):
            raise TypeError(f"{kind.__name__} is not an error a node may answer with")
        name, message = "NodeServerError", f"{kind.__name__}: {message}"
    return {"ok": False, "error": message, "error_type": name, **extra}


def raise_for(payload: dict[str, Any]) -> Any:
    """Return ``payload["value"]`` or raise the error it describes."""
    if payload.get("ok"):
        return payload.get("value")
    name = str(payload.get("error_type"))
    kind = ERRORS.get(name) or LEGACY.get(name) or RaftError
    message = str(payload.get("error", "unknown error"))
    if kind is NotLeaderError:
        raise NotLeaderError(str(payload.get("leader", "")))
    raise kind(message)


def settled(answer: dict[str, Any], lost: str) -> dict[str, Any]:
    """``answer``, unless it is a failure that proves nothing was applied while an
    earlier attempt may have been (``lost`` says why): then a ``CommandTimeoutError``."""
    if not lost or answer.get("ok") or leaves_open(answer):
        return answer
    return failure(
        CommandTimeoutError,
        f"an earlier attempt may have been applied ({lost}); then: {answer.get('error', '')}",
    )


def leaves_open(answer: dict[str, Any]) -> bool:
    """Whether a failure answer leaves open that its command was applied."""
    name = str(answer.get("error_type"))
    kind = ERRORS.get(name) or LEGACY.get(name)
    return kind is None or not issubclass(kind, NOT_APPLIED)
