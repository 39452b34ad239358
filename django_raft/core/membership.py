"""Single-server membership changes: what is valid, and the configuration that results."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import DuplicatePeerError, MembershipError, RemovedPeerError, UnknownPeerError
from .types import ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState


def validate_conf_change(conf_state: ConfState, change: ConfChange) -> None:
    """Raise a ``MembershipError`` if ``change`` makes no sense against ``conf_state``."""
    node_id = change.node_id
    if not isinstance(node_id, str) or not node_id:
        raise MembershipError("a membership change needs a non-empty node id")
    voters, learners = conf_state.voters, conf_state.learners
    if change.type is not ConfChangeType.REMOVE and node_id in conf_state.removed:
        raise RemovedPeerError(
            f"{node_id!r} was removed from the cluster and a removed id never rejoins "
            "(messages from its old incarnation may still arrive): add the node under a new id"
        )
    if change.type is ConfChangeType.ADD_VOTER and node_id in voters:
        raise DuplicatePeerError(f"{node_id!r} is already a voter")
    if change.type is ConfChangeType.ADD_LEARNER:
        if node_id in learners:
            raise DuplicatePeerError(f"{node_id!r} is already a learner")
        if node_id in voters:
            raise DuplicatePeerError(f"{node_id!r} is a voter; remove it to make it a learner")
    if change.type is ConfChangeType.REMOVE:
        if node_id not in voters and node_id not in learners:
            raise UnknownPeerError(f"{node_id!r} is not a member")
        if voters == (node_id,):
            raise MembershipError(f"{node_id!r} is the last voter and cannot be removed")


def apply_conf_change(conf_state: ConfState, change: ConfChange) -> ConfState:
    """Return the membership after ``change``; a change already in effect is a no-op.

    Entries in the log were validated by the leader that appended them, so replaying
    them never fails: it only has to be deterministic on every node.
    """
    node_id = change.node_id
    voters = [v for v in conf_state.voters if v != node_id]
    learners = [n for n in conf_state.learners if n != node_id]
    removed = set(conf_state.removed)
    if change.type is ConfChangeType.ADD_VOTER:
        voters.append(node_id)
        removed.discard(node_id)  # only in logs written before ids were refused reuse
    elif change.type is ConfChangeType.ADD_LEARNER:
        learners.append(node_id)
        removed.discard(node_id)
    elif node_id in conf_state.voters or node_id in conf_state.learners:
        removed.add(node_id)
    return ConfState(
        voters=tuple(sorted(voters)),
        learners=tuple(sorted(learners)),
        removed=tuple(sorted(removed)),
    )


def bootstrap(voters: Iterable[str]) -> tuple[HardState, list[Entry]]:
    """Return the hard state and log a brand-new cluster starts with, on each of its nodes.

    The initial membership is written into the log itself (one committed ADD_VOTER entry
    per voter, in term 1) rather than only into each node's settings, so that a node
    added later learns the whole membership from the log like everything else. Every
    founding node must persist exactly this before its first start.
    """
    if isinstance(voters, str):
        raise MembershipError("bootstrap takes a collection of node ids, not one string")
    members = sorted(set(voters))
    if not members or any(not isinstance(v, str) or not v for v in members):
        raise MembershipError("a cluster is bootstrapped with at least one non-empty node id")
    entries = [
        Entry(
            index=index,
            term=1,
            type=EntryType.CONF_CHANGE,
            data=ConfChange(ConfChangeType.ADD_VOTER, node_id).encode(),
        )
        for index, node_id in enumerate(members, start=1)
    ]
    return HardState(term=1, commit=len(entries)), entries
