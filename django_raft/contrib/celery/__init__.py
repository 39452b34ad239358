"""Celery on a Raft cluster: a highly available beat (``beat.RaftScheduler``, and
``dbschedule.RaftDatabaseScheduler`` over django-celery-beat's database schedule),
leader-only tasks and asynchronous commands (``tasks``), signals forwarded to tasks.

Needs ``pip install django-raft[celery]`` (``[celery-beat-db]`` for the database schedule).
"""
