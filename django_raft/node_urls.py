"""The URLconf ``manage.py raftnode`` serves: the Raft routes under the configured prefix."""

from django.urls import include, path

from .conf import raft_settings

urlpatterns = [path(raft_settings.URL_PREFIX, include("django_raft.urls"))]
