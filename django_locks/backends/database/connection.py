"""DatabaseLock's private connections: one per process, thread and database alias; for
async callers on a driver with an async API (psycopg 3), idle ones per event loop and alias.

A private connection is a Django ``DatabaseWrapper`` of its own (never one of
``django.db.connections``) in autocommit mode, so a lock is independent of the caller's
transaction and never leaves session state on a shared or pooled connection. A forked
child never touches the parent's connections (see :func:`detach`); on SQLite a fork waits
for statements in flight (:class:`SQLiteForkGate`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple

from django.db import connections
from django.db.utils import load_backend

from django_locks.backends.database.vendors import features_of


class LockConnection:
    """This module's private connection to one database, for one thread.

    ``wrapper`` is a Django ``DatabaseWrapper`` of its own (never one of
    ``django.db.connections``) in autocommit mode; lock statements run on one raw
    cursor of it, reused while the raw connection lives.
    """

    def __init__(self, using: str) -> None:
        settings_dict = copy.deepcopy(connections[using].settings_dict)
        wrapper_class = load_backend(settings_dict["ENGINE"]).DatabaseWrapper
        options = settings_dict.setdefault("OPTIONS", {})
        self.features = features_of(wrapper_class.vendor)
        self.features.private_connection_options(options, wrapper_class.Database)
        settings_dict["AUTOCOMMIT"] = True
        self.using = using
        self.wrapper = wrapper_class(settings_dict, using)
        self._cursor: Any = None
        self._cursor_of: Any = None  # the raw connection ``_cursor`` belongs to
        self._script: Any = None
        self._script_of: Any = None
        self._synchronous: tuple[Any, str] | None = None  # (raw connection, SQLite mode)

    @property
    def connected(self) -> bool:
        return self.wrapper.connection is not None

    def cursor(self) -> Any:
        """The reused raw cursor (the connection must be open)."""
        raw = self.wrapper.connection
        if self._cursor_of is not raw:
            self._cursor, self._cursor_of = raw.cursor(), raw
        return self._cursor

    def script_cursor(self) -> Any:
        """A cursor that runs several statements in one round trip (several result sets),
        or None where the driver cannot (SQLite, psycopg2): they run one by one."""
        raw = self.wrapper.connection
        if self._script_of is not raw:
            self._script, self._script_of = self.features.script_cursor(raw), raw
        return self._script

    def sqlite_synchronous(self, mode: str) -> None:
        """SQLite: ``PRAGMA synchronous`` of the open connection, set when it changes (a
        private connection: nothing else sees it)."""
        raw = self.wrapper.connection
        if self._synchronous != (raw, mode):
            raw.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = (raw, mode)

    def close(self) -> None:
        """Close it now; a broken connection is just dropped. The next use reconnects."""
        try:
            self.wrapper.close()
        except Exception:
            self.wrapper.connection = None
        self._cursor = self._cursor_of = self._script = self._script_of = None

    def close_if_unusable_or_obsolete(self) -> None:
        """Apply ``CONN_MAX_AGE`` and health checks, like ``close_old_connections``."""
        try:
            self.wrapper.close_if_unusable_or_obsolete()
        except Exception:
            self.wrapper.connection = None
        if self.wrapper.connection is None:
            self._cursor = self._cursor_of = None

    def abandon(self) -> None:
        """Close the raw connection from any thread (Django's own close is thread-bound)."""
        raw, self.wrapper.connection = self.wrapper.connection, None
        self._cursor = self._cursor_of = None
        if raw is not None:
            try:
                raw.close()
            except Exception:
                pass


_thread_connections = threading.local()
_all_connections: weakref.WeakSet[LockConnection] = weakref.WeakSet()

class SQLiteForkGate:
    """SQLite statements in flight in this process, so that a fork waits until there are
    none: a child would inherit SQLite's in-memory record of the locks a statement of
    another thread holds (the WAL write lock, say), and since that statement never ends
    there, every connection the child opens to the file would wait for it ("database is
    locked"). Statements of other vendors need no gate (the child never reads the
    parent's sockets)."""

    #: Longest a fork waits for statements in flight (s); then it forks anyway.
    WAIT = 10.0

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0
        self._forking = False

    @contextlib.contextmanager
    def statement(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._forking)
            self._running += 1
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    def close(self) -> None:
        """Before a fork: no new statement starts, and those in flight end."""
        with self._condition:
            self._forking = True
            self._condition.wait_for(lambda: self._running == 0, self.WAIT)

    def open(self) -> None:
        with self._condition:
            self._forking = False
            self._condition.notify_all()


sqlite_gate = SQLiteForkGate()

#: In a forked child, the parent's connections (and listeners), kept referenced for good:
#: their drivers would otherwise, once collected, say goodbye on the parent's sockets
#: (libpq's Terminate, MySQL's COM_QUIT), ending the parent's sessions.
_inherited: list[Any] = []
_forking: list[Any] = []


def _before_fork() -> None:
    # SQLite's locks are per process, and its library keeps per-file lock state in memory
    # that a child would inherit and trust (it would skip locks it does not hold, or wait
    # for ones a statement of another thread holds): once no statement is in flight, the
    # parent closes its SQLite connections (in-process, nothing to say goodbye to) and
    # reopens them on next use, so that the child starts with none open.
    sqlite_gate.close()
    for connection in list(_all_connections):
        if connection.features.in_process:
            connection.abandon()
    # Strong references across the fork: the child clears the other threads' states (and
    # their thread-local connections) before any after-fork callback runs.
    _forking[:] = [connection.wrapper.connection for connection in _all_connections]
    _forking.extend(_all_async)


def _after_fork_in_parent() -> None:
    _forking.clear()
    sqlite_gate.open()


def _after_fork_in_child() -> None:
    """A forked child opens connections and listeners of its own on first use; it never
    touches (closes, cancels, reads) the parent's."""
    global _thread_connections, _all_connections, sqlite_gate, _async_pools, _all_async
    global _async_pools_mutex
    sqlite_gate = SQLiteForkGate()
    detach(_forking)
    _inherited.extend(_forking)
    _forking.clear()
    _thread_connections = threading.local()
    _all_connections = weakref.WeakSet()
    _async_pools = weakref.WeakKeyDictionary()
    _async_pools_mutex = threading.Lock()
    _all_async = weakref.WeakSet()


def detach(inherited: list[Any]) -> None:
    """In a forked child: point the descriptor of each inherited raw connection (sync or
    async; None: not connected) at
    /dev/null. Kept referenced, they are still freed when the child's interpreter shuts
    down (a worker ending with ``sys.exit``), and their drivers then say goodbye on the
    socket (mysqlclient's COM_QUIT ended the parent's session); now that goes nowhere.
    Closing the child's copy of a descriptor leaves the parent's socket open."""
    descriptors = []
    for raw in inherited:
        if raw is None:
            continue
        try:
            fileno = raw.fileno if hasattr(raw, "fileno") else raw._sock.fileno  # PyMySQL
            descriptors.append(int(fileno()))
        except Exception:  # closed, or a driver without a descriptor (SQLite)
            continue
    if not descriptors:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in descriptors:
            if fd != devnull:
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _this_thread() -> dict[str, LockConnection]:
    return _thread_connections.__dict__.setdefault("by_alias", {})


def lock_connection(using: str) -> LockConnection:
    """This thread's private connection to database ``using`` (created, not connected)."""
    per_thread = _this_thread()
    connection = per_thread.get(using)
    if connection is None:
        connection = per_thread[using] = LockConnection(using)
        _all_connections.add(connection)
    return connection


#: Async private connections open at most per event loop and database alias (in use or
#: idle): a task beyond waits, first come first served, for one to be given back.
ASYNC_CONNECTIONS = 8
#: event loop -> alias -> its connections; closed once the loop is collected or closed.
_async_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncConnections]] = (
    weakref.WeakKeyDictionary()
)
_async_pools_mutex = threading.Lock()  # the registry is shared by every thread's loop
_all_async: weakref.WeakSet[Any] = weakref.WeakSet()
_async_wrappers: dict[str, Any] = {}  # alias -> a DatabaseWrapper with the private settings


