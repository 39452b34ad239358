"""URL routes of the demo project: the admin and the Raft REST API."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/raft/", include("django_raft.api.urls")),
]
