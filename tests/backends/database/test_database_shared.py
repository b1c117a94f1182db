"""DatabaseLock's shared locks and semaphores, on PostgreSQL, MariaDB and SQLite: the
admission rules, the writer mark, fencing across modes, release/extend by any token,
force release, listing, culling and purge, a PostgreSQL waiter woken by NOTIFY, and
OS processes contending for a semaphore and for a shared/exclusive mix."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from itertools import pairwise

import pytest
from django.conf import settings
from django.test import override_settings

from django_locks import locks
from django_locks.exceptions import LockNotHeldError, LockTimeoutError
from django_locks.models import Holder, Lock
from django_locks.values import EXCLUSIVE, WRITER_MARK_MS, Mode, new_token
from tests import proof
from tests.helpers import DATABASE_ALIASES, ROOT, dead_writer_mark, subprocess_env, wait_until

TTL = 60_000


@pytest.fixture
def using(db_alias) -> str:
    return DATABASE_ALIASES[db_alias]


def fresh(alias: str):
    """Another instance of the alias's backend (another owner)."""
    return locks.create_connection(alias)


def refused(alias: str, key: str, **mode) -> bool:
    try:
        fresh(alias).lock(key, TTL, **mode).release()
    except LockTimeoutError:
        return True
    return False


def mark_of(using: str, key: str) -> str | None:
    row = Lock.objects.using(using).filter(key=key).first()
    return None if row is None else row.mark_token


# ----------------------------------------------------------------------------- admission


def test_semaphore_admits_up_to_its_limit(db_alias):
    leases = [fresh(db_alias).lock("pdf", TTL, limit=3) for _ in range(3)]
    assert all(lease.limit == 3 and not lease.shared for lease in leases)
    assert len({lease.token for lease in leases}) == 3
    with pytest.raises(LockTimeoutError):
        fresh(db_alias).lock("pdf", TTL, limit=3)
    assert not fresh(db_alias).try_acquire_lock(None, "pdf", TTL)  # exclusive = limit 1
    holders = locks[db_alias].get_holders("pdf")
    assert sorted(h.token for h in holders) == sorted(lease.token for lease in leases)
    assert all(h.limit == 3 and not h.shared and h.mode_label(3) == "3 of 3" for h in holders)
    leases[1].release()
    fourth = fresh(db_alias).lock("pdf", TTL, limit=3)
    assert fourth.fencing_token > max(lease.fencing_token for lease in leases)
    for lease in (leases[0], leases[2], fourth):
        lease.release()
    assert locks[db_alias].get_holders("pdf") == []
    assert locks[db_alias].try_acquire_lock(None, "pdf", TTL)  # free at once: nothing left


def test_shared_with_shared_never_with_exclusive(db_alias):
    readers = [fresh(db_alias).lock("doc", TTL, shared=True) for _ in range(4)]
    assert all(lease.shared and lease.limit == 1 for lease in readers)
    assert refused(db_alias, "doc")  # exclusive while readers hold it
    for lease in readers:
        lease.release()
    writer = fresh(db_alias).lock("doc", TTL)  # at once: the key row followed the releases
    assert refused(db_alias, "doc", shared=True)  # shared while a writer holds it
    writer.release()
    assert not refused(db_alias, "doc", shared=True)


def test_semaphore_mixed_with_shared_and_exclusive(db_alias):
    backend = locks[db_alias]
    readers = [fresh(db_alias).lock("mix", TTL, shared=True) for _ in range(2)]
    third = fresh(db_alias).lock("mix", TTL, limit=3)  # 2 holders < 3
    assert refused(db_alias, "mix", limit=3)  # full
    assert refused(db_alias, "mix", shared=True)  # a non-shared holder holds it
    third.release()
    assert not refused(db_alias, "mix", shared=True)
    for lease in readers:
        lease.release()
    # A semaphore joins an exclusive holder (1 < 2); the exclusive one stays releasable
    # and extendable by its token.
    exclusive = fresh(db_alias).lock("mix", TTL)
    joined = fresh(db_alias).lock("mix", TTL, limit=2)
    assert {h.token: h.limit for h in backend.get_holders("mix")} == {exclusive.token: 1, joined.token: 2}
    assert refused(db_alias, "mix", limit=2) and refused(db_alias, "mix")
    exclusive.extend(90_000)
    assert backend.get_lock("mix").token == exclusive.token  # the exclusive holder first
    exclusive.release()
    assert [h.token for h in backend.get_holders("mix")] == [joined.token]
    joined.release()
    assert not refused(db_alias, "mix")


