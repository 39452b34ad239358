"""The URLconf ``manage.py raftnode`` serves: the Raft routes under the configured prefix.

The node sets it on every request (``server.NodeApplication``): a project needs no
``ROOT_URLCONF`` to run a node, and its own is never used there.
"""

from django.urls import include, path

from ...conf import raft_settings

urlpatterns = [path(raft_settings.URL_PREFIX, include("django_raft.node.http.urls"))]
