"""Shared locks and semaphores: the one admission rule of docs/contract.md, checked the same
way on every backend, and writers not starved by a steady stream of readers (readers in
OS processes on the backends that processes share)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from django_locks import locks
from django_locks.exceptions import LockNotHeldError, LockTimeoutError
from tests.helpers import ROOT, dead_writer_mark, subprocess_env

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit

TTL = 60_000


def refuses_shared(backend) -> bool:
    """The cache.add fallback has no shared locks: there the test is that it says so
    (NotImplementedError, nothing taken); True then, and the caller stops."""
    if backend.supports_shared:
        return False
    with pytest.raises(NotImplementedError, match="shared"):
        backend.lock("refused", TTL, shared=True)
    assert backend.get_holders("refused") == []
    return True


def test_semaphore_admits_n_then_refuses(alias):
    backend = locks[alias]
    leases = [backend.lock("sem", TTL, limit=3, correlation_id=f"r{i}") for i in range(3)]
    assert [(lease.shared, lease.limit) for lease in leases] == [(False, 3)] * 3
    with pytest.raises(LockTimeoutError):
        backend.lock("sem", TTL, limit=3)
    assert not backend.try_acquire_lock(None, "sem", TTL)  # exclusive: limit 1
    holders = backend.get_holders("sem")
    assert sorted(h.token for h in holders) == sorted(lease.token for lease in leases)
    assert {(h.shared, h.limit) for h in holders} == {(False, 3)}
    assert [h.mode_label(len(holders)) for h in holders] == ["3 of 3"] * 3
    # Every holder has its own token and a rising fencing token.
    fencing = [lease.fencing_token for lease in leases]
    assert fencing == sorted(set(fencing))
    # A bigger N (a deploy that raised it) is admitted while old holders remain.
    bigger = backend.lock("sem", TTL, limit=4)
    assert bigger.fencing_token > fencing[-1]
    with pytest.raises(LockTimeoutError):
        backend.lock("sem", TTL, limit=4)
    # Releasing one holder by its token frees one place and touches no other holder.
    backend.release_lock(None, "sem", owner=leases[1].token)
    assert sorted(h.token for h in backend.get_holders("sem")) == sorted(
        [leases[0].token, leases[2].token, bigger.token]
    )
    again = backend.lock("sem", TTL, limit=4)
    assert again.fencing_token > bigger.fencing_token
    if backend.supports_enumeration:
        assert sorted(i.token for i in backend.held_locks() if i.key == "sem") == sorted(
            h.token for h in backend.get_holders("sem")
        )
    assert backend.force_release("sem") is True
    assert backend.get_holders("sem") == []
    assert backend.get_lock("sem") is None
    with pytest.raises(LockNotHeldError):
        leases[0].release()


def test_release_without_owner_needs_one_holder(alias):
    backend = locks[alias]
    first = backend.lock("two", TTL, limit=2)
    second = backend.lock("two", TTL, limit=2)
    with pytest.raises(ValueError, match="pass owner=TOKEN"):
        backend.release_lock(None, "two")
    with pytest.raises(ValueError, match="pass owner=TOKEN"):
        backend.extend_lock(None, "two", TTL)
    assert len(backend.get_holders("two")) == 2  # nothing changed
    backend.extend_lock(None, "two", TTL * 2, owner=second.token)
    longest = backend.get_lock("two")
    assert longest.token == second.token  # the holder that expires last
    first.release()
    backend.release_lock(None, "two")  # one holder left: no owner needed
    assert backend.get_holders("two") == []


def test_get_lock_answers_the_exclusive_holder_first(alias):
    """get_lock(): the exclusive holder when there is one, even if a semaphore holder
    admitted beside it expires later (the command's show --json answers the same)."""
    backend = locks[alias]
    exclusive = backend.lock("mixed", TTL)
    joined = backend.lock("mixed", TTL * 2, limit=3)
    assert {info.token for info in backend.get_holders("mixed")} == {exclusive.token, joined.token}
    assert backend.get_lock("mixed").token == exclusive.token
    exclusive.release()
    assert backend.get_lock("mixed").token == joined.token
    joined.release()


def test_shared_and_exclusive_exclude_each_other(alias):
    backend = locks[alias]
    if refuses_shared(backend):
        return
    readers = [backend.lock("rw", TTL, shared=True) for _ in range(3)]
    assert all(lease.shared and lease.limit == 1 for lease in readers)
    assert [h.mode_label() for h in backend.get_holders("rw")] == ["shared"] * 3
    assert not backend.try_acquire_lock(None, "rw", TTL)
    with pytest.raises(LockTimeoutError):
        backend.lock("rw", TTL, limit=2)  # three holders: a semaphore of 2 is full
    semaphore = backend.lock("rw", TTL, limit=5)  # readers count as holders, 3 < 5
    with pytest.raises(LockTimeoutError):
        backend.lock("rw", TTL, shared=True)  # a non-shared holder keeps readers out
    semaphore.release()
    for lease in readers:
        lease.release()
    writer = backend.lock("rw", TTL)
    with pytest.raises(LockTimeoutError):
        backend.lock("rw", TTL, shared=True)
    info = backend.get_lock("rw")
    assert (info.token, info.shared, info.limit) == (writer.token, False, 1)
    assert info.fencing_token > max(lease.fencing_token for lease in readers)
    writer.release()
    assert backend.lock("rw", TTL, shared=True).fencing_token > writer.fencing_token


def test_async_semaphore(alias):
    backend = locks[alias]

    async def run() -> list[int]:
        async with backend.alock("asem", TTL, limit=2) as one, backend.alock("asem", TTL, limit=2) as two:
            with pytest.raises(LockTimeoutError):
                await backend.alock("asem", TTL, limit=2)
            return [one.fencing_token, two.fencing_token]

    fencing = asyncio.run(run())
    assert fencing[0] < fencing[1]
    assert backend.get_holders("asem") == []


def test_writer_mark_holds_new_readers_back_and_goes(alias):
    """A waiting writer keeps new readers out; a writer that gives up takes its mark with
    it, and the mark of one that died mid-wait lapses by itself (WRITER_MARK_MS)."""
    backend = locks[alias]
    if refuses_shared(backend):
        return
    reader = backend.lock("mark", TTL, shared=True)
    waiting = threading.Event()

    def write() -> None:
        with pytest.raises(LockTimeoutError):
            locks.create_connection(alias).lock("mark", TTL, timeout=3_000)
        waiting.set()

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 2.5
    while not refused_shared(backend, "mark"):  # once the writer waits, readers wait behind
        assert time.monotonic() < deadline, "a waiting writer never held readers back"
    assert not waiting.is_set()
    writer.join(30)
    assert waiting.is_set()
    backend.lock("mark", TTL, shared=True).release()  # at once: its mark went with it
    dead_writer_mark(locks.create_connection(alias), "mark")  # a writer that died waiting
    assert refused_shared(backend, "mark")
    started = time.monotonic()
    late = backend.lock("mark", TTL, shared=True, timeout=5_000)  # admitted once it lapses
    assert time.monotonic() - started < 5
    assert late.fencing_token > reader.fencing_token
    assert backend.force_release("mark") is True


def refused_shared(backend, key: str) -> bool:
    try:
        backend.lock(key, TTL, shared=True).release()
    except LockTimeoutError:
        return True
    return False


# ----------------------------------------------------------------------------- starvation

READER = """
import json, os, sys, time
from pathlib import Path
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
import django
django.setup()
from django_locks import locks
config = json.loads(sys.argv[1])
backend = locks[config["alias"]]
stop, ready = Path(config["stop"]), Path(config["ready"])
sections = 0
while not stop.exists():
    with backend.lock(config["key"], 30_000, timeout=60_000, shared=True):
        ready.touch()
        sections += 1
        time.sleep(config["hold"])
print(sections)
"""


@pytest.mark.servers  # reader processes need a backend that processes share
def test_writer_is_not_starved_by_a_stream_of_readers(shared_alias, tmp_path):
    """Four reader processes keep the key read-held at every moment (each holds 50 ms and
    takes it again at once); without the writer mark an exclusive acquirer would wait
    forever. With it, each of five writers gets the key within a bound, and readers go on
    between writers."""
    backend = locks[shared_alias]
    if refuses_shared(backend):
        return
    stop = tmp_path / "stop"
    readers = []
    for i in range(4):
        config = {"alias": shared_alias, "key": "stream", "hold": 0.05, "stop": str(stop),
                  "ready": str(tmp_path / f"ready{i}")}
        readers.append(subprocess.Popen(
            [sys.executable, "-c", READER, json.dumps(config)], cwd=ROOT, env=subprocess_env(),
            stdout=subprocess.PIPE, text=True,
        ))
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
            assert time.monotonic() < deadline, "the readers never started"
            assert all(p.poll() is None for p in readers), "a reader died"
            time.sleep(0.01)
        waits = []
        for _ in range(5):
            started = time.monotonic()
            with backend.lock("stream", 30_000, timeout=10_000) as lease:
                waits.append(time.monotonic() - started)
                assert [h.token for h in backend.get_holders("stream")] == [lease.token]
            wait_until = time.monotonic() + 10
            while not backend.get_holders("stream"):  # readers are admitted again
                assert time.monotonic() < wait_until, "readers never came back after the writer"
                time.sleep(0.005)
    finally:
        stop.touch()
        sections = [int(p.communicate(timeout=60)[0] or 0) for p in readers]
    assert all(p.returncode == 0 for p in readers)
    assert min(sections) > 0
    # A writer waits for the readers holding when it came (50 ms each) plus its own
    # recheck; far below the 10 s timeout that a starved writer would hit.
    assert max(waits) < 2.0, waits
    Path(ROOT / "artifacts").mkdir(exist_ok=True)
    with open(ROOT / "artifacts" / "writer-waits.jsonl", "a") as out:
        out.write(json.dumps({"alias": shared_alias, "longest_ms": round(max(waits) * 1000, 1),
                              "median_ms": round(sorted(waits)[2] * 1000, 1)}) + "\n")


def test_writer_is_not_starved_in_process(tmp_path):
    """The same on MemoryLock, with reader threads (its locks live in one process)."""
    alias = "memory"
    backend = locks[alias]
    stop = threading.Event()
    sections = [0] * 4

    def read(i: int) -> None:
        mine = locks.create_connection(alias)
        while not stop.is_set():
            with mine.lock("stream", 30_000, timeout=60_000, shared=True):
                sections[i] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while not all(sections):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        started = time.monotonic()
        with backend.lock("stream", 30_000, timeout=10_000):
            waited = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert waited < 2.0


# ----------------------------------------------------------------------------- one clock

EDGE_ROUNDS = 200


def test_extensions_at_the_expiry_edge_never_leave_two_holders(alias):
    """A semaphore holder extends right at its expiry while another instance's exclusive
    try_acquire_lock polls through it: either the extension or the exclusive acquisition
    wins, never both, and the exclusive one never before the holder's expiry (MariaDB 24
    of 300, SQLite 12 of 1,100 before one clock per operation). Every backend here runs
    on this machine's clock, so the wall clock places a win before or after the expiry
    (within SLACK_US)."""
    import random

    from django_locks.exceptions import LockNotHeldError

    slack_us = 2_000
    backend = locks[alias]
    ttl = 15
    both, early = [], []
    extended = taken = 0
    for round_ in range(EDGE_ROUNDS):
        key = f"edge:{round_}"
        lease = backend.lock(key, ttl, limit=2)
        expires_at_us = lease.info.expires_at_us
        start = time.monotonic()
        won: list[int] = []

        def poll(key=key, start=start, won=won) -> None:
            other = locks[alias]  # this thread's own instance
            while time.monotonic() < start + (ttl + 15) / 1000:
                if other.try_acquire_lock(None, key, 60_000):
                    won.append(time.time_ns() // 1000)
                    return

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(max(0.0, start + (ttl + random.uniform(-3, 2)) / 1000 - time.monotonic()))
        try:
            lease.extend(60_000)
            ok = True
        except LockNotHeldError:
            ok = False
        poller.join()
        extended += ok
        taken += bool(won)
        if ok and won:
            both.append((key, [(h.token == lease.token, h.limit) for h in backend.get_holders(key)]))
        if won and won[0] < expires_at_us - slack_us:
            early.append((key, expires_at_us - won[0]))
    assert both == [] and early == []
    # The edge was reached from both sides (the cache.add fallback refuses any extension
    # within its safety margin of the expiry, a quarter of this ttl: it never extends).
    assert taken and (extended or alias == "locmem"), (extended, taken)
