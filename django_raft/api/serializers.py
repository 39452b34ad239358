"""Request and response shapes of the REST API (they also describe it in the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from .. import logview
from ..models import MAX_ADDRESS_LENGTH, MAX_NODE_ID_LENGTH, LogEntry
from ..protocol.request import MAX_TIMEOUT


def _printable(value: str) -> str:
    if not value.isprintable():
        raise serializers.ValidationError("must be printable text")
    return value


class TextField(serializers.CharField):
    """A string, and only a string (DRF's ``CharField`` turns numbers into text)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know: a misspelt option is an error, not ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: "unknown field" for name in unknown})
        return super().to_internal_value(data)


class NodeIdSerializer(StrictSerializer):
    """A member, by id."""

    node_id = TextField(max_length=MAX_NODE_ID_LENGTH, validators=[_printable])


class AddMemberSerializer(NodeIdSerializer):
    """A node to add to the cluster."""

    address = serializers.URLField(max_length=MAX_ADDRESS_LENGTH, help_text="Where peers reach it.")
    role = serializers.ChoiceField(choices=["voter", "learner"], default="voter")


class SnapshotRequestSerializer(StrictSerializer):
    """Which node should take a snapshot (default: the node this process talks to)."""

    node_id = TextField(max_length=MAX_NODE_ID_LENGTH, required=False, validators=[_printable])


class CommandSerializer(StrictSerializer):
    """A registered command to run through the log, as ``django_raft.do(name, **arguments)``."""

    name = TextField(max_length=200, validators=[_printable])
    arguments = serializers.DictField(required=False, default=dict)
    timeout = serializers.FloatField(required=False, min_value=0.001, max_value=MAX_TIMEOUT)


class ErrorSerializer(serializers.Serializer):
    """An error, named like the exception ``do()`` raises."""

    ok = serializers.BooleanField()
    error = serializers.CharField()
    error_type = serializers.CharField()


class ResultSerializer(serializers.Serializer):
    """A successful answer."""

    ok = serializers.BooleanField()
    value = serializers.JSONField(allow_null=True)


class LogEntrySerializer(serializers.ModelSerializer):
    """A log entry, decoded, and its outcome (``applied`` and ``outcome`` need
    ``applied_index`` in the context)."""

    type = serializers.SerializerMethodField()
    preview = serializers.SerializerMethodField()
    size = serializers.SerializerMethodField()
    applied = serializers.SerializerMethodField()
    outcome = serializers.SerializerMethodField(
        help_text='What applying it gave: {"status": "pending"}, {"status": "ok", "result"} '
        '(None when it gave nothing; a result cut for length has "truncated" and '
        '"result_text") or {"status": "error", "error"}.'
    )
    payload = serializers.SerializerMethodField()

    class Meta:
        model = LogEntry
        fields = (
            "index",
            "term",
            "type",
            "command",
            "preview",
            "size",
            "applied",
            "outcome",
            "payload",
        )

    def _described(self, entry: LogEntry) -> dict[str, Any]:
        cache = self.context.setdefault("described", {})
        if entry.index not in cache:
            cache[entry.index] = logview.describe(entry, self.context.get("applied_index", 0))
        described: dict[str, Any] = cache[entry.index]
        return described

    def get_type(self, entry: LogEntry) -> str:
        return str(self._described(entry)["type"])

    def get_preview(self, entry: LogEntry) -> str:
        return str(self._described(entry)["preview"])

    def get_size(self, entry: LogEntry) -> int:
        return int(self._described(entry)["size"])

    def get_applied(self, entry: LogEntry) -> bool:
        return bool(self._described(entry)["applied"])

    def get_outcome(self, entry: LogEntry) -> dict[str, Any]:
        outcome: dict[str, Any] = self._described(entry)["outcome"]
        return outcome

    def get_payload(self, entry: LogEntry) -> dict[str, Any]:
        payload: dict[str, Any] = self._described(entry)["payload"]
        return payload
