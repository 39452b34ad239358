"""An ASGI web process of one server, run by uvicorn in tests/integration/test_asgi.py
and bench/asgi: async views on ``ado``/``aread``/``alock``, and the same operations as
sync views for comparison.

    DJANGO_SETTINGS_MODULE=tests.integration.asgi_settings \\
        uvicorn tests.integration.asgi_app:application

Every view answers JSON: ``{"ok": true, "value": ...}``, or ``{"ok": false, "error": name,
"may_have_applied": bool}`` for a ``RaftError``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

import django_raft
from django_raft.exceptions import RaftError, may_have_applied

application = get_asgi_application()

_holders = 0
_most_holders = 0


def _answer(call: Callable[[], Any]) -> JsonResponse:
    try:
        return JsonResponse({"ok": True, "value": call()})
    except RaftError as error:
        return JsonResponse(_failure(error))


def _failure(error: RaftError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": type(error).__name__,
        "message": str(error),
        "may_have_applied": may_have_applied(error),
    }


async def _async_answer(call: Callable[[], Awaitable[Any]]) -> JsonResponse:
    try:
        return JsonResponse({"ok": True, "value": await call()})
    except RaftError as error:
        return JsonResponse(_failure(error))


async def ping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "value": "pong", "threads": threading.active_count()})


async def incr(request: HttpRequest) -> JsonResponse:
    return await _async_answer(lambda: django_raft.ado("kv.incr", key=request.GET["key"]))


async def put(request: HttpRequest) -> JsonResponse:
    key, value = request.GET["key"], request.GET.get("value", "1")
    return await _async_answer(lambda: django_raft.ado("kv.set", key=key, value=value))


async def read(request: HttpRequest) -> JsonResponse:
    from demo_project.kv.models import KeyValue

    async def fresh() -> Any:
        async with django_raft.aread(timeout=float(request.GET.get("within", "5"))):
            rows = KeyValue.objects.filter(key=request.GET["key"])
            return await rows.values_list("value", flat=True).afirst()

    return await _async_answer(fresh)


async def locked(request: HttpRequest) -> JsonResponse:
    """Hold lock ``name`` for ``hold`` seconds; the token, and the most holders this
    process saw at once inside such blocks."""

    async def hold() -> Any:
        global _holders, _most_holders
        name, ttl = request.GET["name"], float(request.GET.get("ttl", "5"))
        async with django_raft.alock(name, ttl=ttl, timeout=20) as token:
            _holders += 1
            _most_holders = max(_most_holders, _holders)
            try:
                await asyncio.sleep(float(request.GET.get("hold", "0.02")))
            finally:
                _holders -= 1
            return {"token": token, "most_holders": _most_holders}

    return await _async_answer(hold)


async def burst(request: HttpRequest) -> JsonResponse:
    """``count`` increments of ``key`` at once from one request; the values, and the
    process's threads before and at most while they were in flight (sampled each
    millisecond). Django's ASGI handler gives each request a thread of its own for its
    sync signal receivers, so only calls within one request show the client's threads."""
    key, count = request.GET["key"], int(request.GET.get("count", "64"))
    before = most = threading.active_count()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, threading.active_count())
            await asyncio.sleep(0.001)

    sampler = asyncio.create_task(sample())
    try:
        values = await asyncio.gather(*(django_raft.ado("kv.incr", key=key) for _ in range(count)))
    finally:
        done.set()
        await sampler
    return JsonResponse({"ok": True, "value": values, "threads": [before, most]})


def sync_incr(request: HttpRequest) -> JsonResponse:
    """A sync view: Django runs it in a thread of its request's own."""
    return _answer(lambda: django_raft.do("kv.incr", key=request.GET["key"]))


def sync_put(request: HttpRequest) -> JsonResponse:
    key, value = request.GET["key"], request.GET.get("value", "1")
    return _answer(lambda: django_raft.do("kv.set", key=key, value=value))


async def thread_put(request: HttpRequest) -> JsonResponse:
    """The sync API from an async view, a pool thread per call (``sync_to_async``)."""
    key, value = request.GET["key"], request.GET.get("value", "1")
    do = sync_to_async(django_raft.do, thread_sensitive=False)
    return await _async_answer(lambda: do("kv.set", key=key, value=value))


urlpatterns = [
    path("ping", ping),
    path("incr", incr),
    path("put", put),
    path("read", read),
    path("locked", locked),
    path("burst", burst),
    path("sync/incr", sync_incr),
    path("sync/put", sync_put),
    path("thread/put", thread_put),
]
