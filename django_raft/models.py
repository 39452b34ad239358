"""Models of django_raft: the durable Raft state of this node, and what it reports.

``LogEntry``, ``HardState``, ``Snapshot`` and ``NodeIdentity`` are written only by
``DjangoStorage``;
``Member``, ``AppliedState`` and ``EntryOutcome`` only by the ``StateMachine``, in the
same transaction as the command handlers' changes. Rows of the single-row models have
the primary key ``SINGLETON``. What a running node reports about itself (state, leader)
is not stored: ask the node with ``django_raft.status()``.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from .core import EntryType

SINGLETON = 1
"""The primary key of the one row of each single-row model."""

MAX_NODE_ID_LENGTH = 255
MAX_ADDRESS_LENGTH = 2048
MAX_COMMAND_LENGTH = 200
MAX_RESULT_LENGTH = 1000
"""A recorded result's JSON is cut to this many characters (``EntryOutcome.truncated``)."""


class SingletonModel(models.Model):
    """A model holding one row, whose primary key is ``SINGLETON``."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON, editable=False)

    class Meta:
        abstract = True


class LogEntry(models.Model):
    """One entry of the Raft log as persisted on this node."""

    class Type(models.IntegerChoices):
        NORMAL = EntryType.NORMAL.value, "command"
        CONF_CHANGE = EntryType.CONF_CHANGE.value, "membership change"

    index = models.PositiveBigIntegerField("index", primary_key=True)
    term = models.PositiveBigIntegerField("term")
    type = models.PositiveSmallIntegerField("type", choices=Type.choices, default=Type.NORMAL)
    command = models.CharField(
        "command",
        max_length=MAX_COMMAND_LENGTH,
        blank=True,
        default="",
        help_text="The command's name, for entries carrying a command; empty otherwise.",
    )
    data = models.BinaryField("data", blank=True, default=b"")

    class Meta:
        verbose_name = "log entry"
        verbose_name_plural = "log entries"
        ordering = ("index",)
        indexes = (
            # Membership changes are read back at startup without scanning the log.
            models.Index(
                fields=["index"],
                condition=Q(type=EntryType.CONF_CHANGE.value),
                name="django_raft_conf_entries",
            ),
        )

    def __str__(self) -> str:
        if self.type == EntryType.CONF_CHANGE:
            what = "membership change"
        else:
            what = self.command or ("no-op" if not self.data else "command")
        return f"#{self.index} (term {self.term}) {what}"


class EntryOutcome(models.Model):
    """What applying a log entry gave, for the entries whose outcome says something.

    Only an error, a result that is not None, rows changed (``changes``, for watches) or
    a command that did not run (``ran``) is recorded: an entry at or below the applied
    index without a row was applied and returned None; one above it is pending.
    Every node records the same rows (the apply is deterministic); they are discarded
    with the log (``DjangoStorage.compact``) and when a snapshot replaces the state.
    """

    entry = models.OneToOneField(
        LogEntry,
        on_delete=models.DO_NOTHING,
        primary_key=True,
        db_column="index",
        db_constraint=False,  # the log is compacted and truncated with raw deletes
        related_name="outcome",
        verbose_name="entry",
    )
    ok = models.BooleanField("succeeded")
    text = models.TextField(
        "result or error",
        blank=True,
        help_text="The result as JSON when it succeeded, else the error message.",
    )
    truncated = models.BooleanField(
        "truncated",
        default=False,
        help_text=f"The result's JSON was cut to {MAX_RESULT_LENGTH} characters.",
    )
    changes = models.TextField(
        "rows changed",
        blank=True,
        default="",
        help_text='The rows the command changed, for watches: a JSON list of ["app_label.'
        'model", "pk"] pairs; empty when none was seen.',
    )
    ran = models.BooleanField(
        "ran",
        default=True,
        help_text="False when the command's session answered it without running it (a "
        "retry of a command already applied) or refused it.",
    )

    class Meta:
        verbose_name = "entry outcome"
        verbose_name_plural = "entry outcomes"

    def __str__(self) -> str:
        return f"#{self.pk} {'ok' if self.ok else 'error'}"


class HardState(SingletonModel):
    """currentTerm, votedFor and the commit index (Figure 2's persistent state)."""

    term = models.PositiveBigIntegerField("term", default=0)
    vote = models.CharField(
        "voted for", max_length=MAX_NODE_ID_LENGTH, blank=True, default="", help_text="Empty: none."
    )
    commit = models.PositiveBigIntegerField("commit index", default=0)

    class Meta:
        verbose_name = "hard state"
        verbose_name_plural = "hard state"

    def __str__(self) -> str:
        vote = self.vote or "nobody"
        return f"term {self.term}, voted for {vote}, commit {self.commit}"


class Snapshot(SingletonModel):
    """The latest snapshot of the state machine, and where the stored log now starts.

    ``compacted_index``/``compacted_term`` name the last entry discarded from the log
    (never past the snapshot); only its term is kept, to check the entry after it.
    """

    index = models.PositiveBigIntegerField("last included index", default=0)
    term = models.PositiveBigIntegerField("last included term", default=0)
    voters = models.JSONField("voters", default=list)
    learners = models.JSONField("learners", default=list)
    removed = models.JSONField("removed ids", default=list)
    data = models.BinaryField("data", blank=True, default=b"")
    created_at = models.DateTimeField("created at", auto_now=True)
    compacted_index = models.PositiveBigIntegerField("log compacted up to", default=0)
    compacted_term = models.PositiveBigIntegerField("term of the last compacted entry", default=0)

    class Meta:
        verbose_name = "snapshot"
        verbose_name_plural = "snapshot"

    def __str__(self) -> str:
        return f"snapshot at #{self.index} (term {self.term})"


class NodeIdentity(SingletonModel):
    """Which node and cluster this database belongs to, recorded at the node's first start.

    A node refuses to start on a database that names another node (or, joining, another
    cluster): two nodes sharing one database would corrupt each other's log.
    ``cluster_id`` is derived from the founding membership (empty when unknown: a node
    started before it was recorded, or one waiting to be added).
    """

    node_id = models.CharField("node id", max_length=MAX_NODE_ID_LENGTH)
    cluster_id = models.CharField("cluster id", max_length=64, blank=True, default="")
    created_at = models.DateTimeField("recorded at", auto_now_add=True)

    class Meta:
        verbose_name = "node identity"
        verbose_name_plural = "node identity"

    def __str__(self) -> str:
        return f"node {self.node_id} of cluster {self.cluster_id or '(unknown)'}"


class Member(models.Model):
    """A member of the cluster, as of the membership changes applied on this node."""

    class Role(models.TextChoices):
        VOTER = "voter", "voter"
        LEARNER = "learner", "learner"

    node_id = models.CharField("node id", max_length=MAX_NODE_ID_LENGTH, primary_key=True)
    address = models.URLField(
        "address", max_length=MAX_ADDRESS_LENGTH, blank=True, help_text="Where its peers reach it."
    )
    role = models.CharField("role", max_length=16, choices=Role.choices)
    updated_at = models.DateTimeField("updated at", auto_now=True)

    class Meta:
        verbose_name = "member"
        verbose_name_plural = "members"
        ordering = ("node_id",)

    def __str__(self) -> str:
        return f"{self.node_id} ({self.role})"


class AppliedState(SingletonModel):
    """The last log entry whose effects are in this database (exactly-once apply)."""

    applied_index = models.PositiveBigIntegerField("applied index", default=0)
    applied_term = models.PositiveBigIntegerField("applied term", default=0)

    class Meta:
        verbose_name = "applied state"
        verbose_name_plural = "applied state"

    def __str__(self) -> str:
        return f"applied up to #{self.applied_index} (term {self.applied_term})"


class ClientSession(models.Model):
    """A client process's session (Raft thesis §6.3): the outcomes its client may still ask for.

    The last command applied (its number and outcome), the client's ack floor (``floor``:
    the lowest sequence number it had not seen answered; lower ones are refused), and
    the outcomes of the other commands from the floor on (``outcomes``: a JSON object
    ``{"sequence": [ok, value JSON, error]}``, usually empty). Written only by the state
    machine, in the transaction that applies the command, so a retried command finds its
    recorded outcome instead of running again.
    """

    client_id = models.CharField("client id", max_length=64, primary_key=True)
    last_sequence = models.PositiveBigIntegerField("last sequence", default=0)
    last_ok = models.BooleanField("last succeeded", default=True)
    last_value = models.TextField("last value (JSON)", blank=True, default="null")
    last_error = models.TextField("last error", blank=True, default="")
    timeout_ms = models.PositiveBigIntegerField("timeout (ms)")
    expires_ms = models.PositiveBigIntegerField("expires (log time, ms)")
    floor = models.PositiveBigIntegerField("first unanswered sequence", default=0)
    outcomes = models.TextField("other outcomes kept (JSON)", blank=True, default="{}")

    class Meta:
        verbose_name = "client session"
        indexes = (models.Index(fields=["expires_ms"], name="django_raft_session_expires"),)

    def __str__(self) -> str:
        return f"session {self.client_id} at {self.last_sequence}"


class LogClock(SingletonModel):
    """The log time: the greatest time a leader stamped on a session-tracked command."""

    time_ms = models.PositiveBigIntegerField("log time (ms)", default=0)
    swept_ms = models.PositiveBigIntegerField("last expiry sweep (ms)", default=0)

    class Meta:
        verbose_name = "log clock"

    def __str__(self) -> str:
        return f"log time {self.time_ms}"


class Lock(models.Model):
    """A lock: its holder's session, its fencing token and when it expires in log time."""

    name = models.CharField("name", max_length=MAX_COMMAND_LENGTH, primary_key=True)
    holder = models.CharField("holder's client id", max_length=64, blank=True, default="")
    token = models.PositiveBigIntegerField("fencing token", default=0)
    expires_ms = models.PositiveBigIntegerField("expires (log time, ms)", default=0)

    class Meta:
        verbose_name = "lock"

    def __str__(self) -> str:
        return f"lock {self.name} (token {self.token})"


class BeatTask(models.Model):
    """A periodic task's last slot claimed through the log (the Celery Raft scheduler)."""

    name = models.CharField("task name", max_length=MAX_COMMAND_LENGTH, primary_key=True)
    last_slot_ms = models.PositiveBigIntegerField("last slot claimed (ms since the epoch)")

    class Meta:
        verbose_name = "periodic task slot"

    def __str__(self) -> str:
        return f"{self.name} at {self.last_slot_ms}"


class Registration(models.Model):
    """A key announced by a client session, alive while the session renews it.

    Gone, on every node at the same entry, once the log time passes ``expires_ms`` or its
    session expires (etcd's leases, ZooKeeper's ephemeral nodes). ``token`` is the index
    of the entry that announced it (for an election's, the leader's fencing token).
    Written only by the state machine; renewals move ``expires_ms`` without a save, so
    watches see announcements, changes of value and removals, not keep-alives.
    """

    key = models.CharField("key", max_length=MAX_COMMAND_LENGTH, primary_key=True)
    value = models.TextField("value (JSON)", default="null")
    holder = models.CharField("holder's client id", max_length=64)
    ttl_ms = models.PositiveBigIntegerField("time to live (ms)")
    expires_ms = models.PositiveBigIntegerField("expires (log time, ms)")
    token = models.PositiveBigIntegerField("token")

    class Meta:
        verbose_name = "registration"
        indexes = (models.Index(fields=["expires_ms"], name="django_raft_registration_exp"),)

    def __str__(self) -> str:
        return f"{self.key} (held by session {self.holder})"
