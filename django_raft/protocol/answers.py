"""The answers a node gives a client request, and the errors they name.

A JSON answer is ``{"ok": true, "value": ...}`` or ``{"ok": false, "error": message,
"error_type": name}``; ``ERRORS`` maps every name to the exception a caller gets, and
``failure`` is the one way to build a failing answer. Whether a failure leaves open that
its command was applied follows ``django_raft.exceptions.NOT_APPLIED``.
"""

from __future__ import annotations

from typing import Any

from ..core import (
    DuplicatePeerError,
    MembershipError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
)
from ..exceptions import (
    NOT_APPLIED,
    ClusterUnreachableError,
    CommandFailedError,
    CommandTimeoutError,
    InvalidRequestError,
    LockNotHeldError,
    NodeStoppedError,
    OverloadedError,
    SessionExpiredError,
    StaleTokenError,
)

__all__ = ["ERRORS", "LOST", "failure", "leaves_open", "raise_for", "settled"]

ERRORS: dict[str, type[Exception]] = {
    "ClusterUnreachableError": ClusterUnreachableError,
    "CommandFailedError": CommandFailedError,
    "CommandTimeoutError": CommandTimeoutError,
    "DuplicatePeerError": DuplicatePeerError,
    "InvalidRequestError": InvalidRequestError,
    "LockNotHeldError": LockNotHeldError,
    "MembershipError": MembershipError,
    "NodeStoppedError": NodeStoppedError,
    "NotLeaderError": NotLeaderError,
    "OverloadedError": OverloadedError,
    "ProposalDroppedError": ProposalDroppedError,
    "SessionExpiredError": SessionExpiredError,
    "StaleTokenError": StaleTokenError,
}
"""Every error a caller can get, by the ``error_type`` of a JSON answer."""
LEGACY = {
    "StopError": NodeStoppedError,
    "CommandError": CommandFailedError,
    "UnavailableError": ClusterUnreachableError,
    "BadRequest": InvalidRequestError,
}
"""``error_type`` names older nodes answer with; read, never sent."""
LOST = "; it may have been applied"
"""How an error message ends when the command's outcome is unknown."""


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


def failure(message: str, error_type: str, **extra: Any) -> dict[str, Any]:
    """The JSON answer of a command that failed with ``error_type``."""
    return {"ok": False, "error": message, "error_type": error_type, **extra}


def settled(answer: dict[str, Any], lost: str) -> dict[str, Any]:
    """``answer``, unless it is a failure that proves nothing was applied while an
    earlier attempt may have been (``lost`` says why): then a ``CommandTimeoutError``."""
    if not lost or answer.get("ok") or leaves_open(answer):
        return answer
    return failure(
        f"an earlier attempt may have been applied ({lost}); then: {answer.get('error', '')}",
        "CommandTimeoutError",
    )


def leaves_open(answer: dict[str, Any]) -> bool:
    """Whether a failure answer leaves open that its command was applied."""
    name = str(answer.get("error_type"))
    kind = ERRORS.get(name) or LEGACY.get(name)
    return kind is None or not issubclass(kind, NOT_APPLIED)
