"""What a process remembers beside the storage: the tokens each backend instance holds
(:class:`HeldTokens`), the acquisitions whose outcome is unknown (the settler,
:class:`UnsettledAcquisitions`: one daemon thread per process), and what a forked child
drops of both.

See ``docs/internals/acquisition.md`` for why each exists.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, NamedTuple

from django_locks.exceptions import LockBackendError

if TYPE_CHECKING:
    from django_locks.backends.base import BaseLock

logger = logging.getLogger("django_locks")


class HeldTokens:
    """The tokens one backend instance holds each key with, until their leases expire.

    ``release_lock(correlation_id, key)`` without ``owner`` releases the one token found
    here. Expired entries (by this process's monotonic clock) are pruned whenever the map
    has doubled since the last pruning, so it cannot grow without bound.
    """

    #: Pruning starts once this many tokens are remembered.
    PRUNE_FLOOR = 1024

    def __init__(self) -> None:
        self._deadlines_by_key: dict[str, dict[str, float]] = {}  # key -> {token: deadline}
        self._token_count = 0
        self._mutex = threading.Lock()
        self._prune_at_count = self.PRUNE_FLOOR

    def __len__(self) -> int:
        return self._token_count

    def remember(self, key: str, token: str, ttl: int, exclusive: bool = True) -> None:
        """``token`` now holds ``key``; alone, when ``exclusive`` (any other token this
        instance remembered for it was released by someone else)."""
        with self._mutex:
            deadlines = self._deadlines_by_key.setdefault(key, {})
            if exclusive and deadlines:
                self._token_count -= len(deadlines)
                deadlines.clear()
            self._token_count += token not in deadlines
            deadlines[token] = time.monotonic() + ttl / 1000
            if self._token_count >= self._prune_at_count:
                self._prune()

    def _prune(self) -> None:
        now = time.monotonic()
        self._deadlines_by_key = {
            key: live for key, deadlines in self._deadlines_by_key.items()
            if (live := {t: d for t, d in deadlines.items() if d > now})
        }
        self._token_count = sum(map(len, self._deadlines_by_key.values()))
        self._prune_at_count = max(self.PRUNE_FLOOR, 2 * self._token_count)

    def renewed(self, key: str, token: str, ttl: int) -> None:
        """``token``'s lease on ``key`` now runs ``ttl`` ms from now (if remembered)."""
        with self._mutex:
            deadlines = self._deadlines_by_key.get(key)
            if deadlines is not None and token in deadlines:
                deadlines[token] = time.monotonic() + ttl / 1000

    def tokens_for(self, key: str) -> list[str]:
        """The tokens this instance holds ``key`` with, whose leases have not expired."""
        now = time.monotonic()
        with self._mutex:
            deadlines = self._deadlines_by_key.get(key, {})
            return [token for token, deadline in deadlines.items() if deadline > now]

    def forget(self, key: str, token: str | None = None) -> None:
        """Drop ``key`` (only its ``token``, when given)."""
        with self._mutex:
            deadlines = self._deadlines_by_key.get(key)
            if deadlines is None:
                return
            if token is None:
                self._token_count -= len(deadlines)
                del self._deadlines_by_key[key]
            elif deadlines.pop(token, None) is not None:
                self._token_count -= 1
                if not deadlines:
                    del self._deadlines_by_key[key]

    def clear(self) -> None:
        with self._mutex:
            self._deadlines_by_key.clear()
            self._token_count = 0


class UnsettledToken(NamedTuple):
    """A token that may hold ``key`` without its caller knowing, until ``deadline``."""

    backend: BaseLock
    key: str
    token: str
    deadline: float  # time.monotonic() at which its ttl has run out anyway


class UnsettledAcquisitions:
    """The settler: releases the tokens of acquisitions whose outcome is unknown, once the
    backend answers.

    A daemon thread, started when a token is handed over and ending when none is left,
    retries a compare-and-delete by token (``_release``) with a short backoff, until it
    answers or the token's ttl has run out.
    """

    RETRY_MIN = 0.02
    RETRY_MAX = 0.5

    def __init__(self) -> None:
        self._pending: list[UnsettledToken] = []
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, backend: BaseLock, key: str, token: str, ttl: int) -> None:
        with self._mutex:
            self._pending.append(UnsettledToken(backend, key, token, time.monotonic() + ttl / 1000))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="django_locks settler", daemon=True
                )
                self._thread.start()

    def __len__(self) -> int:
        return len(self._pending)

    def _after_fork_in_child(self) -> None:
        """The parent's pending tokens and thread are the parent's (and its mutex may have
        been held by a thread that does not exist in the child)."""
        self._pending = []
        self._mutex = threading.Lock()
        self._thread = None

    def _run(self) -> None:
        delay = self.RETRY_MIN
        used: set[BaseLock] = set()  # closed when the thread ends (per-thread connections)
        try:
            while True:
                with self._mutex:
                    if not self._pending:
                        self._thread = None
                        return
                    pending = list(self._pending)
                settled = [entry for entry in pending if self._settle(entry, used)]
                with self._mutex:
                    self._pending = [entry for entry in self._pending if entry not in settled]
                    delay = self.RETRY_MIN if settled else min(delay * 2, self.RETRY_MAX)
                time.sleep(delay)
        finally:
            for backend in used:
                backend.close()

    @staticmethod
    def _settle(entry: UnsettledToken, used: set[BaseLock]) -> bool:
        """One try; True when nothing is left to do for this token."""
        backend, key, token, deadline = entry
        if time.monotonic() >= deadline:
            return True  # expired by itself
        used.add(backend)
        try:
            won = backend._release(key, token)
        except LockBackendError:
            return False  # still unreachable: retry
        except Exception:
            logger.exception("could not settle lock %r (alias=%s)", key, backend.alias)
            return True
        if won:
            logger.warning(
                "an acquisition of lock %r that failed with a backend error had taken it after "
                "all; released it (alias=%s)", key, backend.alias,
            )
        return True


#: The process's one settler of acquisitions whose outcome is unknown.
unsettled = UnsettledAcquisitions()

#: Every backend instance of this process (for :func:`_after_fork_in_child`).
live_backends: weakref.WeakSet[BaseLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (gunicorn ``--preload``, Celery's prefork pool, ``multiprocessing``)
    starts with nothing of its parent's: no settler thread or pending tokens, and each
    backend instance drops its held tokens and what it opened (its own
    ``_after_fork_in_child``), sending nothing on the parent's sockets."""
    unsettled._after_fork_in_child()
    for backend in list(live_backends):
        backend._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
