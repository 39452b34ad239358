"""Models of django_raft.

None yet: the log, hard state and snapshot models come with the Django storage.
"""
