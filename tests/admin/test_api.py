"""The REST API against a live cluster: every route, its permissions, throttling, and a fuzz
run from its own OpenAPI schema (no 5xx; a refused request changes nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client, override_settings
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.generation.modes import GenerationMode

from django_raft.models import SINGLETON, AppliedState, LogEntry
from django_raft.protocol.wire import encode_command
from tests.admin.conftest import wait_leader_is
from tests.integration.cluster import Cluster, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

API = "/api/raft/"


@pytest.fixture(autouse=True)
def fresh_throttles() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def cluster_state(cluster: Cluster) -> tuple[list[str], list[str], int]:
    status = cluster.leader().status()
    return sorted(status["voters"]), sorted(status["learners"]), status["last_index"]


def test_status_lists_every_member_with_one_leader(web: Cluster, viewer: User) -> None:
    response = client_for(viewer).get(API + "status")
    assert response.status_code == 200
    data = response.json()
    assert data["leader"] == web.leader().node_id and data["healthy"] is True
    assert [m["node_id"] for m in data["members"]] == ["n1", "n2", "n3"]
    members = client_for(viewer).get(API + "members").json()
    assert {m["state"] for m in members} == {"leader", "follower"}


def test_reads_need_staff_or_a_view_permission(web: Cluster, db: None) -> None:
    assert client_for(None).get(API + "status").status_code == 403
    plain = User.objects.create_user("plain", password="pw")
    assert client_for(plain).get(API + "status").status_code == 403


def test_writes_need_the_change_permission(web: Cluster, viewer: User) -> None:
    before = cluster_state(web)
    client = client_for(viewer)
    add = {"node_id": "n7", "address": "http://127.0.0.1:1", "role": "learner"}
    assert client.post(API + "members", add, content_type="application/json").status_code == 403
    assert client.delete(API + "members/n2").status_code == 403
    assert client.post(API + "members/n2/promote").status_code == 403
    body = {"node_id": "n2"}
    response = client.post(API + "leadership-transfer", body, content_type="application/json")
    assert response.status_code == 403
    assert client.post(API + "snapshot", {}, content_type="application/json").status_code == 403
    command = {"name": "kv.set", "arguments": {"key": "a", "value": "b"}}
    response = client.post(API + "commands", command, content_type="application/json")
    assert response.status_code == 403
    assert cluster_state(web) == before


def test_token_authentication(web: Cluster, operator: User) -> None:
    token = Token.objects.create(user=operator)
    response = Client().get(API + "status", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200
    response = Client().get(API + "status", HTTP_AUTHORIZATION="Token wrong")
    assert response.status_code in (401, 403)


def test_add_promote_and_remove_a_member(web: Cluster, operator: User) -> None:
    client = client_for(operator)
    address = f"http://127.0.0.1:{free_port()}"
    body = {"node_id": "n8", "address": address, "role": "learner"}
    response = client.post(API + "members", body, content_type="application/json")
    assert response.status_code == 200, response.content
    wait_for(lambda: "n8" in web.leader().status()["learners"], 10, "n8 to learn")
    response = client.post(API + "members/n8/promote")
    assert response.status_code == 200, response.content
    wait_for(lambda: "n8" in web.leader().status()["voters"], 10, "n8 to vote")
    assert client.delete(API + "members/n8").status_code == 200

    def n8_gone() -> bool:
        voters, learners, _ = cluster_state(web)
        return "n8" not in voters + learners

    wait_for(n8_gone, 10, "n8 to leave the membership")


def test_adding_an_existing_member_is_a_conflict(web: Cluster, operator: User) -> None:
    body = {"node_id": "n2", "address": web.nodes["n2"].address, "role": "voter"}
    response = client_for(operator).post(API + "members", body, content_type="application/json")
    assert response.status_code in (200, 409)  # re-adding a voter as a voter is a no-op
    assert sorted(web.leader().status()["voters"]) == ["n1", "n2", "n3"]


def test_leadership_transfer(web: Cluster, operator: User) -> None:
    old = web.leader().node_id
    target = next(n.node_id for n in web.founders if n.node_id != old)
    response = client_for(operator).post(
        API + "leadership-transfer", {"node_id": target}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"ok": True, "value": {"leader": target}}
    wait_leader_is(web, target)
    response = client_for(operator).post(
        API + "leadership-transfer", {"node_id": "stranger"}, content_type="application/json"
    )
    assert response.status_code == 409
    assert response.json()["error_type"] == "UnknownPeerError"


def test_commands_answer_like_do(web: Cluster, operator: User) -> None:
    client = client_for(operator)
    body = {"name": "kv.set", "arguments": {"key": "api", "value": "yes"}}
    response = client.post(API + "commands", body, content_type="application/json")
    assert response.status_code == 200 and response.json()["ok"] is True
    wait_for(lambda: web.nodes["n2"].kv().get("api") == "yes", 10, "n2 to apply it")
    unknown = {"name": "no.such.command", "arguments": {}}
    response = client.post(API + "commands", unknown, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["error_type"] == "InvalidRequestError"  # refused, never proposed
    bad = {"name": "kv.set", "arguments": [1, 2]}
    assert client.post(API + "commands", bad, content_type="application/json").status_code == 400


def test_writes_are_throttled(web: Cluster, operator: User) -> None:
    rates = {"DEFAULT_THROTTLE_RATES": {"django_raft_write": "2/minute"}}
    with override_settings(REST_FRAMEWORK=rates):
        client = client_for(operator)
        codes = [
            client.post(
                API + "leadership-transfer", {"node_id": "x"}, "application/json"
            ).status_code
            for _ in range(3)
        ]
        assert codes == [409, 409, 429]
        assert client.get(API + "status").status_code == 200  # reads are not throttled


def test_health(web: Cluster, db: None) -> None:
    response = Client().get(API + "health")
    assert response.status_code == 200, response.content
    assert response.json()["healthy"] is True
    assert Client().get(API + "health", {"max_lag": "x"}).status_code == 400


def test_health_is_503_when_the_node_is_down(web: Cluster, db: None) -> None:
    with override_settings(
        DJANGO_RAFT={"SECRET": "x", "ADDRESS": f"http://127.0.0.1:{free_port()}"}
    ):
        response = Client().get(API + "health")
    assert response.status_code == 503
    assert response.json()["reason"].startswith("node unreachable")


def _entries(count: int) -> None:
    LogEntry.objects.bulk_create(
        LogEntry(
            index=i,
            term=1 + i // 10,
            command="kv.set",
            data=encode_command("kv.set", {"key": f"k{i}", "value": "v"}),
        )
        for i in range(1, count + 1)
    )
    AppliedState.objects.update_or_create(
        pk=SINGLETON, defaults={"applied_index": max(0, count - 5)}
    )


def test_log_is_cursor_paginated_newest_first(web: Cluster, viewer: User) -> None:
    _entries(120)
    client = client_for(viewer)
    page = client.get(API + "log").json()
    assert "count" not in page
    indexes = [e["index"] for e in page["results"]]
    assert indexes == list(range(120, 70, -1))
    assert page["results"][0]["applied"] is False and page["results"][10]["applied"] is True
    following = client.get(page["next"]).json()
    assert following["results"][0]["index"] == 70
    in_term = client.get(API + "log", {"term": 2}).json()["results"]
    assert sorted(e["index"] for e in in_term) == list(range(10, 20))
    assert client.get(API + "log", {"term": "-1"}).status_code == 400


def test_log_entry_is_decoded(web: Cluster, viewer: User) -> None:
    _entries(3)
    entry = client_for(viewer).get(API + "log/2").json()
    assert entry["payload"] == {
        "kind": "command",
        "name": "kv.set",
        "arguments": {"key": "k2", "value": "v"},
    }
    assert client_for(viewer).get(API + "log/99").status_code == 404


def test_the_schema_describes_every_route(web: Cluster, viewer: User) -> None:
    response = client_for(viewer).get(
        API + "schema", HTTP_ACCEPT="application/vnd.oai.openapi+json"
    )
    assert response.status_code == 200
    paths = set(json.loads(response.content)["paths"])
    expected = {
        "status", "members", "members/{node_id}/promote", "members/{node_id}",
        "leadership-transfer", "snapshot", "log", "log/{index}", "commands", "health",
    }  # fmt: skip
    assert {API + p for p in expected} <= paths


# -- fuzzing from the schema --------------------------------------------------------------


def _schema() -> Any:
    generated = SchemaGenerator().get_schema(request=None, public=True)
    document = json.loads(json.dumps(generated, default=str))
    document["paths"] = {k: v for k, v in document["paths"].items() if k.startswith(API)}
    return schemathesis.openapi.from_dict(document)


def _operations(methods: set[str]) -> list[Any]:
    found = [result.ok() for result in _schema().get_all_operations()]
    return [op for op in found if op.method.upper() in methods and not op.path.endswith("schema")]


def _call(client: Client, case: Any) -> int:
    path = case.formatted_path
    if case.query:
        path += "?" + urlencode(case.query, doseq=True)
    body = case.body
    if isinstance(body, type(schemathesis.core.NOT_SET)):
        data: bytes | str = ""
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body)
    if case.method.upper() == "GET":
        response = client.get(path)
    else:
        method = getattr(client, case.method.lower())
        response = method(path, data=data, content_type="application/json")
    return int(response.status_code)


FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@FUZZ
@given(data=st.data())
def test_fuzz_reads_never_fail_with_a_5xx(web: Cluster, operator: User, data: Any) -> None:
    client = client_for(operator)
    operation = data.draw(st.sampled_from(_READS))
    case = data.draw(operation.as_strategy(GenerationMode.POSITIVE))
    assert _call(client, case) < 500


@FUZZ
@given(data=st.data())
def test_fuzz_refused_writes_change_nothing(web: Cluster, viewer: User, data: Any) -> None:
    before = cluster_state(web)
    operation = data.draw(st.sampled_from(_WRITES))
    mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
    case = data.draw(operation.as_strategy(mode))
    assert _call(client_for(viewer), case) == 403
    assert cluster_state(web) == before


@FUZZ
@given(data=st.data())
def test_fuzz_malformed_writes_are_4xx_and_change_nothing(
    web: Cluster, operator: User, data: Any
) -> None:
    before = cluster_state(web)
    operation = data.draw(st.sampled_from(_BODY_WRITES))
    case = data.draw(operation.as_strategy(GenerationMode.NEGATIVE))
    # No body at all is valid where the body is optional (snapshot: "our node").
    assume(not isinstance(case.body, type(schemathesis.core.NOT_SET)))
    code = _call(client_for(operator), case)
    assert 400 <= code < 500
    assert cluster_state(web) == before


_READS = _operations({"GET"})
_WRITES = _operations({"POST", "DELETE"})
_BODY_WRITES = [op for op in _WRITES if op.method.upper() == "POST" and op.body]
