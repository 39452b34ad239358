"""The REST API views: cluster status, members, leadership, snapshots, log, commands, health."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import Http404
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import generics, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from .. import logview
from ..client import client, monitor, operations
from ..conf import raft_settings
from ..core import DuplicatePeerError, MembershipError, NotLeaderError, RaftError
from ..exceptions import (
    ClusterUnreachableError,
    CommandFailedError,
    CommandTimeoutError,
    InvalidRequestError,
    NodeServerError,
    NodeStoppedError,
    OverloadedError,
    StaleReadError,
)
from ..protocol.answers import failure
from .permissions import RaftPermission, WriteThrottle
from .schema import extend_schema
from .serializers import (
    AddMemberSerializer,
    CommandSerializer,
    ErrorSerializer,
    LogEntrySerializer,
    NodeIdSerializer,
    ResultSerializer,
    SnapshotRequestSerializer,
)

MEMBER_READ = "django_raft.view_member"
MEMBER_WRITE = "django_raft.change_member"


def _authentication_classes() -> list[type]:
    classes: list[type] = [SessionAuthentication]
    if "rest_framework.authtoken" in settings.INSTALLED_APPS:
        from rest_framework.authentication import TokenAuthentication

        classes.append(TokenAuthentication)
    return classes


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (CommandFailedError, 422),
    (CommandTimeoutError, 504),
    (InvalidRequestError, 422),
    (NotLeaderError, 503),
    (NodeStoppedError, 503),
    (OverloadedError, 503),
    (ClusterUnreachableError, 503),
    (StaleReadError, 503),
    (DuplicatePeerError, 409),
    (MembershipError, 409),
    (RaftError, 409),
    (ValueError, 400),
    (NotImplementedError, 501),
)

_ERROR_RESPONSES = {
    400: ErrorSerializer,
    403: ErrorSerializer,
    409: ErrorSerializer,
    422: ErrorSerializer,
    429: ErrorSerializer,
    501: ErrorSerializer,
    503: ErrorSerializer,
    504: ErrorSerializer,
}


def _answer(call: Callable[[], Any]) -> Response:
    """Run ``call``; answer its value, or the error as ``do()`` would raise it."""
    try:
        value = call()
    except Exception as error:
        for kind, code in _STATUS:
            if isinstance(error, kind):
                return Response(_failure(error), status=code)
        raise
    return Response({"ok": True, "value": value})


def _failure(error: Exception) -> dict[str, Any]:
    """The error answer, named as nodes name it (a bad value is an invalid request)."""
    if isinstance(error, ValueError) and not isinstance(error, RaftError):
        return failure(InvalidRequestError, str(error))
    if isinstance(error, NotImplementedError):
        return failure(NodeServerError, f"not supported by the node: {error}")
    return failure(error)


class RaftAPIView(APIView):
    """Session (and token, when installed) authentication, the app's permissions, throttling."""

    permission_classes = (RaftPermission,)
    throttle_classes = (WriteThrottle,)
    schema = AutoSchema()
    read_permission = MEMBER_READ
    write_permission = MEMBER_WRITE

    def get_authenticators(self) -> list[Any]:
        return [auth() for auth in _authentication_classes()]


class StatusView(RaftAPIView):
    """The cluster table: every member asked at once, health verdict, recent events."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Cluster status")
    def get(self, request: Request) -> Response:
        return Response(monitor.gather().as_dict())


class MembersView(RaftAPIView):
    """List the members (live), or propose adding one."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="List members, live")
    def get(self, request: Request) -> Response:
        return Response(monitor.gather().as_dict()["members"])

    @extend_schema(
        request=AddMemberSerializer,
        responses={200: ResultSerializer, **_ERROR_RESPONSES},
        summary="Propose adding a voter or a learner",
    )
    def post(self, request: Request) -> Response:
        serializer = AddMemberSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        return _answer(
            lambda: operations.add_member(data["node_id"], data["address"], data["role"])
        )


class PromoteView(RaftAPIView):
    """Propose making a learner a voter."""

    @extend_schema(
        request=None,
        responses={200: ResultSerializer, **_ERROR_RESPONSES},
        summary="Promote a learner to voter",
    )
    def post(self, request: Request, node_id: str) -> Response:
        return _answer(lambda: operations.promote(node_id))


