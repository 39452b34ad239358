"""What runs only inside ``manage.py raftnode``: the node around the consensus core.

``runner`` (the loop that drives ``django_raft.core``), ``storage`` (the log and hard
state in models), ``transport`` (streams to the peers), the apply pipeline
(``applier``, ``statemachine``, ``sessions``, ``outcome``, ``outcome_log``),
``submit`` (a client request on this node: propose or forward), ``dispatch``, ``events``
and ``metrics``, and the HTTP front in ``http``. Nothing outside this package imports it
but the ``raftnode`` command; the client finds a node of its own process through
``django_raft.protocol.local``.
"""
