"""Fair handoff on MariaDB/MySQL and SQLite, where waiters poll: the bookkeeping of the
waiting calls (how it works: docs/internals/database.md, "Fair handoff")."""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

#: How long a release leaves a row that a waiter waits for reserved for waiters (µs):
#: two whole backoff steps of a polling waiter (``BaseLock.poll_interval_max``): one in
#: which each waiter polls, one more for a slow commit, SQLite's busy handler and the
#: scheduler of a loaded machine (with one step, SQLite's releaser re-took 60-90 % under
#: load, 35-45 % with two).
FAIR_RESERVE_US = 20_000


class _Entry(NamedTuple):
    since: int  # the fencing token from which on a reservation is this call's
    touched: float  # time.monotonic() of its last attempt


class WaitingCalls:
    """The waiting calls (timeout > 0) of one backend instance that found their key taken,
    by their token (one per call, the same in each of its attempts), each with the
    fencing token from which on a reservation is its own: the row's, if it was held (this
    call waits since before its release), else the next one (the row was already
    reserved). An entry goes when its call wins; those of calls that gave up are pruned
    once untouched for :attr:`STALE` s."""

    STALE = 5.0
    PRUNE_FLOOR = 64

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._mutex = threading.Lock()
        self._prune_at = self.PRUNE_FLOOR

    def since(self, token: str) -> int | None:
        """None for a call's first attempt; else the fencing token it waits since."""
        if token not in self._entries:
            return None
        with self._mutex:
            entry = self._entries.get(token)
            if entry is not None:
                self._entries[token] = _Entry(entry.since, time.monotonic())
                return entry.since
        return None

    def failed(self, token: str, fencing_token: int, held: bool) -> None:
        """The first attempt of ``token`` failed on a row at ``fencing_token``, held or not
        (a reservation)."""
        since = int(fencing_token) + (0 if held else 1)
        with self._mutex:
            self._entries.setdefault(token, _Entry(since, time.monotonic()))
            if len(self._entries) >= self._prune_at:
                oldest = time.monotonic() - self.STALE
                self._entries = {t: e for t, e in self._entries.items() if e.touched > oldest}
                self._prune_at = max(self.PRUNE_FLOOR, 2 * len(self._entries))

    def won(self, token: str) -> None:
        with self._mutex:
            self._entries.pop(token, None)
