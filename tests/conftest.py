"""Fixtures: every test leaves no lock state behind.

Two tiers. The full suite (``scripts/test``) runs against real PostgreSQL, MariaDB and
Redis servers. The hermetic tier (``scripts/test --unit``, ``DJANGO_LOCKS_TEST_TIER=unit``)
needs no server: its settings configure MemoryLock and LocMemCache aliases only, and it
collects the tests marked ``unit`` (the others are deselected, never skipped).
"""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import caches
from django.db import connections

from django_locks import locks
from django_locks.backends.database import close_all_lock_connections
from django_locks.backends.memory import MemoryLock
from tests.helpers import ALL_ALIASES, DATABASE_ALIASES, REDIS_ALIASES, ROOT, SHARED_ALIASES, TIER
from tests.servers import RedisServer

# Started from a shell that ignores SIGINT (a background job: `scripts/test &`), the suite
# and every process it starts would ignore it too (SIG_IGN survives fork and exec, and
# Python then installs no KeyboardInterrupt handler): the tests that interrupt a child
# need Python's default. A handler of our own is reset to the default in exec'd children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The topology tests' fixtures: the suite's own Redis Cluster, Sentinel set and PgBouncer.
pytest_plugins = ["tests.topology"]


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--long", action="store_true",
        help="the long proof run: more processes and iterations (see README, Guarantees)",
    )


def pytest_collection_modifyitems(config, items) -> None:
    if TIER != "unit":
        return
    # The hermetic tier: only tests marked unit, and none marked servers.
    keep, drop = [], []
    for item in items:
        hermetic = item.get_closest_marker("unit") and not item.get_closest_marker("servers")
        (keep if hermetic else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_sessionfinish(session, exitstatus) -> None:
    from tests import proof

    if proof.contention or proof.faults or proof.bad_inputs or proof.deployment:
        artifacts = Path(os.environ.get("DJANGO_LOCKS_ARTIFACTS", ROOT / "artifacts"))
        proof.write(artifacts / "proof-report.json")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    from tests import proof

    data = proof.summary()
    if data["deployment_runs"]:
        terminalreporter.write_sep("-", "django_locks deployment tier")
        for run in data["deployment_runs"]:
            terminalreporter.write_line(" ".join(f"{name}={value}" for name, value in run.items()))
    if not data["contention_runs"]:
        return
    runs = data["contention_runs"]
    terminalreporter.write_sep("-", "django_locks proof")
    terminalreporter.write_line(
        f"contention: {len(runs)} runs, {data['critical_sections']} critical sections, "
        f"largest {max(r['processes'] for r in runs)} processes x "
        f"{max(r['iterations'] for r in runs)} iterations; overlaps found: {data['overlaps_found']}"
    )
    terminalreporter.write_line(
        f"faults injected: {sum(data['faults_injected'].values())} {data['faults_injected']}"
    )
    terminalreporter.write_line(f"bad inputs tried: {data['bad_inputs_total']}")
    terminalreporter.write_line(f"state machine steps: {data['state_machine_steps']}")


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker) -> Iterator[None]:
    """Test databases for every alias, committed for real: no test runs inside a
    transaction of the test framework, because lock state must really commit."""
    from django.test.utils import setup_databases, teardown_databases

    _remove_sqlite_leftovers()
    with django_db_blocker.unblock():
        created = setup_databases(verbosity=0, interactive=False, aliases=set(connections))
    yield
    # The lock connections are private to django_locks: close them before the test
    # databases are dropped. Those of worker threads that have ended (asyncio.run's
    # executor) sit in reference cycles until collected: collect them first.
    gc.collect()
    close_all_lock_connections()
    with django_db_blocker.unblock():
        teardown_databases(created, verbosity=0)
    _remove_sqlite_leftovers()


def _remove_sqlite_leftovers() -> None:
    """Django drops a SQLite test database by deleting its file, not its WAL files: a new
    file beside stale ones reads as "disk I/O error". Remove them around a run."""
    for alias in connections:
        settings_dict = connections[alias].settings_dict
        name = (settings_dict.get("TEST") or {}).get("NAME")
        if settings_dict["ENGINE"].endswith("sqlite3") and name and not os.path.exists(name):
            for leftover in (f"{name}-wal", f"{name}-shm"):
                if os.path.exists(leftover):
                    os.remove(leftover)


def _clean_lock_state() -> None:
    """Remove the lock state of every configured alias, through each backend's storage."""
    from django_locks.models import Holder, Lock

    for using in set(DATABASE_ALIASES.values()):
        Lock.objects.using(using).all().delete()
        Holder.objects.using(using).all().delete()
    for alias in REDIS_ALIASES:
        backend = locks[alias]
        client = backend.client.get_client()
        prefix = settings.CACHES[backend.cache_alias]["KEY_PREFIX"]
        for name in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(name)
    for alias, params in settings.LOCKS.items():
        if params["BACKEND"].endswith("MemoryLock"):
            backend = locks[alias]
            assert isinstance(backend, MemoryLock)
            backend.clear()
    caches["locmem"].clear()


@pytest.fixture(autouse=True)
def lock_state(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Database access for every test; all lock state removed before and after."""
    with django_db_blocker.unblock():
        _clean_lock_state()
        locks.reset()
        yield
        locks.reset()
        _clean_lock_state()


@pytest.fixture(params=ALL_ALIASES)
def alias(request) -> str:
    return request.param


@pytest.fixture(params=SHARED_ALIASES)
def shared_alias(request) -> str:
    return request.param


@pytest.fixture(params=list(DATABASE_ALIASES))
def db_alias(request) -> str:
    return request.param


@pytest.fixture(params=REDIS_ALIASES)
def redis_alias(request) -> str:
    return request.param


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unmigrated_database(tmp_path, monkeypatch):
    """A DATABASES alias on an SQLite file nobody ran migrate on."""
    from django.db import connections

    path = tmp_path / "fresh.sqlite3"
    sqlite3.connect(path).close()
    config = {**connections.settings["default"], "NAME": str(path), "TEST": {"NAME": str(path)}}
    monkeypatch.setitem(connections.__dict__, "settings", {**connections.settings, "fresh": config})
    yield "fresh"
    del connections["fresh"]
