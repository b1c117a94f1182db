import asyncio
import time

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from django_locks import locks
from django_locks.decorators import lock_view
from django_locks.exceptions import LockError, LockTimeoutError
from example_project.jobs import rebuild_search_index


def home(request: HttpRequest) -> HttpResponse:
    aliases = []
    for alias in locks:
        backend = locks[alias]
        try:
            held = backend.held_locks() if backend.supports_enumeration else None
            error = None
        except LockError as e:
            held, error = [], str(e)
        aliases.append({"alias": alias, "backend": type(backend).__name__, "held": held,
                        "error": error})
    return render(request, "example/home.html", {"aliases": aliases})


def _seconds(request: HttpRequest) -> float:
    try:
        return min(max(float(request.GET.get("seconds", "5")), 0.0), 30.0)
    except ValueError:
        return 5.0


@lock_view("report:{pk}", ttl=30_000)
def build_report(request: HttpRequest, pk: int) -> HttpResponse:
    """A slow action: a second request for the same report gets 423 + Retry-After."""
    seconds = _seconds(request)
    time.sleep(seconds)
    return HttpResponse(f"report {pk} built in {seconds:g} s\n", content_type="text/plain")


@lock_view("async-report:{pk}", ttl=30_000, backend="cache")
async def build_report_async(request: HttpRequest, pk: int) -> HttpResponse:
    seconds = _seconds(request)
    await asyncio.sleep(seconds)
    return HttpResponse(f"async report {pk} built in {seconds:g} s\n", content_type="text/plain")


@lock_view("export", ttl=10_000, auto_renew=True)
def export(request: HttpRequest) -> StreamingHttpResponse:
    """The lock is held until the stream is closed (and renewed while it streams)."""

    def rows():
        for i in range(int(_seconds(request) * 10)):
            time.sleep(0.1)
            yield f"row {i}\n"

    return StreamingHttpResponse(rows(), content_type="text/plain")


@method_decorator(csrf_exempt, name="dispatch")  # a demo endpoint for curl
@method_decorator(lock_view(lambda request: f"settings:{request.user.pk}", ttl=5_000), name="post")
class SettingsView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(
            "<!doctype html><title>Settings</title><p>Saving takes a second and holds the lock "
            "<code>settings:&lt;your user id&gt;</code>: click twice quickly, the second save "
            "gets <code>423 Locked</code>.</p><form method=post><button>Save settings</button></form>"
            '<p><a href="/">Back</a></p>'
        )

    def post(self, request: HttpRequest) -> HttpResponse:
        time.sleep(1)
        return HttpResponse("settings saved\n")


def run_job(request: HttpRequest) -> HttpResponse:
    try:
        message = rebuild_search_index(_seconds(request))
    except LockTimeoutError:
        return HttpResponse("the job is already running\n", status=409, content_type="text/plain")
    return HttpResponse(message + "\n", content_type="text/plain")
