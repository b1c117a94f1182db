"""PostgreSQL wake-ups: one LISTEN connection per process and database alias, for every
waiter of DatabaseLock (a release NOTIFYs its key in the same statement)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from django_locks.backends.base import logger
from django_locks.backends.database.connection import LockConnection, detach
from django_locks.backends.database.operations import NOTIFY_CHANNEL


class Listener:
    """One LISTEN connection per process and PostgreSQL database alias, for every waiter.

    A daemon thread holds a private connection that LISTENs on :data:`NOTIFY_CHANNEL` and
    counts, per key somebody waits for, the notifications received (a generation). A
    waiter reads the generation before each attempt and, when the attempt finds the lock
    held, waits until the generation moves on: a release between its attempt and its wait
    is not missed. A notification lost anyway (the listening connection dropped) costs at
    most one bounded wait (:attr:`MAX_WAIT`), and the thread reconnects. Where LISTEN
    cannot work (PgBouncer in transaction mode: a probe notification never comes back, or
    a driver without ``notifies()``), it says so once in the log and waiters poll.
    """

    #: Longest wait for a notification before the waiter tries again anyway (s).
    MAX_WAIT = 0.25
    #: How long the probe notification may take to come back (s).
    PROBE_SECONDS = 2.0

    def __init__(self, using: str) -> None:
        self.using = using
        self.ready = threading.Event()  # listening, and the probe came back
        self.unusable = False  # LISTEN cannot work here: waiters poll
        self._condition = threading.Condition()
        self._generations: dict[str, list[int]] = {}  # key -> [generation, waiters]
        self._futures: dict[str, set[asyncio.Future]] = {}  # key -> async waiters' wake-ups
        self._raw: Any = None
        self._connection: LockConnection | None = None  # the listening one (or the probe's)
        self._sender: LockConnection | None = None
        self._probed = False  # a probe notification came back once
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"django_locks listener {using}",
                                        daemon=True)
        self._thread.start()

    # ---- waiters

    def register(self, key: str) -> None:
        with self._condition:
            self._generations.setdefault(key, [0, 0])[1] += 1

    def unregister(self, key: str) -> None:
        with self._condition:
            entry = self._generations.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._generations[key]

    def generation(self, key: str) -> int:
        with self._condition:
            return self._generations.get(key, (0,))[0]

    def wait(self, key: str, since: int, seconds: float) -> None:
        """Until a notification for ``key`` after generation ``since``, or ``seconds``."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._generations.get(key, (since,))[0] != since, min(seconds, self.MAX_WAIT)
            )

    async def await_change(self, key: str, since: int, seconds: float) -> None:
        """:meth:`wait` for an async waiter, holding no thread: the listening thread
        resolves the waiter's future through its event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._condition:
            if self._generations.get(key, (since,))[0] != since:
                return
            self._futures.setdefault(key, set()).add(future)
        # The future itself, resolved by the wake-up or by a timer: the waiting task is
        # woken by either one directly (asyncio.wait would add a waiter future, a hop).
        timer = loop.call_later(min(seconds, self.MAX_WAIT), _set_done, future)
        try:
            await future
        finally:
            timer.cancel()
            with self._condition:
                waiting = self._futures.get(key)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._futures[key]

    # ---- the listening thread

    def _run(self) -> None:
        delay = 0.05
        while True:
            connection = None
            try:
                connection = self._connection = LockConnection(self.using)
                connection.wrapper.connect()
                raw = connection.wrapper.connection
                if not callable(getattr(raw, "notifies", None)):  # psycopg 3's generator
                    return self._give_up("its driver cannot wait for notifications (psycopg 3 can)")
                raw.execute(f"LISTEN {NOTIFY_CHANNEL}")
                self._raw = raw
                if not self._probed and not self._probe(raw):
                    # Through transaction pooling the LISTEN stays on a pooled server
                    # connection, and its next clients would get the notifications: take
                    # it back (a pooler reuses the connection just released first, LIFO).
                    raw.execute(f"UNLISTEN {NOTIFY_CHANNEL}")
                    if self._stopped:  # stopped while probing: nothing was learnt
                        return None
                    return self._give_up(
                        "a notification sent on it never came back (a pooler in transaction "
                        "mode, such as PgBouncer, cannot LISTEN); set OPTIONS 'notify': False "
                        "on a lock alias of a transaction-pooled database"
                    )
                self._probed = True  # once: a reconnect does not probe again
                self.ready.set()
                delay = 0.05
                while not self._stopped:
                    for notification in raw.notifies(timeout=1.0):
                        self._wake(notification.payload)
            except Exception as e:  # a dropped connection: reconnect; waiters poll meanwhile
                self.ready.clear()
                if not self._stopped:
                    logger.warning("lock notifications of database %r interrupted: %s; "
                                   "reconnecting", self.using, e)
            finally:
                self._raw = None
                if connection is not None:
                    connection.abandon()
            if self._stopped:
                self.ready.clear()
                return
            with self._condition:  # wake every waiter: what was missed is re-read
                for entry in self._generations.values():
                    entry[0] += 1
                self._condition.notify_all()
                for key in self._futures:
                    self._resolve(key)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def connections(self) -> list[Any]:
        """What this listener has open (kept referenced across a fork)."""
        return [c for c in (self._connection, self._sender) if c is not None]

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the listening connection (while connected)."""
        raw = self._raw
        return None if raw is None else raw.info.backend_pid

    def stop(self) -> None:
        """End the thread and its connection (from any thread)."""
        self._stopped = True
        raw = self._raw
        if raw is not None:
            try:
                raw.cancel()  # interrupts a blocking wait for notifications
            except Exception:
                pass
        self._thread.join(timeout=5)

    def _probe(self, raw: Any) -> bool:
        """Whether a notification sent by *another* connection reaches this one. Through
        a pooler in transaction mode the LISTEN stays on a server connection that this
        client no longer owns, and the probe never comes back."""
        probe = "\x01probe"  # no key holds a control character (and NUL cannot be sent)
        sender = self._sender = LockConnection(self.using)
        try:
            sender.wrapper.connect()
            sender.wrapper.connection.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, probe))
        finally:
            sender.abandon()
        deadline = time.monotonic() + self.PROBE_SECONDS
        while time.monotonic() < deadline and not self._stopped:
            for notification in raw.notifies(timeout=max(deadline - time.monotonic(), 0.01)):
                if notification.payload == probe:
                    return True
        return False

    def _give_up(self, why: str) -> None:
        self.unusable = True
        logger.warning(
            "DatabaseLock waiters on database %r poll instead of waiting for notifications: %s",
            self.using, why,
        )

    def _wake(self, key: str) -> None:
        with self._condition:
            entry = self._generations.get(key)
            if entry is not None:
                entry[0] += 1
                self._condition.notify_all()
                self._resolve(key)

    def _resolve(self, key: str) -> None:
        """Wake the async waiters of ``key`` (under the condition), each in its own loop."""
        for future in self._futures.get(key, ()):
            try:
                future.get_loop().call_soon_threadsafe(_set_done, future)
            except RuntimeError:  # its loop is closed: nobody waits on it any more
                pass


