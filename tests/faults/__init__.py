"""The fault suite: real raftnode processes under faults, their histories checked.

``checker`` (linearizability), ``client`` (the recorded operations), ``proxy`` (a TCP
proxy in front of each node, cutting and slowing links by sender), ``cluster`` (the
nodes), ``nemesis`` (kill, pause, partitions, latency), ``run`` (a seeded run and
``scripts/faults``), ``lazyfs`` and ``power`` (power cuts on a FUSE filesystem that
drops what was not fsynced), ``disk`` (full and failing disks).
"""
