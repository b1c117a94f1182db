"""Views of the decorator tests. A gate lets a test hold a request inside its view."""

from __future__ import annotations

import asyncio
import threading
import time

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.utils.decorators import method_decorator
from django.views import View

from django_locks.decorators import lock_view


class Gate:
    """The view signals ``entered`` and waits for ``opened`` (with a deadline)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def pass_through(self) -> None:
        self.entered.set()
        if not self.opened.wait(30):
            raise TimeoutError("the test never opened the gate")


gates: dict[str, Gate] = {}


def gate(name: str) -> Gate:
    return gates.setdefault(name, Gate())


@lock_view("report:{pk}", ttl=30_000)
def report(request, pk):
    gate(f"report:{pk}").pass_through()
    return HttpResponse(f"report {pk}")


# lock_view checks its alias when it decorates: "postgres" is configured only when the
# PostgreSQL tests run (the test that requests this view needs it).
@lock_view("report:{pk}", ttl=30_000, backend="postgres" if "postgres" in settings.LOCKS else "default")
def postgres_report(request, pk):
    gate(f"report:{pk}").pass_through()
    return HttpResponse(f"report {pk}")


@lock_view("report:{pk}", ttl=30_000, backend="redis")
async def async_report(request, pk):
    g = gate(f"async:{pk}")
    g.entered.set()
    deadline = time.monotonic() + 30
    while not g.opened.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        await asyncio.sleep(0.005)
    return HttpResponse(f"async report {pk}")


@lock_view("stream", ttl=30_000)
def stream(request):
    return StreamingHttpResponse(f"chunk {i}\n" for i in range(3))


@lock_view("boom", ttl=30_000)
def boom(request):
    raise ValueError("the view failed")


@lock_view("needs:{missing}", ttl=30_000)
def misconfigured(request, pk):
    return HttpResponse("never")


@lock_view("search:{q}", ttl=30_000)
def search(request, q):
    return HttpResponse(f"searched {len(q)} characters")


@method_decorator(lock_view(lambda request, pk: f"cbv:{pk}", ttl=30_000), name="dispatch")
class ClassBased(View):
    def get(self, request, pk):
        gate(f"cbv:{pk}").pass_through()
        return HttpResponse(f"cbv {pk}")
