"""Locked views of the deployment tier: one sync and one async view per lock alias and
flavor ("try": ``timeout=0``, busy answers 423; "wait": waits up to ``WAIT_MS``). Each
increments the alias's counter inside the lock and answers what the test checks: when it
entered and left (``time.monotonic_ns()``, one clock for every process of the machine),
the fencing token of the holder, the new counter value and the serving process."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.http import Http404, JsonResponse

from django_locks import locks
from django_locks.decorators import lock_view
from tests.support.deploy import counter

KEY = "deploy-counter"
WAIT_MS = 20_000
FLAVORS = {"try": 0, "wait": WAIT_MS}


def _fencing_token(alias: str) -> int:
    """The fencing token of the holder of KEY now (this request's, under the lock)."""
    info = locks[alias].get_lock(KEY)
    return -1 if info is None else info.fencing_token


def _answer(enter: int, leave: int, fencing: int, value: int) -> JsonResponse:
    return JsonResponse({"enter": enter, "leave": leave, "fencing": fencing, "value": value,
                         "pid": os.getpid()})


def _sync_view(alias: str, timeout: int) -> Any:
    using = counter.database_of(alias)

    @lock_view(KEY, ttl=30_000, timeout=timeout, backend=alias)
    def view(request):
        enter = time.monotonic_ns()
        fencing = _fencing_token(alias)
        value = counter.increment(using, alias)
        return _answer(enter, time.monotonic_ns(), fencing, value)

    return view


def _async_view(alias: str, timeout: int) -> Any:
    using = counter.database_of(alias)

    @lock_view(KEY, ttl=30_000, timeout=timeout, backend=alias)
    async def view(request):
        enter = time.monotonic_ns()
        fencing = await sync_to_async(_fencing_token)(alias)
        value = await sync_to_async(counter.read)(using, alias) + 1
        await asyncio.sleep(counter.HOLD)
        await sync_to_async(counter.write)(using, alias, value)
        return _answer(enter, time.monotonic_ns(), fencing, value)

    return view


SYNC_VIEWS = {(alias, flavor): _sync_view(alias, timeout)
              for alias in counter.ALIASES for flavor, timeout in FLAVORS.items()}
ASYNC_VIEWS = {(alias, flavor): _async_view(alias, timeout)
               for alias in counter.ALIASES for flavor, timeout in FLAVORS.items()}


def ping(request):
    return JsonResponse({"pid": os.getpid()})


def increment(request, alias: str, flavor: str):
    view = SYNC_VIEWS.get((alias, flavor))
    if view is None:
        raise Http404(f"no view for {alias!r} {flavor!r}")
    return view(request)


async def aincrement(request, alias: str, flavor: str):
    view = ASYNC_VIEWS.get((alias, flavor))
    if view is None:
        raise Http404(f"no view for {alias!r} {flavor!r}")
    return await view(request)
