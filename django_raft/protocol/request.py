"""What a client request carries: a command's fields, its timeout, the builtin names.

The client builds these bodies and the node parses them (``command_fields``), so both
sides take their rules from here: the names of the builtin commands (sessions, locks,
beat claims, registrations, the clock entry, the read index) and the bounds of a
registration, the bound on a timeout, and how many commands one session may have
outstanding (``MAX_OUTSTANDING``).

A command of a session carries ``client_id``, ``sequence`` and ``first_unanswered``:
the lowest sequence number of that session whose answer the client has not seen yet
(its ack floor, Raft thesis §6.3). Without it the floor is the sequence itself: the
client had one command at a time.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ANNOUNCE",
    "ANNOUNCE_RENEW",
    "ANNOUNCE_WITHDRAW",
    "BEAT_CLAIM",
    "CLOCK",
    "KEEP_ALIVE",
    "LOCK_ACQUIRE",
    "LOCK_RELEASE",
    "MAX_ANNOUNCED_KEY",
    "MAX_ANNOUNCED_VALUE",
    "MAX_ANNOUNCE_TTL_MS",
    "MAX_OUTSTANDING",
    "MAX_RENEWED",
    "MAX_SLOTS_PER_CLAIM",
    "MAX_TIMEOUT",
    "MIN_ANNOUNCE_TTL_MS",
    "OPEN_SESSION",
    "READ_INDEX",
    "TIMEOUT_RULE",
    "command_fields",
    "first_unanswered",
    "valid_timeout",
]

OPEN_SESSION = "django_raft.session.open"
"""Opens a session; arguments ``timeout_ms``; the result is the new client id."""
LOCK_ACQUIRE = "django_raft.lock.acquire"
"""Arguments ``name``, ``ttl_ms`` and ``owner`` (optional: which holder of the session
takes it, since every thread of a process shares one session); the result says whether
the lock was taken, and its token."""
LOCK_RELEASE = "django_raft.lock.release"
"""Arguments ``name``, ``token``, ``owner``; the result says whether the lock was released."""
KEEP_ALIVE = "django_raft.session.keep_alive"
"""Extends a session's life; no arguments."""
BEAT_CLAIM = "django_raft.beat.claim"
"""Arguments ``task``, ``slots`` (increasing ms); the result lists the slots granted."""
MAX_SLOTS_PER_CLAIM = 1000
"""Slots one beat claim may ask for."""
ANNOUNCE = "django_raft.registration.put"
"""Announces a key with a value that lives while its session renews it: arguments
``key``, ``value`` (any JSON value), ``ttl_ms``, and ``lock``/``owner``/``token`` (optional:
a lock the session holds, whose holder may take the key from another session); the
result says whether it was announced, and its token."""
ANNOUNCE_RENEW = "django_raft.registration.renew"
"""Renews a session's registrations and locks in one entry: arguments ``keys`` and
``locks`` (``[name, owner, token, ttl_ms]`` each); the result lists those it lost."""
ANNOUNCE_WITHDRAW = "django_raft.registration.withdraw"
"""Withdraws a session's registration: arguments ``key``, ``token``."""
CLOCK = "django_raft.clock"
"""Carries the leader's clock into the log, so that registrations expire in log time
while nobody writes; no arguments, no session."""
MIN_ANNOUNCE_TTL_MS = 1000
MAX_ANNOUNCE_TTL_MS = 86_400_000
"""The bounds of a registration's time to live (ms)."""
MAX_ANNOUNCED_KEY = 200
"""Characters of a registration's key at most."""
MAX_ANNOUNCED_VALUE = 16_384
"""Characters of a registration's value (its JSON text) at most."""
MAX_RENEWED = 1000
"""Registrations, and locks, one renewal may name at most."""
READ_INDEX = "django_raft.read_index"
"""The read-only command that only waits for a read index, for ``django_raft.read()``."""

MAX_OUTSTANDING = 1024
"""Commands one session may have outstanding: a sequence number at least this far above
the session's ack floor is refused (``OverloadedError``, not applied), so a node keeps at
most this many outcomes per session. A client waits for its floor to move instead of
sending such a number."""

MAX_TIMEOUT = 3600.0
"""Seconds a request, a client or ``COMMAND_TIMEOUT`` may give a command at most."""
TIMEOUT_RULE = f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}]"


def valid_timeout(body: dict[str, Any], default: float) -> float | None:
    """A client request's ``timeout`` (``default`` when absent); None when it breaks
    ``TIMEOUT_RULE``."""
    timeout = body.get("timeout", default)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        return None
    return float(timeout)


def command_fields(body: dict[str, Any]) -> tuple[str, dict[str, Any], str, int] | str:
    """A command body's name, arguments, session id and sequence number, or why the
    body is refused."""
    name, arguments = body.get("name"), body.get("arguments", {})
    client_id, sequence = body.get("client_id", ""), body.get("sequence", 0)
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return "name must be a string, arguments an object"
    if not isinstance(client_id, str) or len(client_id) > 64:
        return "client_id must be a string of at most 64 characters"
    if type(sequence) is not int or sequence < 0 or (client_id and sequence == 0):
        return "sequence must be a positive integer in a session"
    floor = body.get("first_unanswered", 0)
    if type(floor) is not int or not 0 <= floor <= sequence:
        return "first_unanswered must be an integer from 0 to the sequence"
    return name, arguments, client_id, sequence


def first_unanswered(body: dict[str, Any]) -> int:
    """The ack floor of a body ``command_fields`` accepted (0: none given)."""
    return int(body.get("first_unanswered", 0))