def test_changing_the_limit_with_old_holders(db_alias):
    old = [fresh(db_alias).lock("api", TTL, limit=3) for _ in range(3)]
    assert refused(db_alias, "api", limit=2)  # 3 holders, not fewer than 2
    assert refused(db_alias, "api", limit=3)
    raised = [fresh(db_alias).lock("api", TTL, limit=5) for _ in range(2)]  # its own N counts
    assert refused(db_alias, "api", limit=5)
    assert sorted(h.limit for h in locks[db_alias].get_holders("api")) == [3, 3, 3, 5, 5]
    for lease in old + raised:
        lease.release()


def test_a_reader_whose_ttl_ran_out_counts_for_nothing(db_alias):
    fresh(db_alias).lock("short", 300, shared=True)
    assert refused(db_alias, "short")
    wait_until(lambda: not locks[db_alias].get_holders("short"))
    lease = fresh(db_alias).lock("short", TTL)  # the key row expired with its holders
    lease.release()
    assert len(fresh(db_alias).lock("short", TTL, limit=2).backend.get_holders("short")) == 1


# ----------------------------------------------------------------------------- the writer mark


def test_a_waiting_writer_holds_new_readers_back(db_alias, using):
    reader = fresh(db_alias).lock("report", TTL, shared=True)
    won = threading.Event()
    done = threading.Event()
    writer_lease: list = []

    def write() -> None:
        lease = fresh(db_alias).lock("report", TTL, timeout=30_000)
        writer_lease.append(lease)
        won.set()
        done.wait(30)
        lease.release()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        wait_until(lambda: mark_of(using, "report") is not None)
        assert refused(db_alias, "report", shared=True)  # behind the waiting writer
        assert not won.is_set()
        reader.release()
        assert won.wait(10)
        assert mark_of(using, "report") is None  # the winner cleared its own mark
        assert refused(db_alias, "report", shared=True)  # the writer holds it
    finally:
        done.set()
        thread.join(30)
    assert not refused(db_alias, "report", shared=True)  # no mark left behind


def test_a_waiting_semaphore_acquirer_also_marks(db_alias, using):
    full = [fresh(db_alias).lock("sem", TTL, limit=2) for _ in range(2)]
    dead_writer_mark(fresh(db_alias), "sem", Mode(limit=2))
    assert mark_of(using, "sem") is not None
    assert refused(db_alias, "sem", shared=True)
    for lease in full:
        lease.release()


def test_the_mark_goes_with_the_writer_that_gave_up_or_died(db_alias, using):
    reader = fresh(db_alias).lock("given-up", TTL, shared=True)
    with pytest.raises(LockTimeoutError):
        fresh(db_alias).lock("given-up", TTL, timeout=300)
    assert mark_of(using, "given-up") is None  # it removed its mark as it gave up
    assert not refused(db_alias, "given-up", shared=True)
    dead_writer_mark(fresh(db_alias), "given-up")  # a writer that died while waiting
    gave_up = time.monotonic()
    assert refused(db_alias, "given-up", shared=True)  # its last mark still lives
    wait_until(lambda: not refused(db_alias, "given-up", shared=True), timeout=WRITER_MARK_MS / 1000 + 5)
    assert time.monotonic() - gave_up < WRITER_MARK_MS / 1000 + 2
    reader.release()


# ----------------------------------------------------------------------------- fencing, tokens


def test_fencing_tokens_rise_across_modes(db_alias):
    backend = locks[db_alias]
    tokens = []
    steps = [({}, True), ({"shared": True}, True), ({"shared": True}, False),
             ({"limit": 3}, False), ({"limit": 3}, True), ({"limit": 3}, False), ({}, True)]
    for mode, release_first in steps:
        if release_first:
            for holder in backend.get_holders("fence"):
                backend.release_lock(None, "fence", owner=holder.token)
        tokens.append(fresh(db_alias).lock("fence", TTL, **mode).fencing_token)
    assert tokens == sorted(set(tokens)), tokens
    backend.force_release("fence")
    backend.purge()
    assert fresh(db_alias).lock("fence", TTL, shared=True).fencing_token > tokens[-1]


