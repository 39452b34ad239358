"""The Django admin of django_raft: a live cluster dashboard, members, the log, snapshots.

It runs in web processes. What it shows about the live cluster comes from the nodes
(``monitor.gather``: every member asked at once, with a short timeout); what it changes
is proposed through Raft (``operations``), never written to the database. The log, the
hard state and the snapshot are read from this node's database, read-only.

Any staff user with the view permissions sees the pages; acting needs
``django_raft.change_member`` (membership, leadership) or
``django_raft.change_snapshot`` (taking a snapshot).
"""

from __future__ import annotations

import json
import math
from typing import Any

import django
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Page, Paginator
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.db.models.functions import Length
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from . import commands, logview, replicated
from .client import monitor, operations, post, raise_for
from .conf import raft_settings
from .core import RaftError
from .management.commands.raftsnapshot import report_line
from .models import AppliedState, HardState, LogEntry, Member, Registration, Snapshot

MEMBER_PERMISSION = "django_raft.change_member"
SNAPSHOT_PERMISSION = "django_raft.change_snapshot"
COUNT_CAP = 10_000
"""A filtered log page counts at most this many matching entries (a filter by command:
``logview.SCAN_MATCHES``, then the page links to the entries before)."""
CHART_WINDOW = 600.0
"""Seconds of a node's history the dashboard's charts show (a node keeps ten minutes)."""


