"""The management commands of django_raft (``raftnode``, ``raftstatus``, ...)."""
