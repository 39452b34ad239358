"""Django signals for Raft events, one per go-raft event type.

Every signal is sent by the ``raftnode`` process with ``send_robust`` (a failing receiver
is logged and cannot stop the node), with ``sender=RaftNode`` and these keyword
arguments. Receivers run on the node's signal dispatcher thread (``raft-signals-<id>``),
never on the consensus loop: events reach them in the order they happened, shortly
after; a slow receiver delays only later signals, and when 10,000 events wait, new ones
are dropped with a warning (counted in the status as ``signals_dropped``).

- ``node_id``: the id of the node that saw the event;
- ``value`` and ``prev_value``: the new and the previous value, as listed below.

=============================  ==========================================================
signal                         value / prev_value
=============================  ==========================================================
``state_changed``              role: "follower", "pre-candidate", "candidate", "leader"
``leader_changed``             leader's node id ("" when none is known)
``term_changed``               current term (int)
``committed``                  commit index (int), after the entries were applied
``peer_added``                 the added node's id / None
``peer_removed``               the removed node's id / None
``removed``                    this node's id / None: it was removed from the cluster
``heartbeat``                  the peer that answered a heartbeat (leader only) / None
``heartbeat_interval``         seconds ``peer`` took to answer a heartbeat, above the
                               heartbeat interval / the interval; also a ``peer`` argument
``election_timeout_threshold`` seconds since the leader was last heard from, past the
                               threshold (80 % of the election timeout) / the threshold
=============================  ==========================================================
"""

from __future__ import annotations

import django.dispatch

state_changed = django.dispatch.Signal()
leader_changed = django.dispatch.Signal()
term_changed = django.dispatch.Signal()
committed = django.dispatch.Signal()
peer_added = django.dispatch.Signal()
peer_removed = django.dispatch.Signal()
removed = django.dispatch.Signal()
heartbeat = django.dispatch.Signal()
heartbeat_interval = django.dispatch.Signal()
election_timeout_threshold = django.dispatch.Signal()