class AsyncLockConnection:
    """A raw async private connection (psycopg 3's ``AsyncConnection``) and its reused
    cursors: one task's at a time, idle in its event loop's pool between calls."""

    __slots__ = ("_cursor", "_script", "features", "raw")

    def __init__(self, raw: Any, features: Any) -> None:
        self.raw, self.features = raw, features
        self._cursor: Any = None
        self._script: Any = None

    def cursor(self) -> Any:
        if self._cursor is None:
            self._cursor = self.raw.cursor()
        return self._cursor

    def script_cursor(self) -> Any:
        """A cursor that runs several statements in one round trip."""
        if self._script is None:
            self._script = self.features.async_script_cursor(self.raw)
        return self._script

    def finish(self) -> None:
        self.features.async_finish(self.raw)


class AsyncConnections:
    """One event loop's async private connections to one database (used by that loop's
    tasks only): the idle ones, how many are open (in use, idle or being opened), and the
    tasks waiting for one while :data:`ASYNC_CONNECTIONS` are."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.idle: list[AsyncLockConnection] = []
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[AsyncLockConnection | None]] = (
            collections.deque()
        )

    async def take(self) -> AsyncLockConnection:
        if self.idle:
            return self.idle.pop()
        if self.open < ASYNC_CONNECTIONS:
            self.open += 1
        else:
            future: asyncio.Future[AsyncLockConnection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self.waiters.append(future)
            try:
                handed = await future
            except BaseException:
                if not future.cancelled() and future.done():  # handed over as it was cancelled
                    handed = future.result()
                    if handed is None:
                        self._freed()
                    else:
                        self.give_back(handed)
                else:
                    self.waiters.remove(future)
                raise
            if handed is not None:
                return handed
            # None: a connection was closed, and its place handed to this task.
        try:
            return await self._connect()
        except BaseException:
            self._freed()
            raise

    async def _connect(self) -> AsyncLockConnection:
        wrapper = _async_wrappers.get(self.using)
        if wrapper is None:
            wrapper = _async_wrappers[self.using] = LockConnection(self.using).wrapper
        features = features_of(wrapper.vendor)
        _close_async_of_closed_loops()
        connection = AsyncLockConnection(await features.aconnect(wrapper), features)
        _all_async.add(connection.raw)
        return connection

    def give_back(self, connection: AsyncLockConnection) -> None:
        """Its statements ran: to the first waiting task, or idle (closed if it cannot
        serve again: a transaction left open, a broken connection)."""
        if not connection.features.async_reusable(connection.raw):
            self.lose(connection)
        elif not self._hand(connection):
            self.idle.append(connection)

    def lose(self, connection: AsyncLockConnection) -> None:
        """Its statement failed or was interrupted: closed, never serving again."""
        connection.finish()
        self._freed()

    def _freed(self) -> None:
        """A place is free: to the first waiting task (it opens a connection), else one
        fewer open."""
        if not self._hand(None):
            self.open -= 1

    def _hand(self, handed: AsyncLockConnection | None) -> bool:
        """To the first task still waiting (a connection, or None: a place to open one).
        False if none waits."""
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(handed)
                return True
        return False

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().finish()
            self.open -= 1


def async_connections(using: str) -> AsyncConnections:
    """The running event loop's async private connections to database ``using``. Take one
    (``await take()``) for a step's statements; give it back (``give_back``) once they ran,
    or ``lose`` it if they failed or were interrupted. Never shared across event loops."""
    loop = asyncio.get_running_loop()
    with _async_pools_mutex:
        by_alias = _async_pools.get(loop)
        if by_alias is None:
            by_alias = _async_pools[loop] = {}
            weakref.finalize(loop, _close_idle, by_alias)
        pool = by_alias.get(using)
        if pool is None:
            pool = by_alias[using] = AsyncConnections(using)
    return pool


def _close_idle(by_alias: dict[str, AsyncConnections]) -> None:
    for pool in list(by_alias.values()):
        pool.close_idle()


def _close_async_of_closed_loops() -> None:
    """Close the idle async connections of event loops that have closed (``asyncio.run``
    ended): no task of theirs can use them again."""
    with _async_pools_mutex:
        closed = [by_alias for loop, by_alias in list(_async_pools.items()) if loop.is_closed()]
    for by_alias in closed:
        _close_idle(by_alias)


def close_thread_lock_connections() -> None:
    """Close this thread's lock connections."""
    for connection in _this_thread().values():
        connection.close()


