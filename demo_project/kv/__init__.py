"""A replicated key-value store: the demo app of django-raft.

Its ``KeyValue`` rows are changed only by the commands in ``commands.py``, applied on
every node of the cluster in log order, so every node holds the same rows.
"""
