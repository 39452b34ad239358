"""Settings of a project without ``ROOT_URLCONF``: the test settings, that one removed.

``raftnode`` serves its own routes (``django_raft.node.http.urlconf``) and must not need it.
"""

from demo_project.settings import *  # noqa: F403

del ROOT_URLCONF  # noqa: F821
