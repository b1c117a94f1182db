"""lock_view and locked, on real backends, with concurrent requests."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import AsyncClient, Client, RequestFactory

from django_locks import locks, signals
from django_locks.decorators import lock_view, locked, safe_key
from django_locks.exceptions import LockTimeoutError
from tests import proof, views
from tests.helpers import wait_until

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def fresh_gates():
    views.gates.clear()
    yield
    for g in views.gates.values():
        g.opened.set()


def request_in_thread(path: str, results: dict, name: str) -> threading.Thread:
    def run():
        results[name] = Client().get(path)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_second_concurrent_request_gets_423_with_retry_after():
    results: dict = {}
    first = request_in_thread("/report/7/", results, "first")
    assert views.gate("report:7").entered.wait(10)
    busy = Client().get("/report/7/")
    assert busy.status_code == 423
    assert 1 <= int(busy["Retry-After"]) <= 30
    other = request_in_thread("/report/8/", results, "other")  # another key: not blocked
    assert views.gate("report:8").entered.wait(10)
    views.gate("report:8").opened.set()
    other.join(10)
    assert results["other"].status_code == 200
    views.gate("report:7").opened.set()
    first.join(10)
    assert results["first"].content == b"report 7"
    assert locks["default"].get_lock("report:7") is None  # released with the response
    views.gates.clear()
    views.gate("report:7").opened.set()
    assert Client().get("/report/7/").status_code == 200


def test_lock_is_released_when_the_view_raises():
    with pytest.raises(ValueError, match="the view failed"):
        Client().get("/boom/")
    assert locks["default"].get_lock("boom") is None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_view_returning_no_response_still_releases(kind):
    """A view that returns None (a bug of the view: Django reports it) gives its lock back
    at once; it kept it for its whole ttl, and every retry got 423."""
    backend = locks["default"]
    if kind == "sync":
        @lock_view("no-response", ttl=30_000)
        def view(request):
            return None

        assert view(RequestFactory().get("/")) is None
    else:
        @lock_view("no-response", ttl=30_000)
        async def view(request):
            return None

        assert asyncio.run(view(RequestFactory().get("/"))) is None
    assert backend.get_holders("no-response") == []


def test_missing_url_kwarg_is_a_configuration_error_naming_it():
    with pytest.raises(ImproperlyConfigured, match="'missing'"):
        Client().get("/misconfigured/1/")
    assert locks["default"].held_locks() == []


def test_long_or_weird_keys_from_user_input_are_hashed():
    long_query = "x" * 5000
    response = Client().get(f"/search/{long_query}")
    assert response.status_code == 200 and response.content == b"searched 5000 characters"
    key = safe_key(f"search:{long_query}")
    assert len(key) <= 255 and key != safe_key(f"search:{long_query}y")
    assert safe_key("a\nb").startswith("a?b#")
    assert safe_key("plain:key") == "plain:key"
    # A lone surrogate (from a JSON body, say) is hashed too, into a valid key.
    weird = safe_key("order:\ud800")
    assert weird.startswith("order:?#") and weird != safe_key("order:\udc00")
    assert locks["default"].try_acquire_lock(None, weird, 1000)


def test_streaming_response_holds_the_lock_until_closed():
    response = Client().get("/stream/")
    assert response.streaming
    chunks = iter(response.streaming_content)
    assert next(chunks) == b"chunk 0\n"
    assert locks["default"].get_lock("stream") is not None
    response.close()
    assert locks["default"].get_lock("stream") is None


def test_class_based_view_through_method_decorator():
    results: dict = {}
    first = request_in_thread("/cbv/3/", results, "first")
    assert views.gate("cbv:3").entered.wait(10)
    assert Client().get("/cbv/3/").status_code == 423
    views.gate("cbv:3").opened.set()
    first.join(10)
    assert results["first"].status_code == 200


def test_on_locked_and_custom_status():
    factory = RequestFactory()
    from django.http import HttpResponse

    @lock_view("custom", ttl=10_000, status=409)
    def plain(request):
        return HttpResponse("ok")

    @lock_view("custom", ttl=10_000, on_locked=lambda request: HttpResponse("later", status=503))
    def with_handler(request):
        return HttpResponse("ok")

    with locks["default"].lock("custom", 10_000):
        assert plain(factory.get("/")).status_code == 409
        response = with_handler(factory.get("/"))
        assert (response.status_code, response.content) == (503, b"later")
    assert plain(factory.get("/")).status_code == 200


def test_correlation_id_comes_from_the_request_header():
    seen = []
    signals.lock_acquired.connect(lambda **kw: seen.append(kw["correlation_id"]), weak=False,
                                  dispatch_uid="t-cid")
    try:
        views.gate("report:9").opened.set()
        Client().get("/report/9/", headers={"X-Correlation-ID": "trace-42"})
    finally:
        signals.lock_acquired.disconnect(dispatch_uid="t-cid")
    assert seen == ["trace-42"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": 1.5}, TypeError, "ttl"),
        ({"ttl": 1000, "timeout": -1}, ValueError, "timeout"),
        ({"ttl": 1000, "status": 99}, ValueError, "status"),
        ({"ttl": 1000, "backend": 3}, TypeError, "backend"),
        ({"ttl": 1000, "on_locked": "nope"}, TypeError, "on_locked"),
    ],
)
def test_bad_decorator_arguments_fail_at_decoration(kwargs, error, message):
    proof.record_bad_inputs("decorators")
    with pytest.raises(error, match=message):
        lock_view("k", **kwargs)
    if "status" not in kwargs and "on_locked" not in kwargs:
        with pytest.raises(error, match=message):
            locked("k", **kwargs)


@pytest.mark.parametrize("key", ["report:{", "report:}", "{pk!z}", "a{b}c{"])
def test_a_key_that_is_no_format_string_fails_at_decoration(key):
    """A key format string that can never be built fails when it is given, naming key;
    it passed decoration and failed every request with a bare ValueError."""
    proof.record_bad_inputs("decorators")
    with pytest.raises(ValueError, match="key"):
        lock_view(key, ttl=30_000)
    with pytest.raises(ValueError, match="key"):
        locked(key, ttl=30_000)(lambda pk=1: pk)
    with locked(key, ttl=30_000, backend="memory"):  # as a context manager it is literal
        assert locks["memory"].get_lock(key) is not None


def test_a_key_that_cannot_be_built_for_a_call_names_the_key():
    @locked("job:{pk.nope}", ttl=30_000, backend="memory")
    def job(pk):
        return pk

    with pytest.raises(ImproperlyConfigured, match="job:"):
        job(3)
    assert locks["memory"].held_locks() == []


def test_locked_generators_hold_the_lock_while_they_run():
    """A decorated generator (or async generator) holds the lock from its first step until
    it is exhausted or closed; it held it only while the generator object was made, and
    the body ran unlocked."""
    backend = locks["memory"]

    @locked("gen", ttl=30_000, backend="memory")
    def numbers():
        for _ in range(2):
            yield len(backend.get_holders("gen"))
        return "done"

    @locked("agen", ttl=30_000, backend="memory")
    async def anumbers():
        for _ in range(2):
            yield len(backend.get_holders("agen"))

    assert list(numbers()) == [1, 1] and backend.get_holders("gen") == []
    started = numbers()
    assert next(started) == 1
    started.close()  # closed early: released
    assert backend.get_holders("gen") == []

    async def collect() -> list[int]:
        return [n async for n in anumbers()]

    assert asyncio.run(collect()) == [1, 1] and backend.get_holders("agen") == []


def test_one_guard_in_interleaved_generators_releases_each_its_own():
    """Generators share their caller's context: blocks of one guard entered in A then B
    and left in A first release A's holder, not B's."""
    backend = locks["memory"]
    guard = locked("interleaved", ttl=30_000, backend="memory", limit=2)

    def block(name: str, tokens: dict):
        with guard as lease:
            tokens[name] = lease.token
            yield
        yield

    tokens: dict = {}
    a, b = block("a", tokens), block("b", tokens)
    next(a)
    next(b)
    next(a)  # A leaves its block
    assert [info.token for info in backend.get_holders("interleaved")] == [tokens["b"]]
    next(b)
    assert backend.get_holders("interleaved") == []


def test_unknown_backend_alias_is_reported_when_decorating():
    from django_locks.exceptions import InvalidLockBackendError

    with pytest.raises(InvalidLockBackendError, match="backend='nope'"):
        @locked("k", ttl=1000, backend="nope")
        def job():
            return 1


# ----------------------------------------------------------------------------- async views


def test_async_view_concurrent_requests():
    async def scenario():
        client = AsyncClient()
        first = asyncio.ensure_future(client.get("/async-report/5/"))
        deadline = time.monotonic() + 10
        while not views.gate("async:5").entered.is_set():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        busy = await client.get("/async-report/5/")
        views.gate("async:5").opened.set()
        return await first, busy

    done, busy = asyncio.run(scenario())
    assert busy.status_code == 423 and int(busy["Retry-After"]) >= 1
    assert done.status_code == 200
    assert locks["redis"].get_lock("report:5") is None


def test_async_waiting_never_blocks_the_event_loop(alias):
    factory = RequestFactory()
    from django.http import HttpResponse

    @lock_view("waiting", ttl=10_000, timeout=800, backend=alias)
    async def view(request):
        return HttpResponse("ok")

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        response = await view(factory.get("/"))
        ticking.cancel()
        return response, ticks

    holder = locks[alias].lock("waiting", 10_000)
    response, ticks = asyncio.run(scenario())
    holder.release()
    assert response.status_code == 423
    # 0.8 s of waiting: a blocked loop would tick once at most.
    assert ticks >= 20, ticks


# ----------------------------------------------------------------------------- locked


def test_locked_function_key_from_bound_arguments():
    calls = []

    @locked("sync:{account}:{mode}", ttl=10_000)
    def sync_account(account, mode="full"):
        calls.append(locks["default"].get_lock(f"sync:{account}:{mode}"))
        return account

    assert sync_account(5) == 5
    assert calls[0] is not None and calls[0].key == "sync:5:full"
    assert locks["default"].get_lock("sync:5:full") is None
    with locks["default"].lock("sync:6:full", 10_000):
        with pytest.raises(LockTimeoutError):
            sync_account(account=6)


def test_locked_coroutine_and_callable_key():
    @locked(lambda n: f"n:{n * 2}", ttl=10_000, backend="redis")
    async def double(n):
        return locks["redis"].get_lock(f"n:{n * 2}")

    info = asyncio.run(double(21))
    assert info is not None and info.key == "n:42"
    assert locks["redis"].get_lock("n:42") is None


# ----------------------------------------------------------------------------- auto-renew


def test_auto_renew_keeps_the_lease_past_its_ttl(alias):
    backend = locks[alias]
    lease = backend.lock("renewed", 1500)
    first_expiry = lease.expires_at
    lease.start_renewing()
    from datetime import datetime, timezone

    ttl = first_expiry - lease.acquired_at
    wait_until(lambda: datetime.now(timezone.utc) > first_expiry + ttl)
    assert backend.get_lock("renewed").token == lease.token
    lease.release()
    assert backend.get_lock("renewed") is None


def test_auto_renew_reports_a_lost_lease(alias):
    backend = locks[alias]
    lost = []
    signals.lock_lost.connect(lambda **kw: lost.append(kw), weak=False, dispatch_uid="t-renew")
    try:
        lease = backend.lock("renewed", 900, correlation_id="cid-r")
        lease.start_renewing(interval=0.05)
        backend.force_release("renewed")
        wait_until(lambda: lost)
    finally:
        signals.lock_lost.disconnect(dispatch_uid="t-renew")
    assert lost[0]["key"] == "renewed" and lost[0]["correlation_id"] == "cid-r"
    wait_until(lambda: not lease.renewing)
    assert lease.released


def test_a_dropped_lease_stops_renewing_and_expires(alias, caplog):
    import gc
    import logging

    backend = locks[alias]
    lease = backend.lock("dropped", 600, correlation_id="cid-drop")
    lease.start_renewing(interval=0.05)
    token, first_expiry = lease.token, lease.expires_at
    wait_until(lambda: backend.get_lock("dropped").expires_at > first_expiry)  # it renews
    caplog.set_level(logging.WARNING, logger="django_locks")
    del lease
    gc.collect()
    wait_until(lambda: any("dropped without release" in r.getMessage() and "cid-drop" in r.getMessage()
                           for r in caplog.records))
    holder = backend.get_lock("dropped")
    assert holder is None or holder.token == token
    wait_until(lambda: backend.get_lock("dropped") is None, timeout=5)  # expires by its ttl


def test_values_in_a_key_format_cannot_change_its_structure():
    from django_locks.guard import build_key

    forged = build_key("report:{pk}", "view", (), {"pk": "5:pdf"})
    real = build_key("report:{pk}:pdf", "view", (), {"pk": 5})
    assert real == "report:5:pdf" and forged == "report:5%3Apdf" and forged != real
    assert build_key("a:{x}", "f", (), {"x": "b#c d/é%"}) == "a:b%23c%20d%2Fé%25"
    assert build_key("n:{n:04d}", "f", (), {"n": 7}) == "n:0007"  # format specs still apply
    # Through a view: the client cannot reach another view's key.
    lease = locks["default"].lock("search:a%2Fb", 10_000)
    assert Client().get("/search/a/b").status_code == 423  # the same value, quoted alike
    lease.release()
    proof.record_bad_inputs("lock_view key format", 3)


def test_a_plain_key_cannot_take_the_lock_of_a_hashed_key():
    long_key = "search:" + "x" * 300
    hashed = safe_key(long_key)
    assert hashed != long_key and len(hashed) <= 255
    assert safe_key(hashed) != hashed  # sent as a plain key, the hashed form is hashed again
    assert safe_key("plain#" + "a" * 63) == "plain#" + "a" * 63  # not the hashed form: kept


def test_a_callable_key_from_a_json_body_with_a_lone_surrogate_is_hashed():
    import json

    from django.http import HttpResponse

    @lock_view(lambda request: "order:" + json.loads(request.body)["id"], ttl=10_000)
    def pay(request):
        return HttpResponse("paid")

    request = RequestFactory().post("/pay/", data='{"id": "\\ud800"}', content_type="application/json")
    response = pay(request)
    proof.record_bad_inputs("lock_view key", 1)
    assert response.status_code == 200 and response.content == b"paid"
    assert locks["default"].held_locks() == []  # taken under its hashed key, and released


def test_a_streaming_response_dropped_without_close_stops_renewing(caplog):
    import gc
    import logging

    from django.http import StreamingHttpResponse

    @lock_view("stream:dropped", ttl=600, auto_renew=True)
    def stream(request):
        return StreamingHttpResponse(iter([b"chunk"]))

    caplog.set_level(logging.WARNING, logger="django_locks")
    response = stream(RequestFactory().get("/"))
    assert locks["default"].get_lock("stream:dropped") is not None  # held while streaming
    del response  # the server drops it without calling close()
    gc.collect()
    wait_until(lambda: any("dropped without release" in r.getMessage() for r in caplog.records))
    wait_until(lambda: locks["default"].get_lock("stream:dropped") is None, timeout=5)


# ----------------------------------------------------------------------------- shared and limit


@pytest.fixture(params=["memory", "default", "redis"])
def mode_alias(request) -> str:
    """An alias whose backend takes shared locks and semaphores."""
    return request.param


def _held(alias: str, key: str, ttl: int, **mode) -> object:
    return locks[alias].lock(key, ttl, **mode)


def test_lock_view_with_a_limit_admits_n_requests_at_once(mode_alias):
    from django.http import HttpResponse

    inside: list[int] = []
    most = [0]
    mutex = threading.Lock()
    gate_names = [f"sem:{i}" for i in range(3)]

    @lock_view("pdf", ttl=30_000, backend=mode_alias, limit=2)
    def render(request, n):
        with mutex:
            inside.append(n)
            most[0] = max(most[0], len(inside))
        try:
            views.gate(gate_names[n]).pass_through()
        finally:
            with mutex:
                inside.remove(n)
        return HttpResponse(f"pdf {n}")

    factory = RequestFactory()
    results: dict = {}

    def call(n: int) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.__setitem__(n, render(factory.get("/"), n)))
        thread.start()
        return thread

    first, second = call(0), call(1)
    assert views.gate("sem:0").entered.wait(10) and views.gate("sem:1").entered.wait(10)
    holders = locks[mode_alias].get_holders("pdf")
    assert len(holders) == 2 and all((h.limit, h.shared) == (2, False) for h in holders)
    busy = render(factory.get("/"), 2)  # the third: the semaphore is full
    assert busy.status_code == 423 and 1 <= int(busy["Retry-After"]) <= 30
    views.gate("sem:0").opened.set()
    first.join(10)
    third = call(2)  # a place is free again
    assert views.gate("sem:2").entered.wait(10)
    views.gate("sem:1").opened.set()
    views.gate("sem:2").opened.set()
    second.join(10)
    third.join(10)
    assert [results[n].status_code for n in range(3)] == [200, 200, 200]
    assert most[0] == 2
    assert locks[mode_alias].get_holders("pdf") == []


def test_retry_after_comes_from_the_holder_that_frees_a_place(mode_alias):
    from django.http import HttpResponse

    def view(request):
        return HttpResponse("ok")

    factory = RequestFactory()
    soon = _held(mode_alias, "sem", 5_000, limit=2)
    _held(mode_alias, "sem", 50_000, limit=2)
    full = lock_view("sem", ttl=10_000, backend=mode_alias, limit=2)(view)(factory.get("/"))
    assert full.status_code == 423 and full["Retry-After"] == "5"  # the first to expire
    soon.release()
    admitted = lock_view("sem", ttl=10_000, backend=mode_alias, limit=2)(view)(factory.get("/"))
    assert admitted.status_code == 200

    # Two readers: a writer waits for both, so for the one that expires last.
    _held(mode_alias, "rw", 5_000, shared=True)
    _held(mode_alias, "rw", 40_000, shared=True)
    writer = lock_view("rw", ttl=10_000, backend=mode_alias)(view)(factory.get("/"))
    assert writer.status_code == 423 and writer["Retry-After"] == "40"
    reader = lock_view("rw", ttl=10_000, backend=mode_alias, shared=True)(view)(factory.get("/"))
    assert reader.status_code == 200  # readers share

    # A writer holds: a reader waits for it.
    _held(mode_alias, "w", 20_000)
    refused = lock_view("w", ttl=10_000, backend=mode_alias, shared=True)(view)(factory.get("/"))
    assert refused.status_code == 423 and refused["Retry-After"] == "20"


def test_retry_after_uses_the_backend_measured_remaining_life(monkeypatch):
    """Not this server's clock: holders whose expires_at (by a skewed backend clock) is long
    past still count by the remaining_ms the backend measured."""
    from django.http import HttpResponse

    from django_locks.backends.memory import MemoryLock
    from django_locks.values import LockInfo

    def holders(self, key):
        return [LockInfo(key, "a" * 32, 1, None, 0, 1_000_000, remaining_ms=7_200, limit=2),
                LockInfo(key, "b" * 32, 2, None, 0, 2_000_000, remaining_ms=90_000, limit=2)]

    locks["memory"].lock("skewed", 60_000, limit=2)
    locks["memory"].lock("skewed", 60_000, limit=2)  # full
    monkeypatch.setattr(MemoryLock, "get_holders", holders)

    @lock_view("skewed", ttl=10_000, backend="memory", limit=2)
    def view(request):
        return HttpResponse("never")

    response = view(RequestFactory().get("/"))
    assert response.status_code == 423 and response["Retry-After"] == "8"


def test_shared_readers_run_together_and_a_writer_waits_for_them(mode_alias):
    calls = []

    @locked("catalog", ttl=30_000, backend=mode_alias, shared=True)
    def read():
        holders = locks[mode_alias].get_holders("catalog")
        calls.append([(h.shared, h.limit) for h in holders])
        return len(holders)

    @locked("catalog", ttl=30_000, backend=mode_alias, timeout=0)
    def rebuild():
        return "rebuilt"

    other_reader = locks[mode_alias].lock("catalog", 30_000, shared=True)
    assert read() == 2 and calls == [[(True, 1), (True, 1)]]
    with pytest.raises(LockTimeoutError):
        rebuild()
    other_reader.release()
    assert rebuild() == "rebuilt"
    assert locks[mode_alias].get_holders("catalog") == []


def test_locked_coroutine_with_a_limit(mode_alias):
    @locked("partner-api", ttl=30_000, backend=mode_alias, limit=3)
    async def call_partner():
        holders = locks[mode_alias].get_holders("partner-api")
        return [(h.limit, h.mode.label()) for h in holders]

    locks[mode_alias].lock("partner-api", 30_000, limit=3)
    assert asyncio.run(call_partner()) == [(3, "semaphore of 3")] * 2
    locks[mode_alias].lock("partner-api", 30_000, limit=3)
    locks[mode_alias].lock("partner-api", 30_000, limit=3)
    with pytest.raises(LockTimeoutError):
        asyncio.run(call_partner())


def test_a_guard_carries_its_mode_to_lock_and_alock():
    from django_locks.guard import LockGuard

    guard = LockGuard("g", ttl=10_000, backend="memory", limit=4)
    with guard as lease:
        assert (lease.shared, lease.limit) == (False, 4)

    async def shared_block():
        async with LockGuard("g", ttl=10_000, backend="memory", shared=True) as lease:
            return lease.shared, lease.limit

    assert asyncio.run(shared_block()) == (True, 1)
    assert "semaphore of 4" in repr(guard)


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ({"limit": 0}, ValueError, "limit"),
        ({"limit": 10_001}, ValueError, "limit"),
        ({"limit": True}, TypeError, "limit"),
        ({"limit": "3"}, TypeError, "limit"),
        ({"limit": 2.0}, TypeError, "limit"),
        ({"shared": 1}, TypeError, "shared"),
        ({"shared": "yes"}, TypeError, "shared"),
        ({"shared": True, "limit": 2}, ValueError, "limit"),
    ],
)
def test_bad_shared_or_limit_fail_at_decoration_naming_the_argument(mode, error, message):
    proof.record_bad_inputs("decorators")
    with pytest.raises(error, match=message):
        lock_view("k", ttl=1000, **mode)
    with pytest.raises(error, match=message):
        locked("k", ttl=1000, **mode)


def test_async_view_with_a_limit(mode_alias):
    from django.http import HttpResponse

    @lock_view("async-sem", ttl=10_000, backend=mode_alias, limit=2)
    async def view(request):
        return HttpResponse(str(len(locks[mode_alias].get_holders("async-sem"))))

    first = locks[mode_alias].lock("async-sem", 9_000, limit=2)
    assert asyncio.run(view(RequestFactory().get("/"))).content == b"2"  # a second place
    locks[mode_alias].lock("async-sem", 30_000, limit=2)
    busy = asyncio.run(view(RequestFactory().get("/")))
    assert busy.status_code == 423 and busy["Retry-After"] == "9"  # the first holder's expiry
    first.release()
    assert asyncio.run(view(RequestFactory().get("/"))).status_code == 200
