"""DatabaseLock on MariaDB/MySQL and SQLite: the fair handoff.

A waiting call marks the row (``waiting_since_us``); a release of a marked row leaves it
reserved for the calls that waited since before the release (token NULL, free again after
FAIR_RESERVE_US); the winner clears the mark. PostgreSQL, woken by notifications, does
none of it."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from itertools import pairwise

import pytest
from django.conf import settings
from django.db import connections

from django_locks import locks
from django_locks.backends import database
from django_locks.exceptions import LockTimeoutError
from django_locks.models import Lock
from django_locks.values import EXCLUSIVE
from tests.helpers import DATABASE_ALIASES, ROOT, subprocess_env, wait_until

FAIR_ALIASES = [alias for alias, using in DATABASE_ALIASES.items()
                if connections[using].vendor in ("sqlite", "mysql")]


@pytest.fixture(params=FAIR_ALIASES)
def fair_alias(request) -> str:
    return request.param


def row(alias: str, key: str) -> Lock:
    return Lock.objects.using(DATABASE_ALIASES[alias]).get(key=key)


def db_now_us(alias: str) -> int:
    using = DATABASE_ALIASES[alias]
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT {database.VENDORS[connections[using].vendor][1].now_us}")
        return int(cursor.fetchone()[0])


class Waiter(threading.Thread):
    """``acquire_lock`` in a thread of its own (so a backend instance of its own)."""

    def __init__(self, alias: str, key: str, timeout: int) -> None:
        super().__init__(daemon=True)
        self.alias, self.key, self.timeout = alias, key, timeout
        self.error: BaseException | None = None
        self.acquired_at_us: int | None = None
        self.fencing_token: int | None = None
        self.start()

    def run(self) -> None:
        backend = locks[self.alias]
        try:
            backend.acquire_lock("waiter", self.key, 60_000, self.timeout)
            info = backend.get_lock(self.key)
            self.acquired_at_us, self.fencing_token = info.acquired_at_us, info.fencing_token
            backend.release_lock("waiter", self.key)
        except BaseException as e:
            self.error = e

    def result(self) -> Waiter:
        self.join(30)
        assert not self.is_alive()
        return self


def marked(alias: str, key: str) -> bool:
    return row(alias, key).waiting_since_us is not None


def test_try_acquire_on_a_free_key_with_no_waiters_succeeds_at_once(fair_alias):
    backend = locks[fair_alias]
    for _ in range(20):
        assert backend.try_acquire_lock(None, "job", 60_000)
        backend.release_lock(None, "job")
        assert row(fair_alias, "job").waiting_since_us is None
    assert backend.try_acquire_lock(None, "job", 60_000)  # nobody waited: nothing reserved


def test_a_waiting_call_marks_the_row_and_its_win_clears_the_mark(fair_alias):
    backend = locks[fair_alias]
    assert backend.try_acquire_lock(None, "job", 60_000)
    before = db_now_us(fair_alias)
    waiter = Waiter(fair_alias, "job", 30_000)
    wait_until(lambda: marked(fair_alias, "job"))
    assert row(fair_alias, "job").waiting_since_us >= before
    assert backend.get_lock("job").correlation_id is None  # still the holder's
    backend.release_lock(None, "job")
    assert waiter.result().error is None
    assert row(fair_alias, "job").waiting_since_us is None
    assert backend.try_acquire_lock(None, "job", 60_000)  # the waiter is gone: not reserved


def test_release_reserves_the_lock_for_a_waiter_not_for_the_releaser(fair_alias, monkeypatch):
    monkeypatch.setattr(database.fairness, "FAIR_RESERVE_US", 5_000_000)  # long: no race with the clock
    backend = locks[fair_alias]
    assert backend.try_acquire_lock(None, "job", 60_000)
    fencing = backend.get_lock("job").fencing_token
    waiter = Waiter(fair_alias, "job", 30_000)
    wait_until(lambda: marked(fair_alias, "job"))
    started = time.monotonic()
    backend.release_lock(None, "job")
    # Reserved: not for the releaser's next waiting call, but for the waiter, at its next
    # poll, long before the reservation ends; the releaser comes next.
    backend.acquire_lock(None, "job", 60_000, 30_000)
    assert time.monotonic() - started < 2.5
    assert waiter.result().error is None
    assert fencing < waiter.fencing_token < backend.get_lock("job").fencing_token
    assert row(fair_alias, "job").waiting_since_us is None


def test_a_reservation_is_held_by_nobody(fair_alias, monkeypatch):
    monkeypatch.setattr(database.fairness, "FAIR_RESERVE_US", 5_000_000)
    backend = locks[fair_alias]
    assert backend.try_acquire_lock(None, "job", 60_000)
    # Long enough for the waiter's later attempts to mark the row, even on a loaded machine
    # (a 50 ms waiter once made one attempt only under CI load: nothing was reserved).
    assert isinstance(Waiter(fair_alias, "job", 300).result().error, LockTimeoutError)
    assert marked(fair_alias, "job")
    backend.release_lock(None, "job")  # reserved for the waiter that gave up
    reserved = row(fair_alias, "job")
    assert reserved.token is None and reserved.expires_at_us > db_now_us(fair_alias)
    assert backend.get_lock("job") is None
    assert "job" not in [info.key for info in backend.held_locks()]
    assert backend.expired_locks() == []
    assert not backend.force_release("job")
    with pytest.raises(LockTimeoutError):  # a waiting call that came after the release
        backend.acquire_lock(None, "job", 60_000, 100)
    assert backend.try_acquire_lock(None, "job", 60_000)  # a call that does not wait barges in


def test_an_abandoned_wait_delays_a_reacquire_by_the_reservation_at_most(fair_alias, monkeypatch):
    reserve_us = 300_000
    monkeypatch.setattr(database.fairness, "FAIR_RESERVE_US", reserve_us)
    backend = locks[fair_alias]
    assert backend.try_acquire_lock(None, "job", 60_000)
    waiter = Waiter(fair_alias, "job", 300)  # gives up while the lock is held (300 ms: marks even under load)
    assert isinstance(waiter.result().error, LockTimeoutError)
    assert marked(fair_alias, "job")  # a mark nobody will take away
    started = time.monotonic()
    backend.release_lock(None, "job")
    reserved = row(fair_alias, "job")
    backend.acquire_lock(None, "job", 60_000, 10_000)
    elapsed = time.monotonic() - started
    acquired_at_us = backend.get_lock("job").acquired_at_us
    assert acquired_at_us >= reserved.expires_at_us  # taken once the reservation ended ...
    assert acquired_at_us - reserved.expires_at_us < 100_000  # ... at the next poll
    assert elapsed < reserve_us / 1e6 + 0.2
    backend.release_lock(None, "job")
    assert row(fair_alias, "job").waiting_since_us is None  # the win cleared the mark
    assert backend.try_acquire_lock(None, "job", 60_000)  # at once


def test_postgresql_never_reserves():
    if "postgres" not in DATABASE_ALIASES:
        pytest.skip("no PostgreSQL database configured")
    backend = locks["postgres"]
    assert backend.try_acquire_lock(None, "job", 60_000)
    waiter = Waiter("postgres", "job", 30_000)
    listener = database.listener_for(DATABASE_ALIASES["postgres"])
    # psycopg 3 waits for notifications; under psycopg2 the listener gives up and waiters poll.
    wait_until(lambda: listener.ready.is_set() or listener.unusable)
    assert listener.ready.is_set() is (settings.POSTGRES_DRIVER == "psycopg")
    backend.release_lock(None, "job")
    assert waiter.result().error is None
    assert row("postgres", "job").waiting_since_us is None
    assert backend.try_acquire_lock(None, "job", 60_000)


def test_waiters_get_the_lock_before_the_releaser(fair_alias, tmp_path):
    """4 processes take one key 40 times each, with a 1 ms critical section. Without the
    fair handoff the releaser re-takes it almost every time (99 % on SQLite); here, while
    all four still run, it re-takes it less than 60 % of the time."""
    processes, sections = 4, 40
    log = tmp_path / "log"
    config = {"alias": fair_alias, "key": "fair", "section_ms": 1, "sections": sections,
              "log": str(log), "go": str(tmp_path / "go")}
    workers = [
        subprocess.Popen([sys.executable, "-m", "tests.support.fairness_worker",
                          json.dumps({**config, "ready": str(tmp_path / f"ready{i}")})],
                         cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
        for i in range(processes)
    ]
    try:
        wait_until(lambda: all((tmp_path / f"ready{i}").exists() for i in range(processes))
                   or any(w.poll() is not None for w in workers), timeout=60)
        (tmp_path / "go").touch()
        for worker in workers:
            _, stderr = worker.communicate(timeout=120)
            assert worker.returncode == 0, stderr
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    records = sorted(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    assert len(records) == processes * sections
    assert all(nxt[0] >= cur[1] for cur, nxt in pairwise(records)), "two holders overlapped"
    # While every process still runs: until the first one has done all its sections.
    first_done = min(max(r[1] for r in records if r[2] == pid) for pid in {r[2] for r in records})
    pairs = [(cur, nxt) for cur, nxt in pairwise(records) if nxt[0] <= first_done]
    handoffs = [(nxt[0] - cur[1]) / 1e6 for cur, nxt in pairs if nxt[2] != cur[2]]
    retaken = 1 - len(handoffs) / len(pairs)
    summary = (f"{len(pairs)} successions, re-taken by the releaser {retaken:.0%}, "
               f"handoff p50 {statistics.median(handoffs) if handoffs else float('nan'):.2f} ms")
    assert len(pairs) >= sections, summary
    assert retaken < 0.6, summary


def test_a_reader_in_a_reservation_keeps_the_waiter_out(fair_alias, monkeypatch):
    """A reader barging into a reservation makes the key row stand for its holders (token
    NULL, a future expiry, like a reservation): the waiter the reservation was for must
    not take the row from under the reader. Driven attempt by attempt, with one owner
    token, as the wait loop does."""
    monkeypatch.setattr(database.fairness, "FAIR_RESERVE_US", 5_000_000)
    backend, waiter = locks[fair_alias], locks.create_connection(fair_alias)
    assert backend.try_acquire_lock(None, "job", 60_000)
    token = "e" * 32
    for _ in range(2):  # its first attempt records the holder, the next marks the row
        assert waiter._try_acquire("job", token, 60_000, None, EXCLUSIVE, True).info is None
    assert marked(fair_alias, "job")
    backend.release_lock(None, "job")  # reserved for that waiter
    reader = backend.lock("job", 60_000, shared=True)  # barges in
    attempt = waiter._try_acquire("job", token, 60_000, None, EXCLUSIVE, True)
    assert attempt.info is None and attempt.holder_remaining_ms > 50_000
    assert [h.token for h in backend.get_holders("job")] == [reader.token]
    reader.release()
    assert waiter._try_acquire("job", token, 60_000, None, EXCLUSIVE, True).info is not None