class MemberView(RaftAPIView):
    """Propose removing a member."""

    @extend_schema(responses={200: ResultSerializer, **_ERROR_RESPONSES}, summary="Remove a member")
    def delete(self, request: Request, node_id: str) -> Response:
        return _answer(lambda: operations.remove_member(node_id))


class LeadershipTransferView(RaftAPIView):
    """Ask the leader to hand over to a voter."""

    @extend_schema(
        request=NodeIdSerializer,
        responses={200: ResultSerializer, **_ERROR_RESPONSES},
        summary="Transfer leadership",
    )
    def post(self, request: Request) -> Response:
        serializer = NodeIdSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        node_id = serializer.validated_data["node_id"]
        return _answer(lambda: _transfer(node_id))


def _transfer(node_id: str) -> Any:
    """Hand leadership to ``node_id``; nothing to do, and no error, when it already leads
    (as ``rafttransfer`` says): asked first, so the leader is not asked to hand over to
    itself, and again when the leader refused (it may have taken over meanwhile)."""
    if _leader() == node_id:
        return {"leader": node_id}
    try:
        return operations.transfer_leadership(node_id)
    except MembershipError:
        if _leader() == node_id:
            return {"leader": node_id}
        raise


def _leader() -> str:
    """The leader our node knows of ("" when it cannot be asked or knows none)."""
    try:
        return str(client.status().get("leader") or "")
    except RaftError:
        return ""


class SnapshotView(RaftAPIView):
    """Make a node take a snapshot now and compact its log (go-raft's TakeSnapshot)."""

    read_permission = "django_raft.view_snapshot"
    write_permission = "django_raft.change_snapshot"

    @extend_schema(
        request=SnapshotRequestSerializer,
        responses={200: ResultSerializer, **_ERROR_RESPONSES},
        summary="Take a snapshot now",
    )
    def post(self, request: Request) -> Response:
        serializer = SnapshotRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        node_id = serializer.validated_data.get("node_id")
        return _answer(lambda: operations.take_snapshot(node_id))


class LogPagination(CursorPagination):
    """Newest first, by index; no count. A page filtered by command also says which
    entries were searched (``searched``) and where to go on (``older``)."""

    ordering = "-index"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> Any:
        self.scanned: tuple[int, int] | None = getattr(view, "scanned", None)
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data: Any) -> Response:
        response = super().get_paginated_response(data)
        if self.scanned is not None:
            first, last = self.scanned
            stored_first = logview.log_bounds()[0]
            more = stored_first is not None and first <= last and first > stored_first
            older = self.request.build_absolute_uri()
            response.data["searched"] = {"first": first, "last": last}
            response.data["older"] = (
                replace_query_param(
                    remove_query_param(older, self.cursor_query_param), "before", first
                )
                if more
                else None
            )
        return response

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        described = super().get_paginated_response_schema(schema)
        described["properties"]["searched"] = {
            "type": "object",
            "description": "With ?command=: the indexes searched (at most "
            f"{logview.SCAN_WINDOW:,} entries, newest first).",
            "properties": {"first": {"type": "integer"}, "last": {"type": "integer"}},
        }
        described["properties"]["older"] = {
            "type": "string",
            "nullable": True,
            "format": "uri",
            "description": "With ?command=: the same search over the entries before these; "
            "null at the start of the stored log.",
        }
        return described


_LOG_FILTERS = [
    OpenApiParameter("type", OpenApiTypes.INT, description="0 command, 1 membership change"),
    OpenApiParameter(
        "command",
        OpenApiTypes.STR,
        description=f"command name; searches at most {logview.SCAN_WINDOW:,} entries, "
        "newest first (see searched and older in the answer)",
    ),
    OpenApiParameter(
        "before", OpenApiTypes.INT, description="with command: search the entries before this"
    ),
    OpenApiParameter("term", OpenApiTypes.INT, description="term"),
]


class LogMixin:
    """This node's log, read-only, with ``applied_index`` for the serializer."""

    serializer_class = LogEntrySerializer
    read_permission = "django_raft.view_logentry"
    write_permission = ""

    def get_serializer_context(self) -> dict[str, Any]:
        context: dict[str, Any] = super().get_serializer_context()  # type: ignore[misc]
        context["applied_index"] = logview.applied_index()
        return context


