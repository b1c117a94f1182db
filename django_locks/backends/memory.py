"""MemoryLock: process-local locks, thread-safe, for tests and single-process development.

All instances of one alias in a process share one store (each thread has its own
instance, as with every backend). Nothing is shared between processes. Expiry uses the
monotonic clock; a waiter is woken by the release through a condition variable.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from django_locks.backends.base import BaseLock
from django_locks.values import Attempt, LockInfo


@dataclass
class _Entry:
    info: LockInfo
    deadline: float  # time.monotonic() at expiry


class _MemoryStore:
    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.entries: dict[str, _Entry] = {}
        self.fencing: dict[str, int] = {}  # never purged: tokens only rise

    def live(self, key: str, now: float) -> _Entry | None:
        entry = self.entries.get(key)
        return entry if entry is not None and entry.deadline > now else None


_stores: dict[str, _MemoryStore] = {}
_stores_mutex = threading.Lock()


def _store(alias: str) -> _MemoryStore:
    with _stores_mutex:
        return _stores.setdefault(alias, _MemoryStore())


class MemoryLock(BaseLock):
    """Process-local locks. No OPTIONS."""

    does_io = False
    process_local = True

    def configure(self, options: dict[str, Any]) -> None:
        self._store = _store(self.alias)

    @staticmethod
    def _expiry(ttl: int) -> tuple[float, int]:
        """The deadline on the monotonic clock, and the expiry in µs since the epoch."""
        return time.monotonic() + ttl / 1000, time.time_ns() // 1000 + ttl * 1000

    def _try_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None
    ) -> Attempt:
        store = self._store
        with store.condition:
            now = time.monotonic()
            holder = store.live(key, now)
            if holder is not None:
                return Attempt(None, int((holder.deadline - now) * 1000))
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
            )
            store.entries[key] = _Entry(info, deadline)
            return Attempt(info)

    def _release(self, key: str, token: str) -> bool:
        store = self._store
        with store.condition:
            holder = store.live(key, time.monotonic())
            if holder is None or holder.info.token != token:
                return False
            del store.entries[key]
            store.condition.notify_all()
            return True

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        store = self._store
        with store.condition:
            holder = store.live(key, time.monotonic())
            if holder is None or holder.info.token != token:
                return None
            holder.deadline, expires_at_us = self._expiry(ttl)
            holder.info = replace(holder.info, expires_at_us=expires_at_us)
            return expires_at_us

    def _force_release(self, key: str) -> bool:
        store = self._store
        with store.condition:
            holder = store.live(key, time.monotonic())
            store.entries.pop(key, None)
            store.condition.notify_all()
            return holder is not None

    @staticmethod
    def _measured(entry: _Entry, now: float) -> LockInfo:
        return replace(entry.info, remaining_ms=int((entry.deadline - now) * 1000))

    def _get(self, key: str) -> LockInfo | None:
        with self._store.condition:
            now = time.monotonic()
            holder = self._store.live(key, now)
            return self._measured(holder, now) if holder is not None else None

    def _held(self) -> list[LockInfo]:
        store = self._store
        with store.condition:
            now = time.monotonic()
            return [self._measured(entry, now) for entry in store.entries.values() if entry.deadline > now]

    def _purge(self) -> int:
        store = self._store
        with store.condition:
            now = time.monotonic()
            expired = [key for key, entry in store.entries.items() if entry.deadline <= now]
            for key in expired:
                del store.entries[key]
            return len(expired)

    def clear(self) -> None:
        """Forget every lock and fencing counter of this alias, in every thread of the
        process: a clean slate between a project's own tests."""
        store = self._store
        with store.condition:
            store.entries.clear()
            store.fencing.clear()
            store.condition.notify_all()
        self._holdings.clear()

    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        store = self._store
        with store.condition:
            if store.live(key, time.monotonic()) is not None:
                store.condition.wait(seconds)