def test_release_and_extend_by_the_token_of_any_holder(db_alias):
    backend, other = locks[db_alias], fresh(db_alias)
    shared = backend.lock("tok", TTL, shared=True)
    second = backend.lock("tok", TTL, shared=True)
    with pytest.raises(ValueError, match="owner"):
        backend.release_lock(None, "tok")  # two holders of this instance: which one?
    expires = other.extend_lock(None, "tok", 120_000, owner=shared.token)
    assert backend.get_lock("tok").token == shared.token
    assert backend.get_lock("tok").expires_at == expires
    other.release_lock(None, "tok", owner=second.token)
    with pytest.raises(LockNotHeldError):
        other.release_lock(None, "tok", owner=second.token)
    with pytest.raises(LockNotHeldError):
        other.extend_lock(None, "tok", TTL, owner=new_token())
    backend.release_lock(None, "tok")  # the one left of this instance
    assert backend.get_holders("tok") == []
    # Shortened by extension: the key row follows, an exclusive acquisition gets in soon.
    lease = backend.lock("tok", TTL, limit=2)
    lease.extend(200)
    wait_until(lambda: fresh(db_alias).try_acquire_lock(None, "tok", TTL), timeout=5)


def test_force_release_removes_every_holder_and_the_mark(db_alias, using):
    backend = locks[db_alias]
    assert backend.force_release("all") is False
    leases = [fresh(db_alias).lock("all", TTL, limit=3) for _ in range(2)]
    reader_key = fresh(db_alias).lock("all-readers", TTL, shared=True)
    writer = fresh(db_alias)
    attempt = writer._try_acquire("all-readers", new_token(), TTL, None, EXCLUSIVE, True)
    assert attempt.info is None and attempt.holder_remaining_ms > TTL - 10_000
    assert mark_of(using, "all-readers") is not None
    assert backend.force_release("all") is True
    assert backend.get_holders("all") == []
    with pytest.raises(LockNotHeldError):
        leases[0].release()
    assert backend.force_release("all-readers") is True
    assert mark_of(using, "all-readers") is None
    assert not refused(db_alias, "all-readers", shared=True)
    assert not refused(db_alias, "all")
    del reader_key


def test_get_holders_and_held_locks(db_alias):
    backend = locks[db_alias]
    assert backend.held_locks() == []
    a = fresh(db_alias).lock("r", 30_000, correlation_id="c-a", shared=True)
    b = fresh(db_alias).lock("r", 90_000, correlation_id="c-b", shared=True)
    c = fresh(db_alias).lock("s", 60_000, limit=2)
    x = fresh(db_alias).lock("x", 45_000, correlation_id="c-x")
    holders = backend.get_holders("r")
    assert [h.token for h in holders] == [a.token, b.token]
    assert [h.correlation_id for h in holders] == ["c-a", "c-b"]
    assert all(h.shared and h.limit == 1 and h.mode_label() == "shared" for h in holders)
    assert 80_000 < holders[1].remaining_ms <= 90_000  # by the database clock
    assert backend.get_lock("r") == holders[1]  # the one that expires last
    assert backend.get_lock("x").token == x.token and not backend.get_lock("x").shared
    held = backend.held_locks()
    assert [h.token for h in held] == [a.token, x.token, c.token, b.token]
    assert [h.limit for h in held] == [1, 1, 2, 1]
    assert held[2].fencing_token == c.fencing_token and held[2].acquired_at == c.acquired_at


# ----------------------------------------------------------------------------- culling, purge


def test_culling_and_purge_leave_live_holders_alone(db_alias, using):
    options = {"using": using, "cull_frequency": 10, "cull_grace": 0}
    with override_settings(LOCKS={"x": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                                        "OPTIONS": options}}):
        backend = locks["x"]
        live = [backend.lock("live", TTL, limit=5) for _ in range(2)]
        reader = backend.lock("read", TTL, shared=True)
        for n in range(30):
            backend.lock(f"gone:{n}", 1, limit=2)  # expired at once
        wait_until(lambda: not backend.get_holders("gone:29"))
        for n in range(30):
            with backend.lock(f"other:{n}", TTL, shared=True):
                pass
        assert Holder.objects.using(using).filter(key__startswith="gone:").count() <= 10
        assert sorted(h.token for h in backend.get_holders("live")) == sorted(lease.token for lease in live)
        assert backend.get_lock("read").token == reader.token
        assert Lock.objects.using(using).filter(key="live").exists()
        backend.lock("expiring", 1, shared=True)
        wait_until(lambda: not backend.get_holders("expiring"))
        assert any(info.key == "expiring" for info in backend.expired_locks())
        assert backend.purge() >= 1
        assert not any(info.key == "expiring" for info in backend.expired_locks())
        assert len(backend.get_holders("live")) == 2 and backend.get_lock("read") is not None
        assert refused("x", "live", limit=2)  # they still count
        for lease in [*live, reader]:
            lease.release()


