"""Who may use the API: staff or the app's view permissions to read, change permissions to act."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle

DEFAULT_WRITE_RATE = "60/minute"


class RaftPermission(BasePermission):
    """Reads: a staff user or one with the view's ``read_permission``; writes: ``write_permission``.

    A view names them, e.g. ``read_permission = "django_raft.view_member"`` and
    ``write_permission = "django_raft.change_member"``.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        if request.method in SAFE_METHODS:
            read = getattr(view, "read_permission", "")
            return bool(user.is_staff or (read and user.has_perm(read)))
        write = getattr(view, "write_permission", "")
        return bool(write and user.has_perm(write))


class WriteThrottle(UserRateThrottle):
    """Throttles the write routes per user (scope ``django_raft_write``; 60/minute by default).

    Set ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["django_raft_write"]`` to change it.
    """

    scope = "django_raft_write"

    def get_rate(self) -> str | None:
        rates = getattr(settings, "REST_FRAMEWORK", {}).get("DEFAULT_THROTTLE_RATES", {})
        if self.scope in rates:
            rate: str | None = rates[self.scope]
            return rate
        try:
            return super().get_rate()
        except ImproperlyConfigured:
            return DEFAULT_WRITE_RATE

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return True
        return bool(super().allow_request(request, view))
