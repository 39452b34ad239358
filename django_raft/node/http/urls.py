"""URL routes of a ``raftnode``: include them under ``DJANGO_RAFT['URL_PREFIX']``.

``raftnode`` serves them itself (see ``django_raft.node.http.urlconf``); a project may also
include them to expose the client API from its web processes.
"""

from django.urls import path

from . import ops, views, watches

app_name = "django_raft"

urlpatterns = [
    path("rpc/<str:path>", views.rpc, name="rpc"),
    path("command", views.command, name="command"),
    path("status", views.status, name="status"),
    path("members", views.members, name="members"),
    path(watches.PATH, watches.view, name="watch"),
    path("overview", ops.overview, name="overview"),
    path("transfer", ops.transfer, name="transfer"),
    path("snapshot", ops.snapshot, name="snapshot"),
    path("metrics", ops.metrics_view, name="metrics"),
]
