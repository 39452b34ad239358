"""The node's HTTP front: the server, its routes, and the command streams it serves.

``server`` (cheroot, with a fast path for the Raft and command routes), ``views`` (Raft
RPCs and the client API), ``ops`` (operator routes), ``command_streams`` (serving
clients' command streams), ``urls`` and ``urlconf`` (the routes, and the URLconf
``raftnode`` serves them with).
"""
