"""Celery on a Raft cluster: a highly available beat (``beat.RaftScheduler``).

Needs ``pip install django-raft[celery]``.
"""
