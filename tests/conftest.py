"""Fixtures: every test runs against real servers, and leaves no lock state behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import caches
from django.db import connections

from django_locks import locks
from django_locks.backends.database import close_all_lock_connections

ROOT = Path(__file__).resolve().parent.parent

#: Lock aliases whose storage is a database (alias -> database alias).
DATABASE_ALIASES = {
    alias: params.get("OPTIONS", {}).get("using", "default")
    for alias, params in settings.LOCKS.items()
    if params["BACKEND"].endswith("DatabaseLock")
}
REDIS_ALIASES = ["django_redis", "redis"]
SHARED_ALIASES = [*DATABASE_ALIASES, *REDIS_ALIASES]  # shared between processes
ALL_ALIASES = [*SHARED_ALIASES, "memory", "locmem"]


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--long", action="store_true",
        help="the long proof run: more processes and iterations (see README, Guarantees)",
    )


def pytest_sessionfinish(session, exitstatus) -> None:
    from tests import proof

    if proof.contention or proof.faults or proof.bad_inputs:
        artifacts = Path(os.environ.get("DJANGO_LOCKS_ARTIFACTS", ROOT / "artifacts"))
        proof.write(artifacts / "proof-report.json")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    from tests import proof

    data = proof.summary()
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


def wait_until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.005):
    """Poll ``condition`` until it is truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker) -> Iterator[None]:
    """Test databases for every alias, committed for real: no test runs inside a
    transaction of the test framework, because lock state must really commit."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        created = setup_databases(verbosity=0, interactive=False, aliases=set(connections))
    yield
    # The lock connections are private to django_locks: close them before the test
    # databases are dropped.
    close_all_lock_connections()
    with django_db_blocker.unblock():
        teardown_databases(created, verbosity=0)


def _clean_lock_state() -> None:
    from django_locks.models import Lock

    for using in set(DATABASE_ALIASES.values()):
        Lock.objects.using(using).all().delete()
    for cache_alias in ("django_redis", "redis"):
        client = locks[cache_alias].client.get_client()
        prefix = settings.CACHES[cache_alias]["KEY_PREFIX"]
        for name in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(name)
    locks["memory"].clear()
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, on a spare port (6379 is never touched)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the suite starts its own for fault tests)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def accepting() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(accepting, timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child process using the test settings and test databases."""
    import json

    names = {alias: connections[alias].settings_dict["NAME"] for alias in connections}
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJANGO_LOCKS_TEST_DB_NAMES": json.dumps(names),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60):
    """Run Python code in a fresh process with this project's settings."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=subprocess_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
