"""Fixtures and helpers of the topology tests (test_cluster, test_sentinel, test_pgbouncer),
registered as a plugin in conftest.py.

The suite's own Redis Cluster, Sentinel set and PgBouncer instances (tests/servers.py)
start once per run, when a test first needs them, and stop at the end of the run. A test
that fails servers over leaves them whole again (the next test's fixture waits until they
are). Lock aliases on them are ``settings.TOPOLOGY_LOCKS``, added to LOCKS for those tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from django_locks import locks
from django_locks.exceptions import LockBackendError
from tests import proof
from tests.helpers import ROOT, check_history, overlaps_in, subprocess_env
from tests.servers import (
    PgBouncer,
    RedisClusterServers,
    SentinelServers,
    ServerError,
    Topology,
)

CLUSTER_ALIASES = ["cluster", "cluster_django"]
SENTINEL_ALIASES = ["sentinel", "sentinel_django"]

#: Failover figures measured by this run (printed in the terminal summary, see conftest).
measurements: list[str] = []


def measured(line: str) -> None:
    measurements.append(line)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if measurements:
        terminalreporter.write_sep("-", "django_locks topologies: measured")
        for line in measurements:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def topology(request) -> Iterator[Topology]:
    postgres = settings.DATABASES.get("postgres", {})
    servers = Topology(postgres.get("HOST") or "127.0.0.1", int(postgres.get("PORT") or 5432),
                       postgres.get("USER") or "postgres")
    # What this run's tests will need starts now, in the background, all at once.
    needed = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    servers.prestart(cluster="redis_cluster" in needed, sentinel="sentinel_set" in needed)
    yield servers
    servers.stop()


def _started(start: Callable[[], Any]) -> Any:
    try:
        return start()
    except ServerError as e:
        pytest.fail(f"could not start the suite's own servers: {e}")


@pytest.fixture
def topology_locks() -> Iterator[None]:
    """LOCKS with the topology aliases too."""
    with override_settings(LOCKS={**settings.LOCKS, **settings.TOPOLOGY_LOCKS}):
        yield


@pytest.fixture
def redis_cluster(topology, topology_locks) -> Iterator[RedisClusterServers]:
    cluster = _started(topology.start_cluster)
    cluster.wait_healthy()
    yield cluster
    for node in cluster.running():  # the servers are this run's own: flushing is fine
        if node.info("replication").get("role") == "master":
            with node.client() as client:
                client.flushall()


@pytest.fixture
def sentinel_set(topology, topology_locks) -> Iterator[SentinelServers]:
    sentinel = _started(topology.start_sentinel)
    sentinel.wait_healthy()
    yield sentinel
    with sentinel.master().client() as client:
        client.flushall()


@pytest.fixture
def pgbouncer_transaction(topology, topology_locks) -> PgBouncer:
    return _started(lambda: topology.start_pgbouncer("transaction"))


@pytest.fixture
def pgbouncer_session(topology, topology_locks) -> PgBouncer:
    return _started(lambda: topology.start_pgbouncer("session"))


# ----------------------------------------------------------------------------- helpers


def run_workers(config: dict, processes: int) -> None:
    """``processes`` contention workers (tests/support/contention_worker.py) on a topology alias."""
    env = subprocess_env(DJANGO_LOCKS_TEST_TOPOLOGY_LOCKS="1")
    workers = [
        subprocess.Popen([sys.executable, "-m", "tests.support.contention_worker", json.dumps(config)],
                         cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr


def contend(alias: str, tmp_path, processes: int, iterations: int) -> list[tuple[int, int, int]]:
    """N processes x M racy read-modify-writes on one key; returns the checked history."""
    counter, log = tmp_path / "counter", tmp_path / "log"
    counter.write_text("0")
    run_workers({"alias": alias, "key": "contended", "iterations": iterations,
                 "counter": str(counter), "log": str(log)}, processes)
    records = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    proof.record_contention("one key", alias, processes, iterations, 1, len(records),
                            overlaps_in(sorted(records)))
    check_history(records, int(counter.read_text()), processes * iterations)
    return records


def answers(probe: Callable[[], Any]) -> bool:
    try:
        probe()
        return True
    except LockBackendError:
        return False


class Waiter(threading.Thread):
    """A thread waiting for ``key`` on ``alias`` (its own backend instance) with a timeout;
    records what it got and when."""

    def __init__(self, alias: str, key: str, timeout_ms: int, ttl_ms: int = 60_000) -> None:
        super().__init__(daemon=True)
        self.alias, self.key, self.timeout_ms, self.ttl_ms = alias, key, timeout_ms, ttl_ms
        self.lease: Any = None
        self.error: BaseException | None = None
        self.started_at = self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.lease = locks[self.alias].lock(self.key, self.ttl_ms, timeout=self.timeout_ms,
                                                correlation_id="waiter")
        except BaseException as e:
            self.error = e
        finally:
            self.ended_at = time.monotonic()

    @property
    def elapsed(self) -> float:
        return self.ended_at - self.started_at


def measure_outage(probe: Callable[[], Any], started: float, limit: float = 30) -> tuple[float, int]:
    """Run ``probe`` until it stops raising LockBackendError: (seconds since ``started``
    until the first success, failed probes). Anything else than LockBackendError (a false
    "not acquired", another exception) fails the test."""
    failures = 0
    while True:
        try:
            probe()
            return time.monotonic() - started, failures
        except LockBackendError:
            failures += 1
        if time.monotonic() - started > limit:
            pytest.fail(f"still failing {limit} s after the fault")
        time.sleep(0.05)
