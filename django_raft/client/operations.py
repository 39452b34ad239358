"""Change the cluster from any process, through Raft: add, promote, remove, transfer, snapshot.

Used by the admin, the REST API and the management commands alike. Every change is a
signed request to the node at ``DJANGO_RAFT['ADDRESS']`` (or to the node named), which
forwards it to the leader; nothing here writes to the database.
"""

from __future__ import annotations

from typing import Any

from .. import core
from ..conf import raft_settings
from ..exceptions import ClusterUnreachableError
from ..protocol.answers import raise_for
from ..protocol.send import post
from .monitor import gather, known_members


def _node_address(address: str | None = None) -> str:
    found = address or raft_settings.ADDRESS
    if not found:
        raise ClusterUnreachableError(
            "no node to ask: set DJANGO_RAFT['ADDRESS'] (RAFT_ADDRESS) to the URL of this"
            " server's node, e.g. http://127.0.0.1:8001"
        )
    return str(found)


def _timeout(timeout: float | None) -> float:
    return float(raft_settings.COMMAND_TIMEOUT if timeout is None else timeout)


def address_of(node_id: str) -> str:
    """Where ``node_id`` is reached: from this node's database and settings, else as the
    live members report it."""
    address = known_members().get(node_id, "")
    if not address:
        member = next((m for m in gather().members if m.node_id == node_id), None)
        address = member.address if member is not None else ""
    if not address:
        raise core.UnknownPeerError(f"{node_id!r} is not a member: no address is known for it")
    return address


def add_member(
    node_id: str, address: str, role: str = "voter", timeout: float | None = None
) -> Any:
    """Propose adding ``node_id`` at ``address`` as a voter or a learner."""
    seconds = _timeout(timeout)
    body = {"node_id": node_id, "address": address, "role": role, "timeout": seconds}
    return raise_for(post(_node_address(), "members", body, seconds))


def promote(node_id: str, timeout: float | None = None) -> Any:
    """Propose making the learner ``node_id`` a voter."""
    return add_member(node_id, address_of(node_id), "voter", timeout)


def remove_member(node_id: str, timeout: float | None = None) -> Any:
    """Propose removing ``node_id`` from the cluster."""
    seconds = _timeout(timeout)
    body = {"node_id": node_id, "remove": True, "timeout": seconds}
    return raise_for(post(_node_address(), "members", body, seconds))


def transfer_leadership(node_id: str, timeout: float | None = None) -> Any:
    """Ask the leader to hand over to the voter ``node_id``; return ``{"leader"}``."""
    seconds = _timeout(timeout)
    body = {"node_id": node_id, "timeout": seconds}
    return raise_for(post(_node_address(), "transfer", body, seconds))


def take_snapshot(node_id: str | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Make one node (default: ours) snapshot now and compact its log; return the report."""
    address = address_of(node_id) if node_id else None
    seconds = _timeout(timeout)
    value = raise_for(post(_node_address(address), "snapshot", {"timeout": seconds}, seconds))
    if not isinstance(value, dict):
        raise ClusterUnreachableError(f"bad snapshot answer {value!r}")
    return value