class ReadOnlyAdmin(admin.ModelAdmin):
    """Pages over data that is the node's, not the user's: no add, change or delete."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).using(logview.alias_of(self.model))


def _propose(request: HttpRequest, what: str, call: Any) -> bool:
    """Run one proposal; report its outcome as an admin message; return whether it worked."""
    try:
        call()
    except (RaftError, ValueError, NotImplementedError) as error:
        messages.error(request, f"{what}: failed — {type(error).__name__}: {error}")
        return False
    messages.success(request, f"{what}: done.")
    return True


# http when no scheme is typed; Django 4.2 has no assume_scheme but assumes http.
_ASSUME_HTTP: dict[str, Any] = {"assume_scheme": "http"} if django.VERSION >= (5, 0) else {}


class AddMemberForm(forms.Form):
    """A node to add: its id, its address and whether it votes."""

    node_id = forms.CharField(label="node id", max_length=255)
    address = forms.URLField(
        label="address",
        max_length=2048,
        help_text="Where the other nodes reach it.",
        **_ASSUME_HTTP,
    )
    role = forms.ChoiceField(
        choices=(("voter", "voter"), ("learner", "learner (gets the log, does not vote)")),
        initial="learner",
    )

    def clean_node_id(self) -> str:
        node_id: str = self.cleaned_data["node_id"].strip()
        if not node_id.isprintable():
            raise forms.ValidationError("A node id is printable text.")
        return node_id


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin):
    """Members, the dashboard, and the membership changes proposed through Raft."""

    list_display = ("node_id", "address", "role", "updated_at")
    list_filter = ("role",)
    search_fields = ("node_id", "address")
    readonly_fields = ("node_id", "address", "role", "updated_at")
    actions = ("promote", "remove", "transfer_leadership")
    change_list_template = "admin/django_raft/member/change_list.html"
    change_form_template = "admin/django_raft/member/change_form.html"

    def can_act(self, request: HttpRequest) -> bool:
        """Whether the user may propose membership and leadership changes."""
        return bool(request.user.has_perm(MEMBER_PERMISSION))

    def has_raft_permission(self, request: HttpRequest) -> bool:
        return self.can_act(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.can_act(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Member]:
        return super().get_queryset(request).using(logview.alias_of(self.model))

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        """The stored columns, plus live ones from one ``gather`` for the whole page."""
        rows = {m.node_id: m for m in monitor.gather().members}

        @admin.display(description="state")
        def live_state(member: Member) -> str:
            row = rows.get(member.node_id)
            return row.state if row is not None else "—"

        @admin.display(description="lag")
        def live_lag(member: Member) -> str:
            row = rows.get(member.node_id)
            return "—" if row is None or row.lag is None else str(row.lag)

        return [*self.list_display, live_state, live_lag]

    # -- pages --------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("dashboard/", view(self.dashboard_view), name="django_raft_dashboard"),
            path("dashboard/data/", view(self.dashboard_data), name="django_raft_dashboard_data"),
            *super().get_urls(),
        ]

    def _context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "can_act": self.can_act(request),
        }

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """The cluster table, the charts of a node's recent history, the leader's
        replication progress, events and health."""
        if not self.has_view_permission(request):
            return self._refuse(request)
        cluster = monitor.gather()
        context = {
            **self._context(request, "Raft cluster"),
            "cluster": cluster,
            "history": node_history(cluster, request.GET.get("node", "")),
            "data_url": reverse("admin:django_raft_dashboard_data"),
        }
        return TemplateResponse(request, "admin/django_raft/dashboard.html", context)

    def dashboard_data(self, request: HttpRequest) -> JsonResponse:
        """The dashboard's data as JSON, with the table rendered, for its self-refresh;
        ``?node=ID&since=T``: that node's history samples taken after ``T``."""
        if not self.has_view_permission(request):
            return JsonResponse({"error": "permission denied"}, status=403)
        cluster = monitor.gather()
        html = render_to_string(
            "admin/django_raft/_cluster.html", {"cluster": cluster}, request=request
        )
        history = node_history(cluster, request.GET.get("node", ""), _since(request))
        return JsonResponse({"cluster": cluster.as_dict(), "html": html, "history": history})

    def _refuse(self, request: HttpRequest) -> HttpResponse:
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """A form to propose adding a voter or a learner; nothing is saved here."""
        if not self.can_act(request):
            return self._refuse(request)
        form = AddMemberForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            done = _propose(
                request,
                f"Add {data['node_id']} as a {data['role']}",
                lambda: operations.add_member(data["node_id"], data["address"], data["role"]),
            )
            if done:
                return HttpResponseRedirect(reverse("admin:django_raft_member_changelist"))
        context = {**self._context(request, "Add a member"), "form": form}
        return TemplateResponse(request, "admin/django_raft/member/add.html", context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        cluster = monitor.gather()
        live = next((m for m in cluster.members if m.node_id == object_id), None)
        extra = {
            **(extra_context or {}),
            "live": live,
            "cluster": cluster,
            "can_act": self.can_act(request),
        }
        return super().change_view(request, object_id, form_url, extra)

    # -- actions: each asks for confirmation, then proposes ----------------------------

    def _confirm(
        self, request: HttpRequest, queryset: QuerySet[Member], action: str, question: str
    ) -> HttpResponse:
        context = {
            **self._context(request, "Are you sure?"),
            "question": question,
            "members": list(queryset),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/django_raft/confirm.html", context)

    @admin.action(description="Promote the selected learners to voters", permissions=["raft"])
    def promote(self, request: HttpRequest, queryset: QuerySet[Member]) -> HttpResponse | None:
        if request.POST.get("post") != "yes":
            return self._confirm(request, queryset, "promote", "Promote to voter")
        for member in queryset:
            _propose(
                request, f"Promote {member.node_id}", lambda m=member: operations.promote(m.node_id)
            )
        return None

    @admin.action(description="Remove the selected members from the cluster", permissions=["raft"])
    def remove(self, request: HttpRequest, queryset: QuerySet[Member]) -> HttpResponse | None:
        if request.POST.get("post") != "yes":
            return self._confirm(request, queryset, "remove", "Remove from the cluster")
        for member in queryset:
            _propose(
                request,
                f"Remove {member.node_id}",
                lambda m=member: operations.remove_member(m.node_id),
            )
        return None

    @admin.action(description="Transfer leadership to the selected member", permissions=["raft"])
    def transfer_leadership(
        self, request: HttpRequest, queryset: QuerySet[Member]
    ) -> HttpResponse | None:
        chosen = list(queryset)
        if len(chosen) != 1:
            messages.error(request, "Select exactly one member to transfer leadership to.")
            return None
        if request.POST.get("post") != "yes":
            return self._confirm(request, queryset, "transfer_leadership", "Make leader")
        node_id = chosen[0].node_id
        _propose(
            request,
            f"Transfer leadership to {node_id}",
            lambda: operations.transfer_leadership(node_id),
        )
        return None


def _since(request: HttpRequest) -> float:
    """The ``since`` query parameter: a finite number of seconds, else 0 (everything)."""
    try:
        since = float(request.GET.get("since", "0")[:32])
    except ValueError:
        return 0.0
    return since if math.isfinite(since) else 0.0


def history_member(cluster: monitor.ClusterView, wanted: str = "") -> monitor.MemberView | None:
    """The member whose history the charts show: ``wanted``, else this server's node
    (``ADDRESS``), else the leader, else the first member with an address."""
    members = [m for m in cluster.members if m.address]
    own = raft_settings.ADDRESS.rstrip("/")
    for chosen in (
        next((m for m in members if m.node_id == wanted), None) if wanted else None,
        next((m for m in members if m.address.rstrip("/") == own), None) if own else None,
        next((m for m in members if m.node_id == cluster.leader), None),
        members[0] if members else None,
    ):
        if chosen is not None:
            return chosen
    return None


def node_history(
    cluster: monitor.ClusterView, wanted: str = "", since: float = 0.0
) -> dict[str, Any]:
    """One member's history samples taken after ``since`` (its ``overview`` route), for
    the dashboard's charts; with ``error`` set, and no samples, when it does not answer."""
    member = history_member(cluster, wanted)
    found: dict[str, Any] = {
        "node": member.node_id if member is not None else "",
        "nodes": [m.node_id for m in cluster.members if m.address],
        "window": CHART_WINDOW,
        "samples": [],
        "error": "",
    }
    if member is None:
        found["error"] = "no member with a known address"
        return found
    body = {"timeout": monitor.TIMEOUT, "history": since}
    try:
        value = raise_for(post(member.address, "overview", body, monitor.TIMEOUT - 1.0))
    except Exception as error:  # unreachable, refused, or not a node: the page goes on
        found["error"] = f"{member.node_id} did not answer: {error}"
        return found
    samples = value.get("history") if isinstance(value, dict) else None
    if not isinstance(samples, list):
        found["error"] = f"{member.node_id} keeps no history (an older version)"
        return found
    found["samples"] = samples
    return found


class LogPaginator(Paginator):
    """Pages the log without ``COUNT(*)`` over it.

    The log's indexes have no gaps, so the whole log counts as last - first + 1 from the
    primary key's two ends. A filtered list reads the indexes of its first ``cap``
    matches, newest first, in one scan that stops there: that is its count, and a page's
    entries are then read by primary key from ``rows`` (the list without its filters:
    with them, SQLite may scan their index range again rather than look the rows up).
    """

    def __init__(
        self,
        object_list: Any,
        per_page: int,
        *args: Any,
        rows: QuerySet[Any] | None = None,
        cap: int = COUNT_CAP,
        **kwargs: Any,
    ) -> None:
        super().__init__(object_list, per_page, *args, **kwargs)
        self.rows: QuerySet[Any] = object_list if rows is None else rows
        self.cap = cap

    @cached_property
    def count(self) -> int:
        queryset: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        if not queryset.query.where:
            first, last = logview.log_bounds()
            return 0 if last is None or first is None else last - first + 1
        return len(self.matches)

    @cached_property
    def matches(self) -> list[int]:
        """The indexes of a filtered list's first ``cap`` matches, newest first."""
        queryset: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        return list(queryset.values_list("index", flat=True)[: self.cap])

    def matching(self, start: int, stop: int) -> QuerySet[Any]:
        """Matches ``start`` to ``stop`` (newest first) of a filtered list, by primary key."""
        return self.rows.filter(index__in=self.matches[start:stop])

    def page(self, number: Any) -> Page:
        queryset: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        if not queryset.query.where:
            return super().page(number)
        number = self.validate_number(number)
        start = (number - 1) * self.per_page
        return Page(self.matching(start, start + self.per_page), number, self)


class LogChangeList(ChangeList):
    """The log's list: a filtered one that fits on a page (or is shown whole) is read by
    primary key from the matches already found, not by scanning its window again."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        paginator = self.paginator
        whole = not self.multi_page or (self.show_all and self.can_show_all)
        if isinstance(paginator, LogPaginator) and self.queryset.query.where and whole:
            self.result_list = paginator.matching(0, self.list_max_show_all)


class CommandFilter(admin.SimpleListFilter):
    """Filter by command name, offering the registered commands (no scan of the log)."""

    title = "command"
    parameter_name = "command"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in commands.names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(command=value) if value else queryset


class TermFilter(admin.SimpleListFilter):
    """Filter by term, offering the ten latest terms (from the hard state, no scan)."""

    title = "term"
    parameter_name = "term"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        row = HardState.objects.using(raft_settings.log_database).first()
        current = row.term if row is not None else 0
        return [(str(t), str(t)) for t in range(current, max(0, current - 10), -1)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value and value.isdigit() and len(value) < 20:
            first, last = logview.term_range(int(value))
            return queryset.filter(index__range=(first, last), term=int(value))
        return queryset


class ScanFilter(admin.SimpleListFilter):
    """Where a filter by command starts scanning back (``?before=``); not listed, the
    page links to the next window instead."""

    title = "scan from"
    parameter_name = "before"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset  # LogEntryAdmin.get_queryset applies the window


def _before(request: HttpRequest) -> int | None:
    value = request.GET.get(ScanFilter.parameter_name, "")
    return int(value) if value.isdigit() and len(value) < 20 else None


@admin.register(LogEntry)
class LogEntryAdmin(ReadOnlyAdmin):
    """The Raft log, newest first, decoded; fast on millions of entries."""

    list_display = (
        "index",
        "term",
        "type",
        "command",
        "preview",
        "size",
        "is_applied",
        "outcome_short",
    )
    list_filter = ("type", CommandFilter, TermFilter, ScanFilter)
    search_fields = ("=command",)
    search_help_text = "Search by command name (exact)."
    ordering = ("-index",)
    paginator = LogPaginator
    show_full_result_count = False
    if django.VERSION >= (5, 0):  # Django 4.2 has no facets
        show_facets = admin.ShowFacets.NEVER  # facets count over the whole log
    list_per_page = 50
    fields = ("index", "term", "type", "command", "size", "is_applied", "outcome_whole", "payload")
    readonly_fields = fields
    change_list_template = "admin/django_raft/logentry/change_list.html"

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LogChangeList

    def scan_window(self, request: HttpRequest) -> tuple[int, int] | None:
        """The indexes a filter or search by command scans (``logview.scan_window``);
        None when the page has neither."""
        if not (request.GET.get(CommandFilter.parameter_name) or request.GET.get("q")):
            return None
        return logview.scan_window(_before(request))

    def log_rows(self, request: HttpRequest) -> QuerySet[Any]:
        """Every entry, with its outcome and whether it is applied; no filter."""
        applied = logview.applied_index()
        rows = super().get_queryset(request)
        if logview.outcomes_joined():
            rows = rows.select_related("outcome")
        return rows.annotate(
            applied=ExpressionWrapper(Q(index__lte=applied), output_field=BooleanField())
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        window = self.scan_window(request)
        queryset = self.log_rows(request)
        return queryset if window is None else queryset.filter(index__range=window)

    def get_paginator(
        self, request: HttpRequest, queryset: Any, per_page: int, *args: Any, **kwargs: Any
    ) -> LogPaginator:
        cap = COUNT_CAP if self.scan_window(request) is None else logview.SCAN_MATCHES
        return LogPaginator(
            queryset, per_page, *args, rows=self.log_rows(request), cap=cap, **kwargs
        )

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The list, and for a filter by command which entries were searched, with a link
        to the same search over the entries before them."""
        window = self.scan_window(request)
        response = super().changelist_view(request, {**(extra_context or {}), "raft_scan": None})
        context = getattr(response, "context_data", None)
        if window is None or context is None or "cl" not in context:
            return response
        first, last = window
        paginator = context["cl"].paginator
        capped = isinstance(paginator, LogPaginator) and len(paginator.matches) >= paginator.cap
        if capped:
            first = paginator.matches[-1]  # the scan stopped there
        stored_first = logview.log_bounds()[0]
        older = None
        if stored_first is not None and stored_first < first <= last:
            query = request.GET.copy()
            query.pop("p", None)
            query[ScanFilter.parameter_name] = str(first)
            older = f"?{query.urlencode()}"
        context["raft_scan"] = {
            "first": first,
            "last": last,
            "older": older,
            "window": logview.SCAN_WINDOW,
            "capped": logview.SCAN_MATCHES if capped else 0,
        }
        return response

    @admin.display(description="arguments")
    def preview(self, entry: LogEntry) -> str:
        return logview.preview(logview.decode(entry))

    @admin.display(description="size")
    def size(self, entry: LogEntry) -> int:
        return len(entry.data)

    @admin.display(description="applied", boolean=True)
    def is_applied(self, entry: LogEntry) -> bool:
        return bool(getattr(entry, "applied", False))

    def _outcome(self, entry: LogEntry) -> dict[str, Any]:
        return logview.outcome(entry, entry.index if self.is_applied(entry) else 0)

    @admin.display(description="outcome")
    def outcome_short(self, entry: LogEntry) -> str:
        """The result or the error, in short."""
        described = self._outcome(entry)
        return _outcome_html(described, logview.outcome_preview(described))

    @admin.display(description="outcome")
    def outcome_whole(self, entry: LogEntry) -> str:
        """The result (as JSON) or the error, whole as recorded."""
        described = self._outcome(entry)
        status = described["status"]
        if status == "error":
            text = described["error"]
        elif "result_text" in described:
            text = f"{described['result_text']}… (cut: the result was longer)"
        elif status == "ok" and described["result"] is not None:
            text = json.dumps(described["result"], indent=2, ensure_ascii=False)
        else:
            text = logview.outcome_preview(described)
        return _outcome_html(described, text)

    @admin.display(description="decoded payload")
    def payload(self, entry: LogEntry) -> str:
        decoded = json.dumps(logview.decode(entry), indent=2, ensure_ascii=False)
        return format_html('<pre class="raft-payload">{}</pre>', decoded)


def _outcome_html(described: dict[str, Any], text: str) -> str:
    """An outcome's text, errors in the admin's error colour, pending ones quiet."""
    status = described["status"]
    colour = {"error": "var(--error-fg)", "pending": "var(--body-quiet-color)"}.get(status, "")
    return format_html(
        '<span class="raft-outcome" data-status="{}" style="white-space: pre-wrap; color: {}">'
        "{}</span>",
        status,
        colour or "inherit",
        text,
    )


@admin.register(HardState)
class HardStateAdmin(ReadOnlyAdmin):
    """currentTerm, votedFor and the commit index as persisted on this node."""

    list_display = ("term", "vote", "commit")


@admin.register(AppliedState)
class AppliedStateAdmin(ReadOnlyAdmin):
    """The last entry applied on this node."""

    list_display = ("applied_index", "applied_term")


@admin.register(Snapshot)
class SnapshotAdmin(ReadOnlyAdmin):
    """The latest snapshot (metadata and size), and go-raft's TakeSnapshot on demand."""

    list_display = ("index", "term", "voters", "learners", "size", "compacted_index", "created_at")
    fields = ("index", "term", "voters", "learners", "size", "compacted_index", "created_at")
    readonly_fields = fields
    change_list_template = "admin/django_raft/snapshot/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).defer("data").annotate(data_size=Length("data"))

    @admin.display(description="size (bytes)")
    def size(self, snapshot: Snapshot) -> int:
        return int(getattr(snapshot, "data_size", 0) or 0)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.take_view)
        return [path("take/", view, name="django_raft_snapshot_take"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        can_take = request.user.has_perm(SNAPSHOT_PERMISSION)
        return super().changelist_view(request, {**(extra_context or {}), "can_take": can_take})

    def take_view(self, request: HttpRequest) -> HttpResponse:
        """Confirm, then make our node snapshot now and compact its log."""
        from django.core.exceptions import PermissionDenied

        if not request.user.has_perm(SNAPSHOT_PERMISSION):
            raise PermissionDenied
        if request.method == "POST":
            try:
                report = operations.take_snapshot()
            except (RaftError, ValueError, NotImplementedError) as error:
                messages.error(request, f"Take a snapshot: failed — {error}")
            else:
                line = report_line(report)  # raftsnapshot's words, so both say the same
                messages.success(request, f"{line[0].upper()}{line[1:]}.")
            return HttpResponseRedirect(reverse("admin:django_raft_snapshot_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Take a snapshot now?",
            "question": "Snapshot this node's state now and compact its log",
            "members": [],
            "action": "",
        }
        return TemplateResponse(request, "admin/django_raft/confirm.html", context)


@admin.register(Registration)
class RegistrationAdmin(ReadOnlyAdmin):
    """Who is alive: the live announcements (``django_raft.announce``) on this node's
    database, with how long each lives unrenewed, in log time."""

    list_display = ("key", "value", "holder", "token", "ttl")
    search_fields = ("key", "holder")

    @admin.display(description="TTL (s)", ordering="ttl_ms")
    def ttl(self, registration: Registration) -> str:
        return f"{registration.ttl_ms / 1000:g}"

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        """The stored columns, and when each expires unrenewed, from one look at the
        log time for the whole page."""
        now = replicated.log_time(logview.alias_of(Registration))

        @admin.display(description="expires in (s of log time)", ordering="expires_ms")
        def expires_in(registration: Registration) -> str:
            left = registration.expires_ms - now
            return f"{left / 1000:.1f}" if left > 0 else "expired (to be swept)"

        return [*self.list_display, expires_in]
