"""The key-value pairs in the admin, read-only: they change only through the Raft log."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import KeyValue


@admin.register(KeyValue)
class KeyValueAdmin(admin.ModelAdmin):
    list_display = ("key", "value", "version")
    search_fields = ("key", "value")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