def abandon_all_lock_connections() -> None:
    """Close every private lock connection of this process, from any thread."""
    for connection in list(_all_connections):
        connection.abandon()
    with _async_pools_mutex:
        pools = list(_async_pools.values())
    for by_alias in pools:
        _close_idle(by_alias)
    _async_wrappers.clear()  # the next async connection reads the settings again


def execute(connection: LockConnection, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Result]:
    """Run ``statements`` (SQL, parameters) on a private connection, in one round trip
    where the driver can; the rows and rowcount of each."""
    cursor = connection.script_cursor()
    results: list[Result] = []
    if cursor is None:  # one statement at a time (in-process SQLite, psycopg2)
        cursor = connection.cursor()
        for sql, params in statements:
            cursor.execute(sql, params)
            results.append(Result(cursor.fetchall() if cursor.description else [], cursor.rowcount))
        return results
    cursor.execute(";\n".join(sql for sql, _ in statements),
                   tuple(p for _, params in statements for p in params))
    while True:
        results.append(Result(cursor.fetchall() if cursor.description else [], cursor.rowcount))
        if not cursor.nextset():
            break
    return results


async def aexecute(connection: AsyncLockConnection,
                   statements: list[tuple[str, tuple[Any, ...]]]) -> list[Result]:
    """:func:`execute` on an async private connection, in one round trip."""
    cursor = connection.script_cursor()
    await cursor.execute(";\n".join(sql for sql, _ in statements),
                         tuple(p for _, params in statements for p in params))
    results: list[Result] = []
    while True:
        results.append(Result(await cursor.fetchall() if cursor.description else [], cursor.rowcount))
        if not cursor.nextset():
            break
    return results


class Result(NamedTuple):
    """What one statement returned."""

    rows: list[Any]
    rowcount: int
