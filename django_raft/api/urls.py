"""URLs of the REST API: ``path("api/raft/", include("django_raft.api.urls"))``."""

from django.urls import path

from . import schema, views

app_name = "django_raft_api"

urlpatterns = [
    path("status", views.StatusView.as_view(), name="status"),
    path("members", views.MembersView.as_view(), name="members"),
    path("members/<str:node_id>/promote", views.PromoteView.as_view(), name="promote"),
    path("members/<str:node_id>", views.MemberView.as_view(), name="member"),
    path("leadership-transfer", views.LeadershipTransferView.as_view(), name="transfer"),
    path("snapshot", views.SnapshotView.as_view(), name="snapshot"),
    path("log", views.LogListView.as_view(), name="log"),
    path("log/<int:index>", views.LogEntryView.as_view(), name="entry"),
    path("commands", views.CommandsView.as_view(), name="commands"),
    path("registrations", views.RegistrationsView.as_view(), name="registrations"),
    path("health", views.HealthView.as_view(), name="health"),
    path("schema", schema.view, name="schema"),
]
