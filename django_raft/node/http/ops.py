"""Operator routes a ``raftnode`` serves beside the client API: overview, transfer, snapshot,
metrics.

``overview``, ``transfer`` and ``snapshot`` are signed like the client routes (the same
check, from ``views``); ``metrics`` answers a plain GET in Prometheus' text format, so a
scraper needs no secret (only the bearer token ``METRICS_TOKEN``, when that is set).
None of them writes anything but through the node's loop.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from prometheus_client import CONTENT_TYPE_LATEST

from ...conf import raft_settings
from ...core import RaftError
from ...exceptions import CommandTimeoutError
from ...protocol.answers import failure
from .. import events, metrics
from ..runner import RaftNode
from ..submit import forward
from .views import _client_request, _error, _running_node, node_id_of


def _bears(authorization: str, token: str) -> bool:
    """Whether an Authorization header carries ``token`` (compared in constant time)."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode()
    )


TRANSFER_WAIT = 2.0
"""Seconds a transfer waits for the new leader to be known before answering."""


@csrf_exempt
@require_POST
def overview(request: HttpRequest) -> JsonResponse:
    """Answer with the node's status, its recent events and when each peer was last heard
    (and with ``{"history": t}``, its samples taken after ``t``: ``history``)."""
    checked = _client_request(request)
    if isinstance(checked, JsonResponse):
        return checked
    payload, node, _ = checked
    value = describe(node)
    if "history" in payload:  # the dashboard's charts: the samples after this time
        since = payload["history"]
        if not isinstance(since, int | float) or isinstance(since, bool):
            return _error(400, "history: the time of the last sample seen (seconds)")
        value["history"] = node.history.since(since)
    return JsonResponse({"ok": True, "value": value})


def describe(node: RaftNode) -> dict[str, Any]:
    """The node's ``status()`` plus its address, the addresses it knows, events, last contacts."""
    now = time.time()
    value = node.status()
    value["address"] = node.address
    value["addresses"] = dict(getattr(node.transport, "addresses", {}))
    value["events"] = events.recent()
    value["last_contact"] = {peer: now - at for peer, at in events.last_contact().items()}
    value["time"] = now
    return value


@csrf_exempt
@require_POST
def transfer(request: HttpRequest) -> JsonResponse:
    """Hand leadership to ``{"node_id"}``; forwarded to the leader; answer the new leader."""
    checked = _client_request(request)
    if isinstance(checked, JsonResponse):
        return checked
    payload, node, timeout = checked
    transferee = node_id_of(payload)
    if isinstance(transferee, JsonResponse):
        return transferee
    deadline = time.monotonic() + timeout
    if node.status().get("state") != "leader":
        return JsonResponse(forward(node, "transfer", payload, deadline))
    try:
        node.transfer_leadership(transferee, timeout)
    except RaftError as error:
        return JsonResponse(failure(error), status=409)
    waited_until = min(deadline, time.monotonic() + TRANSFER_WAIT)
    while time.monotonic() < waited_until and node.status().get("leader") != transferee:
        time.sleep(0.01)
    leader = node.status().get("leader", "")
    if leader != transferee:
        message = f"{transferee} did not take over in time (leader: {leader or 'none'})"
        return JsonResponse(failure(CommandTimeoutError, message), status=409)
    return JsonResponse({"ok": True, "value": {"leader": leader}})


@csrf_exempt
@require_POST
def snapshot(request: HttpRequest) -> JsonResponse:
    """Take a snapshot of this node now and compact its log; answer index, size and time."""
    checked = _client_request(request)
    if isinstance(checked, JsonResponse):
        return checked
    _, node, timeout = checked
    try:
        value = node.take_snapshot(timeout)
    except RaftError as error:
        return JsonResponse(failure(error), status=409)
    except TimeoutError:
        return _error(504, "the snapshot did not finish in time", CommandTimeoutError)
    return JsonResponse({"ok": True, "value": value})


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics of the node running in this process (with ``METRICS_TOKEN``
    set: only for a request that carries it, ``Authorization: Bearer <token>``)."""
    token = raft_settings.METRICS_TOKEN
    if token and not _bears(request.headers.get("Authorization", ""), token):
        response = _error(
            401,
            "the metrics are private: send DJANGO_RAFT['METRICS_TOKEN'] "
            "as a bearer token (Authorization: Bearer ...)",
        )
        response["WWW-Authenticate"] = 'Bearer realm="raft metrics"'
        return response
    node = _running_node()
    if isinstance(node, JsonResponse):
        return node
    return HttpResponse(metrics.exposition(node.status()), content_type=CONTENT_TYPE_LATEST)