def _set_done(future: asyncio.Future) -> None:
    """In the future's own loop: an async waiter's wake-up (unless it gave up already)."""
    if not future.done():
        future.set_result(None)


_listeners: dict[tuple[str, int], Listener] = {}
_listeners_mutex = threading.Lock()


def listener_for(using: str) -> Listener:
    """This process's listener of database ``using`` (started on first use)."""
    key = (using, os.getpid())
    listener = _listeners.get(key)
    if listener is None:
        with _listeners_mutex:
            listener = _listeners.get(key)
            if listener is None:
                listener = _listeners[key] = Listener(using)
    return listener


@dataclass
class Waiting:
    """The key a call waits for through a listener, with the generation it last read."""

    key: str
    listener: Listener
    generation: int


#: The wait of this call: per thread for sync waiters, per task for async ones (their
#: attempts run in worker threads with the task's context).
current_wait: contextvars.ContextVar[Waiting | None] = contextvars.ContextVar(
    "django_locks_waiting", default=None
)

_forking: list[Any] = []
_inherited: list[Any] = []


def stop_all_listeners() -> None:
    """Stop this process's listeners (from any thread)."""
    with _listeners_mutex:
        listeners = list(_listeners.values())
        _listeners.clear()
    for listener in listeners:
        listener.stop()


def _before_fork() -> None:
    # Strong references across the fork (see connection._before_fork).
    _forking[:] = list(_listeners.values())


def _after_fork_in_parent() -> None:
    _forking.clear()


def _after_fork_in_child() -> None:
    """A forked child starts listeners of its own on first use; the parent's connections
    are pointed at /dev/null and kept referenced (see connection.detach)."""
    global _listeners, _listeners_mutex
    detach([connection for listener in _forking for connection in listener.connections()])
    _inherited.extend(_forking)
    _forking.clear()
    _listeners = {}
    _listeners_mutex = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
