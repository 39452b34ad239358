"""The REST API of django_raft (Django REST framework), for web processes.

Include it from the project's URLconf, e.g. ``path("api/raft/", include("django_raft.api.urls"))``.
Reads ask the nodes (``monitor``) or this node's database (the log); changes are proposed
through Raft (``operations``, ``django_raft.do``).
"""