class LogListView(LogMixin, RaftAPIView, generics.ListAPIView):
    """The log, newest first, cursor-paginated; filter by type, command, term."""

    pagination_class = LogPagination
    scanned: tuple[int, int] | None = None
    """The indexes a filter by command searches (``logview.scan_window``)."""

    def get_queryset(self) -> Any:
        queryset = logview.entries()
        params = self.request.query_params
        for name in ("type", "term"):
            value = params.get(name)
            if value is not None:
                if not value.isdigit() or len(value) > 19:
                    from rest_framework.exceptions import ValidationError

                    raise ValidationError({name: "must be a non-negative integer"})
                queryset = queryset.filter(**{name: int(value)})
                if name == "term":
                    queryset = queryset.filter(index__range=logview.term_range(int(value)))
        self.scanned = None
        if params.get("command"):
            before = params.get("before")
            if before is not None and (not before.isdigit() or len(before) > 19):
                from rest_framework.exceptions import ValidationError

                raise ValidationError({"before": "must be a non-negative integer"})
            self.scanned = logview.scan_window(int(before) if before is not None else None)
            queryset = queryset.filter(command=params["command"], index__range=self.scanned)
        return queryset

    @extend_schema(parameters=_LOG_FILTERS, summary="The log, newest first")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class LogEntryView(LogMixin, RaftAPIView, generics.RetrieveAPIView):
    """One log entry, with its full decoded payload."""

    lookup_field = "index"

    def get_object(self) -> Any:
        index = self.kwargs["index"]
        entry = logview.entries().filter(index=index).first() if index < 2**63 else None
        if entry is None:
            raise Http404("no such entry in this node's log")
        return entry

    @extend_schema(summary="One log entry, decoded")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class CommandsView(RaftAPIView):
    """Run a registered command through the log; answer its result, or do()'s error."""

    read_permission = "django_raft.view_logentry"
    write_permission = "django_raft.add_logentry"

    @extend_schema(
        request=CommandSerializer,
        responses={200: ResultSerializer, **_ERROR_RESPONSES},
        summary="Submit a command",
    )
    def post(self, request: Request) -> Response:
        serializer = CommandSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        submitter = client.default_client()
        if data.get("timeout"):
            # The same sessions, another deadline: retries stay exactly-once.
            submitter = dataclasses.replace(submitter, timeout=data["timeout"])
        return _answer(lambda: submitter.do(data["name"], **data["arguments"]))


class RegistrationsView(RaftAPIView):
    """Who is alive: the live announcements as this server's database holds them, like
    the log's routes (``django_raft.announcements()`` lists them linearizably)."""

    read_permission = "django_raft.view_registration"

    @extend_schema(
        parameters=[OpenApiParameter("prefix", str, description="Keys starting so (all: '')")],
        responses={200: OpenApiTypes.OBJECT, **_ERROR_RESPONSES},
        summary="Live announcements",
    )
    def get(self, request: Request) -> Response:
        from ..client.registrations import announcements

        prefix = request.query_params.get("prefix", "")
        return _answer(
            lambda: [
                dataclasses.asdict(found) for found in announcements(prefix, stale=True).values()
            ]
        )


class HealthView(APIView):
    """Liveness and readiness: 200 when our node is up and has a leader within the lag budget."""

    permission_classes = (AllowAny,)
    authentication_classes = ()
    throttle_classes = ()
    schema = AutoSchema()

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "max_lag", OpenApiTypes.INT, description="entries the node may be behind"
            )
        ],
        responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT},
        summary="Health for load balancers",
    )
    def get(self, request: Request) -> Response:
        raw = request.query_params.get("max_lag", str(monitor.LAG_BUDGET))
        if not raw.isdigit() or len(raw) > 12:
            return Response({"healthy": False, "reason": "max_lag must be an integer"}, 400)
        budget = int(raw)
        try:
            node = monitor.ask(raft_settings.ADDRESS or "", monitor.TIMEOUT)
        except Exception as error:
            return _unhealthy(f"node unreachable: {error}")
        facts = {k: node.get(k) for k in ("id", "state", "term", "leader", "commit", "applied")}
        if not node.get("leader"):
            return _unhealthy("no leader known", facts)
        lag = int(node.get("commit", 0)) - int(node.get("applied", 0))
        if lag > budget:
            return _unhealthy(f"applied index {lag} entries behind commit (budget {budget})", facts)
        return Response({"healthy": True, "reason": "", **facts, "lag": lag})


def _unhealthy(reason: str, facts: dict[str, Any] | None = None) -> Response:
    body = {"healthy": False, "reason": reason, **(facts or {})}
    return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