# ----------------------------------------------------------------------------- notification


SEMAPHORE_WAITER = """
import django, json, time
django.setup()
from django_locks import locks
from django_locks.backends import base, database
database.Listener.MAX_WAIT = 20.0        # a lost notification would cost 20 s here
database.DatabaseLock.poll_interval_min = database.DatabaseLock.poll_interval_max = 20.0
base.WRITER_RECHECK_MS = 20_000          # nor does a non-shared waiter re-attempt sooner
backend = locks["postgres"]
wait_for_release = database.DatabaseLock._wait_for_release
def announced(self, *args):
    print("blocked", flush=True)
    return wait_for_release(self, *args)
database.DatabaseLock._wait_for_release = announced
assert database.listener_for(backend.using).ready.wait(10)
print("waiting", flush=True)
started = time.monotonic()
with backend.lock("notified-sem", 60_000, timeout=60_000, limit=2):
    print(json.dumps({"waited": time.monotonic() - started}), flush=True)
"""


def test_a_semaphore_waiter_is_woken_by_a_holders_release():
    """The holders' ttl is 60 s, and the waiter's polling and re-attempt bounds 20 s: only
    the release's NOTIFY can let it in within a few seconds."""
    if "postgres" not in DATABASE_ALIASES:
        pytest.fail("postgres is not configured (DJANGO_LOCKS_TEST_DATABASES)")
    holders = [fresh("postgres").lock("notified-sem", 60_000, limit=2) for _ in range(2)]
    waiter = subprocess.Popen([sys.executable, "-c", SEMAPHORE_WAITER], cwd=ROOT,
                              env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout.readline().strip() == "waiting"
        assert waiter.stdout.readline().strip() == "blocked"  # its first attempt failed
        released_at = time.monotonic()
        holders[0].release()
        waited = json.loads(waiter.stdout.readline())["waited"]
        woken_after = time.monotonic() - released_at
        assert woken_after < 5, woken_after  # far below 20 s (and the holders' 60 s)
        assert waiter.wait(30) == 0 and waited > 0
    finally:
        waiter.kill()
        waiter.wait(10)
    holders[1].release()


# ----------------------------------------------------------------------------- contention


def run_workers(configs: list[dict], barrier) -> None:
    """The workers start their loops together, once every one of them is set up."""
    barrier.mkdir()
    workers = [
        subprocess.Popen([sys.executable, "-m", "tests.support.contention_worker",
                          json.dumps({**config, "barrier": str(barrier)})],
                         cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
        for config in configs
    ]
    wait_until(lambda: len(list(barrier.glob("ready-*"))) == len(configs)
               or any(w.poll() is not None for w in workers), timeout=120)
    (barrier / "go").touch()
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr


def most_at_once(records: list[tuple]) -> int:
    """The largest number of critical sections open at one instant (an exit at the same
    nanosecond as an enter closes first)."""
    events = sorted([(r[0], 1) for r in records] + [(r[1], -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def fencing_out_of_order(records: list[tuple]) -> list[tuple]:
    """Pairs of a writer and another holder where the one that left before the other
    entered has the greater fencing token. (Only a writer's section brackets its holding
    against everyone else's: two readers' timestamps do not order their acquisitions.)"""
    return [
        (a, b) for a in records for b in records
        if (a[3] == "w" or b[3] == "w") and a[1] < b[0] and a[2] >= b[2]
    ]


def test_processes_share_a_semaphore_of_three(db_alias, tmp_path):
    log = tmp_path / "log"
    processes, iterations = 6, 6
    run_workers([{"alias": db_alias, "key": "sem3", "iterations": iterations, "limit": 3,
                  "hold": 0.05, "log": str(log), "counter": str(tmp_path / f"c{n}")}
                 for n in range(processes)], tmp_path / "barrier")
    records = [tuple(map(int, line.split()[:3])) for line in log.read_text().splitlines()]
    assert len(records) == processes * iterations
    peak = most_at_once(records)
    proof.record_contention("semaphore of 3", db_alias, processes, iterations, 1,
                            len(records), max(0, peak - 3))
    assert peak <= 3, f"{peak} holders at once with limit=3"
    assert peak == 3, "the semaphore never filled up"
    assert len({r[2] for r in records}) == len(records)  # a fencing token of its own each


def test_processes_mix_readers_and_writers(db_alias, tmp_path):
    log, counter = tmp_path / "log", tmp_path / "counter"
    counter.write_text("0")
    processes, iterations = 6, 8
    run_workers([{"alias": db_alias, "key": "rw", "iterations": iterations, "mode": "mix",
                  "writers": 0.3, "hold": 0.005, "log": str(log), "counter": str(counter),
                  "seed": n, "read_hold": 0.02}
                 for n in range(processes)], tmp_path / "barrier")
    records = []
    for line in log.read_text().splitlines():
        enter, leave, fencing, kind = line.split()
        records.append((int(enter), int(leave), int(fencing), kind))
    writers = [r for r in records if r[3] == "w"]
    readers = [r for r in records if r[3] == "r"]
    assert len(records) == processes * iterations and writers and readers
    overlaps = sum(
        1 for w in writers for other in records
        if other is not w and other[0] < w[1] and w[0] < other[1]
    )
    proof.record_contention("readers and writers", db_alias, processes, iterations, 1,
                            len(records), overlaps)
    assert overlaps == 0, "a writer held the key together with someone else"
    assert int(counter.read_text()) == len(writers), "a writer's update was lost"
    assert most_at_once(readers) >= 2, "readers never shared the key"
    assert fencing_out_of_order(records) == []
    assert len({r[2] for r in records}) == len(records)
    ordered = sorted(writers)
    assert all(a[2] < b[2] for a, b in pairwise(ordered))


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("db_alias", [a for a in DATABASE_ALIASES if a != "default"])
def test_round_trips(db_alias, monkeypatch):
    """Each step of an operation is one round trip on PostgreSQL and MariaDB (a _Run one
    statement, a _Script several): an exclusive pair costs what it did, a shared or
    semaphore acquisition one round trip, and a holder's release by its instance one (on
    PostgreSQL one statement each: a call of migration 0005's functions)."""
    from django_locks.backends.database import DatabaseLock, _Script

    calls: list[str] = []
    do = DatabaseLock._do

    def counted(self, step):
        calls.append("script" if isinstance(step, _Script) else "run")
        return do(self, step)

    monkeypatch.setattr(DatabaseLock, "_do", counted)
    backend = fresh(db_alias)
    backend.lock("trips", TTL).release()
    assert calls == (["run", "run"] if backend.vendor == "postgresql" else ["run"] * 3)
    holder = "run" if backend.operations.holding_alone() is not None else "script"
    for mode in ({"shared": True}, {"limit": 4}):
        calls.clear()
        backend.lock("trips", TTL, **mode).release()
        assert calls == [holder, holder], mode
    calls.clear()
    other = fresh(db_alias).lock("trips", TTL, limit=4)
    with pytest.raises(LockTimeoutError):
        fresh(db_alias).lock("trips", TTL, shared=True)
    assert calls == [holder, holder, "run"]  # a refusal reads what keeps it out
    calls.clear()
    backend.release_lock(None, "trips", owner=other.token)  # not this instance's holder
    assert calls == ["run", holder]


def test_an_exclusive_win_moved_by_a_semaphore_before_its_read_back_is_still_a_win(db_alias):
    """MariaDB has no RETURNING: an exclusive attempt upserts, then reads the row back. A
    semaphore admitted in between moves the new exclusive holder into the holders' table
    (the key row keeps no token): the attempt won all the same and must say so, or a
    holder nobody knows of keeps the key for its whole ttl. (Found by an outside attack:
    it failed within a few attempts on MariaDB.)"""
    stop = threading.Event()
    errors: list[BaseException] = []

    def semaphores() -> None:
        backend = fresh(db_alias)
        while not stop.is_set():
            try:
                with backend.lock("moved", 5_000, limit=2):
                    pass
            except LockTimeoutError:
                pass
            except BaseException as e:  # reported below
                errors.append(e)
                return

    thread = threading.Thread(target=semaphores)
    thread.start()
    backend = fresh(db_alias)
    try:
        for _ in range(300):
            if backend.try_acquire_lock(None, "moved", 5_000):
                backend.release_lock(None, "moved")
                continue
            # Refused: then no exclusive holder is left of this caller's (the only
            # exclusive one), whatever the semaphore holders did meanwhile.
            orphans = [h for h in backend.get_holders("moved") if not h.shared and h.limit == 1]
            assert orphans == [], orphans
    finally:
        stop.set()
        thread.join(30)
    assert errors == []


# ----------------------------------------------------------------------------- one clock


def test_an_extension_straddling_the_expiry_decides_on_one_reading(db_alias, using):
    """The transaction's statements run after the holder expired by the wall clock, on a
    clock reading taken before (the test hook waits in between): every statement treats
    the holder as alive at that reading, so the key row follows the extension and no
    exclusive acquisition gets in beside the extended holder. (Before: MariaDB and SQLite
    read the clock once per statement; the extension saw the holder alive and the key
    row expired, and left it expired.)"""
    from django.db import connections

    backend = locks[db_alias]
    lease = backend.lock("edge", 300, limit=2)
    clock = backend.operations.now_us

    def database_now() -> int:
        with connections[using].cursor() as cursor:
            cursor.execute(f"SELECT {clock}")
            return int(cursor.fetchone()[0])

    readings = []

    def past_the_expiry(now: int) -> None:
        readings.append(now)
        wait_until(lambda: database_now() > lease.info.expires_at_us + 20_000, timeout=10)

    backend._after_clock_read = past_the_expiry
    try:
        lease.extend(60_000)
    finally:
        backend._after_clock_read = None
    assert readings and readings[0] < lease.info.expires_at_us
    other = type(backend)("other", {"OPTIONS": {"using": using}})
    assert not other.try_acquire_lock(None, "edge", 1_000)
    assert [holder.token for holder in backend.get_holders("edge")] == [lease.token]
    lease.release()
    assert other.try_acquire_lock(None, "edge", 1_000)


def test_a_retried_attempt_of_an_admitted_token_is_its_own_slot(db_alias):
    """An attempt by a token that already holds the key (a retry whose first reply was
    lost) finds its own holder row: it is admitted as that holder (same fencing token),
    takes no second slot, and needs no free one."""
    backend = fresh(db_alias)
    lease = backend.lock("again", TTL, limit=2)
    for waiter in (False, True):
        attempt = backend._try_acquire("again", lease.token, TTL, None, Mode(limit=2), waiter)
        assert attempt.info is not None
        assert attempt.info.fencing_token == lease.info.fencing_token
    assert [h.token for h in locks[db_alias].get_holders("again")] == [lease.token]
    second = fresh(db_alias).lock("again", TTL, limit=2)  # the other slot is still free
    assert refused(db_alias, "again", limit=2)
    # Full: the retry is still admitted, as itself.
    attempt = backend._try_acquire("again", lease.token, TTL, None, Mode(limit=2), False)
    assert attempt.info is not None and attempt.info.fencing_token == lease.info.fencing_token
    second.release()
    lease.release()
    assert locks[db_alias].get_holders("again") == []


def test_an_admission_straddling_a_holders_expiry_decides_on_one_reading(db_alias, using):
    """A semaphore's admission whose statements run after one of the two holders of a
    limit of 2 expired by the wall clock, on a clock reading taken before (the test hook
    waits in between): the holder counts at that reading, so the attempt is refused; the
    next attempt, on a later reading, takes its slot (the expired holder stays listed as
    expired until purged)."""
    from django.db import connections

    lease = fresh(db_alias).lock("straddle", 300, limit=2)
    other = fresh(db_alias).lock("straddle", TTL, limit=2)
    clock = locks[db_alias].operations.now_us

    def database_now() -> int:
        with connections[using].cursor() as cursor:
            cursor.execute(f"SELECT {clock}")
            return int(cursor.fetchone()[0])

    readings: list[int] = []

    def past_the_expiry(now: int) -> None:
        readings.append(now)
        wait_until(lambda: database_now() > lease.info.expires_at_us + 20_000, timeout=10)

    backend = fresh(db_alias)
    backend._after_clock_read = past_the_expiry
    try:
        attempt = backend._try_acquire("straddle", new_token(), TTL, None, Mode(limit=2), False)
    finally:
        backend._after_clock_read = None
    assert readings and readings[0] < lease.info.expires_at_us
    assert attempt.info is None
    admitted = backend.lock("straddle", TTL, limit=2)
    assert {h.token for h in locks[db_alias].get_holders("straddle")} == {admitted.token, other.token}
    assert lease.token in [info.token for info in locks[db_alias].expired_locks()]
    admitted.release()
    other.release()


SERVER_ALIASES = [alias for alias, using in DATABASE_ALIASES.items()
                  if not settings.DATABASES[using]["ENGINE"].endswith("sqlite3")]


@pytest.mark.parametrize("server_alias", SERVER_ALIASES)
def test_a_listing_delayed_by_a_table_lock_decides_on_a_clock_after_its_snapshot(server_alias):
    """get_holders() decided which holders are live on the time its statement arrived
    (PostgreSQL statement_timestamp(), MariaDB UTC_TIMESTAMP(6)) but read a snapshot taken
    after a wait for a table lock: it listed an exclusive holder admitted during the wait
    beside the holders that had expired before it was. Found by an outside attack."""
    from django.db import connections

    backend = locks[server_alias]
    using = DATABASE_ALIASES[server_alias]
    backend.lock("k", 300)  # exclusive, then a semaphore beside it: both in the holders table
    backend.lock("k", 300, limit=2)
    blocker = connections[using]
    blocker.ensure_connection()
    raw = blocker.connection
    cursor = raw.cursor()
    table = blocker.ops.quote_name("django_locks_holder")
    mysql = blocker.vendor == "mysql"
    if mysql:
        cursor.execute(f"LOCK TABLES {table} WRITE")
    else:
        cursor.execute("BEGIN")
        cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    seen: dict = {}
    listing = threading.Thread(target=lambda: seen.update(holders=fresh(server_alias).get_holders("k")))
    try:
        listing.start()
        time.sleep(0.6)  # the listing waits for the table lock while both holders expire
        admitted = fresh(server_alias).lock("k", 5_000)  # rightly: both expired
    finally:
        cursor.execute("UNLOCK TABLES" if mysql else "ROLLBACK")
    listing.join(10)
    # Either the holders before the wait (the exclusive one and the semaphore holder its
    # own limit admitted beside it), or the one admitted after they expired: never both.
    tokens = [holder.token for holder in seen["holders"]]
    assert admitted.token not in tokens or tokens == [admitted.token], seen["holders"]
    admitted.release()


def test_expired_locks_reads_one_page_of_a_prefix_at_the_database(db_alias):
    """expired_locks(prefix=, limit=): the admin's page of expired holders, never all of
    them; exclusive and shared holders alike, by expiry then key; bad arguments refused
    before the database is asked."""
    backend = locks[db_alias]
    backend.purge()
    for n in range(4):
        backend.lock(f"exp:{n}", 1 + n)
    backend.lock("exp:shared", 1, shared=True)
    backend.lock("other:0", 1)
    live = backend.lock("exp:live", 60_000)
    wait_until(lambda: len(backend.expired_locks(prefix="exp:")) == 5, what="five holders expired")
    every = backend.expired_locks(prefix="exp:")
    assert [(i.expires_at, i.key) for i in every] == sorted((i.expires_at, i.key) for i in every)
    assert {i.key for i in every} == {"exp:0", "exp:1", "exp:2", "exp:3", "exp:shared"}
    page = backend.expired_locks(prefix="exp:", limit=3)
    assert [i.token for i in page] == [i.token for i in every[:3]]
    assert {i.key for i in backend.expired_locks(limit=100)} >= {i.key for i in every} | {"other:0"}
    assert backend.expired_locks(prefix="exp:_", limit=10) == []  # no LIKE wildcard
    for arguments, error in (({"limit": 0}, ValueError), ({"limit": "3"}, TypeError),
                             ({"prefix": 3}, TypeError), ({"prefix": "x" * 1000}, ValueError)):
        with pytest.raises(error):
            backend.expired_locks(**arguments)
    live.release()
    backend.purge()
    assert backend.expired_locks(prefix="exp:") == []
