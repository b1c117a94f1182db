"""MemoryLock: process-local locks, thread-safe, for tests and single-process development.

All instances of one alias in a process share one store (each thread has its own
instance, as with every backend). Nothing is shared between processes. Expiry uses the
monotonic clock; a waiter is woken by the release through a condition variable.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from django_locks.backends.base import BaseLock
from django_locks.values import WRITER_MARK_MS, Attempt, LockInfo, Mode, time_until_admitted


@dataclass
class _Entry:
    info: LockInfo
    deadline: float  # time.monotonic() at expiry


class _MemoryStore:
    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.entries: dict[str, dict[str, _Entry]] = {}  # key -> {token: holder}
        self.marks: dict[str, tuple[str, float]] = {}  # key -> (waiting writer, deadline)
        self.fencing: dict[str, int] = {}  # never purged: tokens only rise

    def live(self, key: str, now: float) -> list[_Entry]:
        """The holders of ``key`` whose ttl has not run out (expired ones are dropped)."""
        holders = self.entries.get(key)
        if not holders:
            return []
        live = [entry for entry in holders.values() if entry.deadline > now]
        if len(live) != len(holders):
            for entry in holders.copy().values():
                if entry.deadline <= now:
                    del holders[entry.info.token]
            if not holders:
                del self.entries[key]
        return live

    def holder(self, key: str, token: str, now: float) -> _Entry | None:
        entry = self.entries.get(key, {}).get(token)
        return entry if entry is not None and entry.deadline > now else None

    def mark(self, key: str, now: float) -> tuple[str, float] | None:
        mark = self.marks.get(key)
        if mark is not None and mark[1] <= now:
            del self.marks[key]
            return None
        return mark


_stores: dict[str, _MemoryStore] = {}
_stores_mutex = threading.Lock()
_stores_pid = os.getpid()


def _store(alias: str) -> _MemoryStore:
    with _stores_mutex:
        return _stores.setdefault(alias, _MemoryStore())


def _stores_after_fork() -> None:
    """A forked child is another process: it starts with no locks (its parent's live on in
    the parent) and with mutexes no thread of the parent can have left held. Once per
    process, whichever after-fork callback comes first (a module's or an instance's)."""
    global _stores, _stores_mutex, _stores_pid
    if _stores_pid != os.getpid():
        _stores, _stores_mutex, _stores_pid = {}, threading.Lock(), os.getpid()


os.register_at_fork(after_in_child=_stores_after_fork)


def _refusal(mode: Mode, holders: list[_Entry], mark: tuple[str, float] | None,
             now: float) -> int | None:
    """None if ``mode`` is admitted among ``holders``; else the ms until it could be by
    expiry alone (:func:`~django_locks.values.time_until_admitted`)."""
    left = time_until_admitted(
        mode,
        [(entry.deadline - now, entry.info.shared) for entry in holders],
        None if mark is None else mark[1] - now,
    )
    return None if left is None else max(0, int(left * 1000))


class MemoryLock(BaseLock):
    """Process-local locks. No OPTIONS."""

    does_io = False
    process_local = True

    def configure(self, options: dict[str, Any]) -> None:
        self._store = _store(self.alias)

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        _stores_after_fork()
        self._store = _store(self.alias)

    @staticmethod
    def _expiry(ttl: int) -> tuple[float, int]:
        """The deadline on the monotonic clock, and the expiry in µs since the epoch."""
        return time.monotonic() + ttl / 1000, time.time_ns() // 1000 + ttl * 1000

    def _try_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        store = self._store
        with store.condition:
            now = time.monotonic()
            holders = store.live(key, now)
            mark = store.mark(key, now)
            refused = _refusal(mode, holders, mark, now)
            if refused is not None:
                if waiter and not mode.shared:
                    store.marks[key] = (token, now + WRITER_MARK_MS / 1000)
                return Attempt(None, refused)
            if mark is not None and mark[0] == token:
                del store.marks[key]
            fencing_token = store.fencing.get(key, 0) + 1
            store.fencing[key] = fencing_token
            deadline, expires_at_us = self._expiry(ttl)
            info = LockInfo(
                key=key,
                token=token,
                fencing_token=fencing_token,
                correlation_id=correlation_id,
                acquired_at_us=expires_at_us - ttl * 1000,
                expires_at_us=expires_at_us,
                shared=mode.shared,
                limit=mode.limit,
            )
            store.entries.setdefault(key, {})[token] = _Entry(info, deadline)
            return Attempt(info)

    def _release(self, key: str, token: str) -> bool:
        store = self._store
        with store.condition:
            if store.holder(key, token, time.monotonic()) is None:
                return False
            holders = store.entries[key]
            del holders[token]
            if not holders:
                del store.entries[key]
            store.condition.notify_all()
            return True

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        store = self._store
        with store.condition:
            holder = store.holder(key, token, time.monotonic())
            if holder is None:
                return None
            holder.deadline, expires_at_us = self._expiry(ttl)
            holder.info = replace(holder.info, expires_at_us=expires_at_us)
            return expires_at_us

    def _unmark(self, key: str, token: str) -> None:
        store = self._store
        with store.condition:
            if store.marks.get(key, ("",))[0] == token:
                del store.marks[key]
                store.condition.notify_all()

    def _force_release(self, key: str) -> bool:
        store = self._store
        with store.condition:
            held = bool(store.live(key, time.monotonic()))
            store.entries.pop(key, None)
            store.marks.pop(key, None)
            store.condition.notify_all()
            return held

    @staticmethod
    def _measured(entry: _Entry, now: float) -> LockInfo:
        return replace(entry.info, remaining_ms=int((entry.deadline - now) * 1000))

    def _holders(self, key: str) -> list[LockInfo]:
        with self._store.condition:
            now = time.monotonic()
            return [self._measured(entry, now) for entry in self._store.live(key, now)]

    def _held(self) -> list[LockInfo]:
        store = self._store
        with store.condition:
            now = time.monotonic()
            return [
                self._measured(entry, now)
                for holders in store.entries.values()
                for entry in holders.values()
                if entry.deadline > now
            ]

    def _purge(self) -> int:
        store = self._store
        with store.condition:
            now = time.monotonic()
            before = sum(map(len, store.entries.values()))
            for key in list(store.entries):
                store.live(key, now)
            return before - sum(map(len, store.entries.values()))

    def clear(self) -> None:
        """Forget every lock and fencing counter of this alias, in every thread of the
        process: a clean slate between a project's own tests."""
        store = self._store
        with store.condition:
            store.entries.clear()
            store.marks.clear()
            store.fencing.clear()
            store.condition.notify_all()
        self._held_tokens.clear()

    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        store = self._store
        with store.condition:
            now = time.monotonic()
            if store.live(key, now) or store.mark(key, now) is not None:
                store.condition.wait(seconds)
