"""DatabaseLock: locks as rows of this app's table, on PostgreSQL, MariaDB/MySQL and SQLite.

How it keeps the contract:

* **Atomic acquisition.** One upsert takes a free or expired row, or inserts a new one:
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired RETURNING ...`` on PostgreSQL and
  SQLite, ``INSERT ... ON DUPLICATE KEY UPDATE col = IF(expired, new, col)`` followed by a
  read of the row on MariaDB/MySQL (which has no RETURNING for upserts). No read-then-write.
* **The database's clock.** Every time (acquired, expires, "now") is computed in SQL, in
  microseconds since the Unix epoch (UTC), so app servers with skewed clocks agree.
* **Independent of the caller's transaction.** Lock statements run on a private
  connection of this module, one per thread and database alias, in autocommit mode: a
  lock taken inside ``transaction.atomic()`` is visible to everyone at once, and a
  rollback of the caller's transaction neither drops it nor undoes its release. On
  SQLite the private connection switches the file to WAL mode; a lock write waits for a
  write transaction the caller holds open on the same file for at most the database's
  ``timeout`` OPTION (5 s by default) and then raises ``LockBackendError``.
* **Fencing.** A row stays after release and keeps its counter; an acquisition sets
  ``fencing_token = max(previous + 1, now_us)``, so a key's tokens rise across releases,
  expiries and force releases, and also after :meth:`~DatabaseLock.purge` deleted the row
  (purge only deletes rows expired for over a minute, so the clock floor is above them).
* **Shared locks and semaphores.** Their holders are rows of a second table, admitted
  in SQL within one short transaction that first locks the key's row (see
  :class:`DatabaseLock`).
* **Reconnects.** A failing statement raises ``LockBackendError`` and drops the private
  connection; the next call opens a new one.
* **Poolers.** The private connection never leaves session state behind, so it can share
  a pooler such as PgBouncer in transaction mode with other clients: no session-level
  ``SET`` (``durable: False`` sets ``synchronous_commit`` for each statement's own
  transaction only), no server-side prepared statements (psycopg's ``prepare_threshold``
  is forced off on it, whatever the alias's OPTIONS say), and not a connection of
  Django's own pool (``OPTIONS["pool"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import importlib
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from django.apps import apps
from django.core.checks import CheckMessage, Error
from django.db import Error as DjangoDatabaseError
from django.db import connections
from django.db.utils import load_backend

from django_locks.backends.base import BaseLock, logger
from django_locks.exceptions import InvalidLockBackendError, LockBackendError
from django_locks.values import WRITER_MARK_MS, Attempt, LockInfo, Mode

#: Purge deletes only rows that expired longer ago than this (microseconds).
PURGE_AFTER_US = 60 * 1_000_000

#: MariaDB/MySQL and SQLite: how long a release leaves a row that a waiter waits for
#: reserved for waiters (microseconds): two whole backoff steps of a polling waiter
#: (``BaseLock.poll_interval_max``): one in which each waiter polls, one more for a slow
#: commit, SQLite's busy handler and the scheduler of a loaded machine (with one step,
#: SQLite's releaser re-took 60-90 % under load, 35-45 % with two). See DatabaseLock.
FAIR_RESERVE_US = 20_000

_SUPPORTED_VENDORS = ("postgresql", "mysql", "sqlite")

#: Database backends of a supported vendor that DatabaseLock cannot run on (with why).
_UNSUPPORTED_ENGINES = {
    "mysql.connector.django": (
        "mysql-connector-python's own Django backend cannot run several statements in one "
        "round trip; use ENGINE 'django.db.backends.mysql' with mysqlclient, or with PyMySQL "
        "(pymysql.install_as_MySQLdb())"
    ),
}

#: Stands for "now" in the statements of a transaction on holders (see
#: :meth:`DatabaseLock._script`): replaced by the one reading of the database clock that
#: the transaction takes once it has locked the key row, as an integer literal (µs), so
#: that every statement of an operation decides on the same instant.
NOW_US = "/*now_us*/"

# --------------------------------------------------------------------------- connections


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
        if wrapper_class.vendor == "mysql":
            # Keys may hold any Unicode character, emoji included.
            options["charset"] = "utf8mb4"
            # Several statements in one round trip (a transaction on holders): mysqlclient
            # allows them whatever the flags say, PyMySQL only when asked. FOUND_ROWS as
            # Django sets it (an UPDATE counts the rows it matched).
            client = importlib.import_module(f"{wrapper_class.Database.__name__}.constants.CLIENT")
            options["client_flag"] = (
                options.get("client_flag", client.FOUND_ROWS)
                | client.MULTI_STATEMENTS | client.MULTI_RESULTS
            )
        elif wrapper_class.vendor == "postgresql":
            # A private connection, not one of Django's pool (Django 5.1+), so nothing of
            # it goes back to a pool that Django's own connections share.
            options.pop("pool", None)
            if getattr(wrapper_class.Database, "__name__", "") == "psycopg":
                # Never server-side prepared statements: behind PgBouncer in transaction
                # mode the next statement may run on another server connection, where a
                # prepared statement is missing or clashes ("_pg3_0 already exists").
                options["prepare_threshold"] = None
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
            self._script, self._script_of = None, raw
            if self.wrapper.vendor == "mysql":
                self._script = raw.cursor()  # multi-statements enabled (see __init__)
            elif self.wrapper.vendor == "postgresql" and hasattr(raw, "pipeline"):
                import psycopg

                # Client-side binding sends the statements as one simple query (a
                # server-side binding alias's own cursors could not).
                self._script = psycopg.ClientCursor(raw)
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
        if connection.wrapper.vendor == "sqlite":
            connection.abandon()
    # Strong references across the fork: the child clears the other threads' states (and
    # their thread-local connections) before any after-fork callback runs.
    _forking[:] = [*_all_connections, *_listeners.values()]
    for listener in _listeners.values():
        _forking.extend(listener.connections())


def _after_fork_in_parent() -> None:
    _forking.clear()
    sqlite_gate.open()


def _after_fork_in_child() -> None:
    """A forked child opens connections and listeners of its own on first use; it never
    touches (closes, cancels, reads) the parent's."""
    global _thread_connections, _all_connections, _listeners, _listeners_mutex, sqlite_gate
    sqlite_gate = SQLiteForkGate()
    _detach([connection for connection in _forking if isinstance(connection, LockConnection)])
    _inherited.extend(_forking)
    _forking.clear()
    _thread_connections = threading.local()
    _all_connections = weakref.WeakSet()
    _listeners = {}
    _listeners_mutex = threading.Lock()


def _detach(inherited: list[LockConnection]) -> None:
    """In a forked child: point the descriptor of each inherited raw connection at
    /dev/null. Kept referenced, they are still freed when the child's interpreter shuts
    down (a worker ending with ``sys.exit``), and their drivers then say goodbye on the
    socket (mysqlclient's COM_QUIT ended the parent's session); now that goes nowhere.
    Closing the child's copy of a descriptor leaves the parent's socket open."""
    descriptors = []
    for connection in inherited:
        raw = connection.wrapper.connection
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


def close_thread_lock_connections() -> None:
    """Close this thread's lock connections."""
    for connection in _this_thread().values():
        connection.close()


def close_all_lock_connections() -> None:
    """Close every private lock connection of this process, from any thread, and stop
    the notification listeners."""
    with _listeners_mutex:
        listeners = list(_listeners.values())
        _listeners.clear()
    for listener in listeners:
        listener.stop()
    for connection in list(_all_connections):
        connection.abandon()


# --------------------------------------------------------------------------- wake-ups


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
        future = asyncio.get_running_loop().create_future()
        with self._condition:
            if self._generations.get(key, (since,))[0] != since:
                return
            self._futures.setdefault(key, set()).add(future)
        try:
            await asyncio.wait({future}, timeout=min(seconds, self.MAX_WAIT))
        finally:
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


#: The key this call waits for through a listener, with the generation it last read:
#: [key, listener, generation]. A context variable: per thread for sync waiters, per task
#: for async ones (their attempts run in worker threads with the task's context).
_WAITING: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "django_locks_waiting", default=None
)


# --------------------------------------------------------------------------- SQL per vendor


class LockSQL:
    """The statements of DatabaseLock for one database vendor.

    Subclasses set ``now_us``, the database clock in microseconds since the Unix epoch
    (UTC), constant within one statement, and what differs in their dialect.

    ``durable=False`` asks the writes not to wait for the disk where the vendor can say
    so for one statement's own transaction (:attr:`nosync`): never as session state. A
    holder's release never waits for it, durable or not (see ``r`` in ``__init__``).
    """

    now_us = ""
    #: The one reading of the clock a transaction on holders takes once the key row is
    #: locked (a statement of its own: evaluated after the lock was granted).
    read_clock = ""
    #: Statements that open the transaction of a read deciding which holders are live
    #: (``holders``, ``held``, ``expired``), where its snapshot would otherwise be taken
    #: after its clock reading (MariaDB/MySQL: the statement's time is when it started,
    #: before a wait for a table lock, say). Empty: one statement reads the clock after
    #: its snapshot (SQLite) or is written to (PostgreSQL).
    snapshot_read: tuple[str, ...] = ()
    greatest = "GREATEST"
    #: The driver's parameter placeholder (statements run on the raw DB-API cursor).
    placeholder = "%s"
    #: Whether the upsert and the extend return the row they wrote (else it is read back).
    returning = True
    #: An integer expression worth 0 whose evaluation makes the statement's transaction
    #: commit without waiting for the disk. Each write statement of a non-durable alias
    #: adds it to a value it writes (or to the condition that picks the rows it deletes),
    #: so it is evaluated before anything is written. Empty: this vendor has no such
    #: transaction-local switch.
    nosync = ""
    #: Fair handoff (see DatabaseLock): attempts of a waiting call mark the row waited for,
    #: and a release of a marked row leaves it reserved for waiters (not held: token NULL).
    fair = False

    #: What opens the transaction of a multi-statement operation on the holders.
    begin = "BEGIN ISOLATION LEVEL READ COMMITTED"
    #: Locks the key row for the rest of the transaction (SQLite: BEGIN IMMEDIATE did).
    lock_row_suffix = " FOR UPDATE"
    false = "FALSE"

    def __init__(self, table: str, key: str, durable: bool = True, holders: str | None = None) -> None:
        t, k, now, p = table, key, self.now_us, self.placeholder
        z = "" if durable or not self.nosync else f" + {self.nosync}"
        # A holder's own release never waits for the disk, durable or not: a release a
        # database crash forgets leaves the lock held until its ttl, as if its holder had
        # died (never two holders), and the next durable commit (the acquisition of the
        # waiter it let in, say) flushes it, the WAL being written in order. So a durable
        # handoff waits for one flush (the acquisition's), not two.
        r = f" + {self.nosync}" if self.nosync else ""
        reserve = (f" + CASE WHEN waiting_since_us IS NULL THEN 0 ELSE {FAIR_RESERVE_US} END"
                   if self.fair else "")
        self.read_clock = self.read_clock or f"SELECT {now}"
        self.holder_statements(t, holders or f"{key[0]}django_locks_holder{key[-1]}", k, z, r)
        self.columns = f"{k}, token, fencing_token, correlation_id, acquired_at_us, expires_at_us"
        self.insert = (
            f"INSERT INTO {t} ({k}, token, correlation_id, fencing_token, acquired_at_us, "
            f"expires_at_us) VALUES ({p}, {p}, {p}, {now}, {now}, {now} + {p}{z})"
        )
        self.acquire = self.upsert(t, k)
        # Frees the row only for its holder's token, and only while it is unexpired.
        self.release = (
            f"UPDATE {t} SET token = NULL, correlation_id = NULL, expires_at_us = {now}{reserve}{r} "
            f"WHERE {k} = {p} AND token = {p} AND expires_at_us > {now}"
        )
        # Every holder of the key goes (the holders' rows first, in the same transaction),
        # and its writer mark.
        self.force_release = (
            f"UPDATE {t} SET token = NULL, correlation_id = NULL, mark_token = NULL, "
            f"mark_expires_at_us = NULL, expires_at_us = {NOW_US}{z} "
            f"WHERE {k} = {p} AND token IS NOT NULL AND expires_at_us > {NOW_US}"
        )
        self.extend = (
            f"UPDATE {t} SET expires_at_us = {now} + {p}{z} "
            f"WHERE {k} = {p} AND token = {p} AND expires_at_us > {now}"
            + (" RETURNING expires_at_us" if self.returning else "")
        )
        # With the database clock's "now", for the holder's remaining life.
        # (A key row with no token and a future expiry stands for its holders' rows.)
        self.held = (
            f"SELECT {self.columns}, {now}, {self.false}, 1 FROM {t} "
            f"WHERE token IS NOT NULL AND expires_at_us > {now}"
        )
        self.holders = (
            f"{self.held} AND {k} = {p} UNION ALL {self.holder_columns} "
            f"WHERE {k} = {p} AND expires_at_us > {now}"
        )
        self.held = f"{self.held} UNION ALL {self.holder_columns} WHERE expires_at_us > {now}"
        # Holders that expired without releasing: shown until purged.
        self.expired = (
            f"SELECT {self.columns}, NULL, {self.false}, 1 FROM {t} "
            f"WHERE token IS NOT NULL AND expires_at_us <= {now} "
            f"UNION ALL {self.holder_columns.replace(now, 'NULL')} WHERE expires_at_us <= {now}"
        )
        self.read_row = f"SELECT {self.columns}, {now} FROM {t} WHERE {k} = {p}"
        # Rows expired long ago go; recently expired holders are cleared (the row, and its
        # fencing counter, stays a while: see PURGE_AFTER_US).
        self.purge = f"DELETE FROM {t} WHERE expires_at_us < {now} - {p}{z}"
        self.clear_expired = (
            f"UPDATE {t} SET token = NULL, correlation_id = NULL"
            + (f", expires_at_us = expires_at_us{z}" if z else "")
            + f" WHERE token IS NOT NULL AND expires_at_us <= {now}"
        )

    def holder_statements(self, t: str, h: str, k: str, z: str, r: str) -> None:
        """The statements of shared and semaphore holders (see DatabaseLock). Each
        operation runs them in one transaction that first locks the key row, so each
        one after the lock sees every change committed before it (READ COMMITTED: a
        snapshot per statement; SQLite: one writer at a time)."""
        # The transaction's statements decide on its one clock reading (NOW_US); the
        # statements that lock the key row and single-statement reads use the clock.
        clock, p, greatest = self.now_us, self.placeholder, self.greatest
        now = NOW_US
        columns = (f"{k}, token, fencing_token, correlation_id, acquired_at_us, expires_at_us")
        self.holder_columns = f"SELECT {columns}, {clock}, shared, holder_limit FROM {h}"
        insert = (f"INSERT INTO {h} (token, {k}, correlation_id, fencing_token, acquired_at_us, "
                  "expires_at_us, shared, holder_limit) ")
        # The key row, created free if missing, locked until the end of the transaction.
        self.lock_key = (
            f"INSERT INTO {t} ({k}, token, correlation_id, fencing_token, acquired_at_us, "
            f"expires_at_us) VALUES ({p}, NULL, NULL, {clock}, {clock}, {clock}{z}) "
            + self.touch(t, k)
        )
        self.lock_row = f"SELECT 1 FROM {t} WHERE {k} = {p}{self.lock_row_suffix}"
        mine = f"EXISTS (SELECT 1 FROM {h} o WHERE o.token = {p})"
        exclusive_live = f"{t}.token IS NOT NULL AND {t}.expires_at_us > {now}"
        # Params: token, correlation_id, ttl (µs), shared, limit, key, token, then the rule's.
        admit = (
            f"{insert}SELECT {p}, {k}, {p}, {greatest}(fencing_token + 1, {now}), {now}, "
            f"{now} + {p}, {p}, {p} FROM {t} WHERE {k} = {p} AND NOT {mine} AND "
        )
        # Fewer than N live holders of any mode (params: key, limit).
        self.admit_semaphore = (
            f"{admit}(CASE WHEN {exclusive_live} THEN 1 ELSE 0 END) + (SELECT COUNT(*) FROM "
            f"{h} o WHERE o.{k} = {p} AND o.expires_at_us > {now}) < {p}"
        )
        # No live non-shared holder and no live writer mark (params: key).
        self.admit_shared = (
            f"{admit}NOT ({exclusive_live}) AND NOT (mark_expires_at_us IS NOT NULL AND "
            f"mark_expires_at_us > {now}) AND NOT EXISTS (SELECT 1 FROM {h} o WHERE "
            f"o.{k} = {p} AND o.expires_at_us > {now} AND NOT o.shared)"
        )
        # A semaphore admitted next to the key row's exclusive holder: that one moves to
        # the holders' table, so that the key row stands for its holders (params: key, token).
        self.move_exclusive = (
            f"{insert}SELECT token, {k}, correlation_id, fencing_token, acquired_at_us, "
            f"expires_at_us, {self.false}, 1 FROM {t} WHERE {k} = {p} AND {exclusive_live} "
            f"AND {mine}"
        )
        # After an admission: the key row has no token (an exclusive holder it had was
        # moved, or had expired), the new fencing counter, and expires with the last
        # holder (it did with the others already) (params: token x2, key, token).
        own = f"(SELECT o.COLUMN FROM {h} o WHERE o.token = {p})"
        settle = (
            f"correlation_id = NULL, token = NULL, waiting_since_us = NULL, "
            f"fencing_token = {greatest}(fencing_token, {own.replace('COLUMN', 'fencing_token')}), "
            f"expires_at_us = {greatest}(expires_at_us, {own.replace('COLUMN', 'expires_at_us')}){z} "
            f"WHERE {k} = {p} AND {mine}"
        )
        self.settle = f"UPDATE {t} SET {settle}"
        # A non-shared waiter clears its own writer mark once admitted (params: token x2,
        # then settle's); refused, it sets (renews) it (params: token, key, token). MySQL
        # assigns left to right: the mark's expiry first, reading the old mark_token.
        self.settle_waiter = (
            f"UPDATE {t} SET mark_expires_at_us = CASE WHEN mark_token = {p} THEN NULL "
            f"ELSE mark_expires_at_us END, mark_token = CASE WHEN mark_token = {p} THEN NULL "
            f"ELSE mark_token END, {settle}"
        )
        self.mark_refused = (
            f"UPDATE {t} SET mark_expires_at_us = {now} + {WRITER_MARK_MS * 1000}{z}, "
            f"mark_token = {p} WHERE {k} = {p} AND NOT {mine}"
        )
        self.own_holder = (
            f"SELECT fencing_token, acquired_at_us, expires_at_us FROM {h} WHERE token = {p}"
        )
        # What keeps an acquisition out, in µs from now: 0 a non-shared holder, 1 a shared
        # one, 2 the writer mark (params: key x3). One statement: one clock.
        now = clock
        self.blockers = (
            f"SELECT expires_at_us - {now}, CASE WHEN shared THEN 1 ELSE 0 END FROM {h} "
            f"WHERE {k} = {p} AND expires_at_us > {now} "
            f"UNION ALL SELECT expires_at_us - {now}, 0 FROM {t} "
            f"WHERE {k} = {p} AND token IS NOT NULL AND expires_at_us > {now} "
            f"UNION ALL SELECT mark_expires_at_us - {now}, 2 FROM {t} "
            f"WHERE {k} = {p} AND mark_expires_at_us > {now}"
        )
        # An exclusive waiter kept out by shared or semaphore holders (params: token, key).
        # (One statement, outside any transaction on holders.)
        self.mark = (
            f"UPDATE {t} SET mark_expires_at_us = {now} + {WRITER_MARK_MS * 1000}{z}, "
            f"mark_token = {p} WHERE {k} = {p} AND token IS NULL AND expires_at_us > {now}"
        )
        now = NOW_US
        # Its own mark, once it won (params: key, token).
        self.unmark = (
            f"UPDATE {t} SET mark_token = NULL, mark_expires_at_us = NULL{z} "
            f"WHERE {k} = {p} AND mark_token = {p}"
        )
        # The key row's expiry follows its live holders (now when none is left), after a
        # release or an extension (params: key, key).
        self.recompute = (
            f"UPDATE {t} SET expires_at_us = COALESCE((SELECT MAX(o.expires_at_us) FROM {h} o "
            f"WHERE o.{k} = {p} AND o.expires_at_us > {now}), {now}){z} "
            f"WHERE {k} = {p} AND token IS NULL AND expires_at_us > {now}"
        )
        self.release_holder = (
            f"DELETE FROM {h} WHERE token = {p} AND {k} = {p} AND expires_at_us > {now}{r}"
        )
        self.extend_holder = (
            f"UPDATE {h} SET expires_at_us = {now} + {p}{z} "
            f"WHERE token = {p} AND {k} = {p} AND expires_at_us > {now}"
        )
        self.holder_expiry = f"SELECT expires_at_us FROM {h} WHERE token = {p}"
        # After a force release: a key row standing for holders (deleted just before) is
        # free at once; a reservation for waiters (marked waited for) stays (params: key).
        self.clear_standing = (
            f"UPDATE {t} SET expires_at_us = {now}{z} WHERE {k} = {p} AND token IS NULL "
            f"AND waiting_since_us IS NULL AND expires_at_us > {now}"
        )
        # Live ones only: expired rows are purge's (the two never wait for each other).
        self.force_holders = f"DELETE FROM {h} WHERE {k} = {p} AND expires_at_us > {now}{z}"
        self.unmark_any = (
            f"UPDATE {t} SET mark_token = NULL, mark_expires_at_us = NULL{z} "
            f"WHERE {k} = {p} AND mark_token IS NOT NULL"
        )
        # Expired holders go at once on purge, and after the grace period on culling (one
        # statement each, run on its own).
        self.purge_holders = f"DELETE FROM {h} WHERE expires_at_us <= {clock}{z}"
        self.cull_holders = f"DELETE FROM {h} WHERE expires_at_us < {clock} - {p}{z}"

    def touch(self, t: str, k: str) -> str:
        """What follows the insert of a free key row when the row exists: it locks it."""
        return f"ON CONFLICT ({k}) DO UPDATE SET fencing_token = {t}.fencing_token"

    def upsert(self, t: str, k: str) -> str:
        """Takes the row if it is free or expired; returns nothing if it is held."""
        return (
            f"{self.insert} ON CONFLICT ({k}) DO UPDATE SET "
            "token = excluded.token, correlation_id = excluded.correlation_id, "
            f"fencing_token = {self.greatest}({t}.fencing_token + 1, excluded.fencing_token), "
            "acquired_at_us = excluded.acquired_at_us, expires_at_us = excluded.expires_at_us "
            f"WHERE {t}.expires_at_us <= excluded.acquired_at_us "
            "RETURNING fencing_token, acquired_at_us, expires_at_us"
        )

    def acquire_params(self, key: str, token: str, correlation_id: str | None, ttl_us: int,
                       since: int | None) -> tuple[Any, ...]:
        """The upsert's parameters. ``since`` (fair vendors): the fencing token from which
        on a reservation is this attempt's to take: None for a waiting call's first attempt
        (none is), 0 for a call that does not wait (every one is: it barges in, like
        ``tryLock()`` of a fair ``java.util.concurrent`` lock), else that of a waiting
        call's later attempts, which also mark the row waited for."""
        return (key, token, correlation_id, ttl_us)


#: The channel of PostgreSQL's NOTIFY: the payload is the key whose holder went away.
NOTIFY_CHANNEL = "django_locks"


class PostgreSQLLockSQL(LockSQL):
    now_us = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000)::bigint"
    # statement_timestamp() is when the client's message arrived, before any wait for the
    # key row's lock: the reading after the lock takes the clock itself.
    read_clock = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint"

    def __init__(self, table: str, key: str, durable: bool = True, holders: str | None = None) -> None:
        super().__init__(table, key, durable, holders)
        # Reads deciding which holders are live: statement_timestamp() is when the statement
        # arrived, its snapshot is taken later (after a wait for a table lock, say), so they
        # read the clock once during execution, after the snapshot (a CTE: one reading).
        clock = "(SELECT now_us FROM django_locks_clock)"
        for name in ("holders", "held", "expired"):
            setattr(self, name, f"WITH django_locks_clock AS MATERIALIZED ({self.read_clock} AS now_us) "
                                + getattr(self, name).replace(self.now_us, clock))
        # Release, force release and the clearing of expired holders tell the waiters of
        # those keys, in the same statement: NOTIFY is delivered when its transaction
        # commits, so a wake-up is never sent for a change that did not commit.
        # The holders' rows likewise (the waiters of a semaphore are woken by a release).
        for name in ("release", "force_release", "clear_expired", "release_holder",
                     "force_holders", "purge_holders", "cull_holders"):
            setattr(self, name, self.notifying(getattr(self, name), key))

    @staticmethod
    def notifying(update: str, key: str) -> str:
        # PostgreSQL sends one of identical notifications of a transaction.
        return (
            f"WITH changed AS ({update} RETURNING {key}) "
            f"SELECT pg_notify('{NOTIFY_CHANNEL}', {key}) FROM changed"
        )
    # set_config(..., is_local => true) lasts until the end of the statement's own
    # (autocommit) transaction, and the commit reads it: no SET survives the statement,
    # so a pooled server connection keeps synchronous_commit as it was. (A volatile
    # function: never folded away.) Cheaper to plan than a CTE joined to every write.
    nosync = "0 * length(set_config('synchronous_commit', 'off', true))"


class SQLiteLockSQL(LockSQL):
    now_us = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
    greatest = "MAX"
    placeholder = "?"
    fair = True

    def upsert(self, t: str, k: str) -> str:
        """Takes the row if it is free, expired, or reserved for waiters and ``since`` lets
        this attempt take it (see :meth:`acquire_params`); else a waiting call's later
        attempt (``since > 0``) marks the row waited for, if it is not yet (the only failed
        attempts that write). Returns the row it wrote: this token's if it is in it.
        ``since`` is bound once per use, by plain ``?`` (a numbered ``?5`` with a sequence
        of parameters is deprecated in Python 3.12 and an error from 3.14)."""
        # A reservation is a row without token, marked waited for: never the stand-in
        # of shared or semaphore holders (their admission clears the mark, and a
        # waiter only marks a row with an exclusive holder).
        take = (f"({t}.expires_at_us <= excluded.acquired_at_us "
                f"OR ({t}.token IS NULL AND {t}.waiting_since_us IS NOT NULL "
                f"AND {t}.fencing_token >= {{SINCE}}))")
        assignments = ", ".join(
            f"{column} = CASE WHEN {take} THEN {new} ELSE {t}.{column} END"
            for column, new in (
                ("token", "excluded.token"),
                ("correlation_id", "excluded.correlation_id"),
                ("fencing_token", f"MAX({t}.fencing_token + 1, excluded.fencing_token)"),
                ("acquired_at_us", "excluded.acquired_at_us"),
                ("expires_at_us", "excluded.expires_at_us"),
            )
        )
        sql = (
            f"{self.insert} ON CONFLICT ({k}) DO UPDATE SET {assignments}, waiting_since_us = "
            f"CASE WHEN {take} THEN NULL ELSE excluded.acquired_at_us END "
            f"WHERE {take} OR ({{SINCE}} > 0 AND {t}.waiting_since_us IS NULL "
            f"AND {t}.token IS NOT NULL) "
            "RETURNING token, fencing_token, acquired_at_us, expires_at_us"
        )
        self.since_uses = sql.count("{SINCE}")  # after the insert's four parameters
        return sql.replace("{SINCE}", "?")

    def acquire_params(self, key: str, token: str, correlation_id: str | None, ttl_us: int,
                       since: int | None) -> tuple[Any, ...]:
        return (key, token, correlation_id, ttl_us) + (since,) * self.since_uses

    # One writer at a time: BEGIN IMMEDIATE takes the database's write lock at once.
    begin = "BEGIN IMMEDIATE"
    lock_row_suffix = ""

    def touch(self, t: str, k: str) -> str:
        return f"ON CONFLICT ({k}) DO NOTHING"


class MySQLLockSQL(LockSQL):
    now_us = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))"
    returning = False
    fair = True
    # READ COMMITTED for this one transaction (never a session setting): a fresh
    # consistent read per statement, and no gap locks that could deadlock two keys'
    # transactions through neighbouring entries of the holders' key index.
    begin = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION"
    # A consistent snapshot taken by a statement before the read's (whose UTC_TIMESTAMP is
    # when it starts): for this one transaction only, never a session setting.
    snapshot_read = ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                     "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")

    def touch(self, t: str, k: str) -> str:
        return "ON DUPLICATE KEY UPDATE fencing_token = fencing_token"

    def upsert(self, t: str, k: str) -> str:
        """Takes the row if it is free, expired, or reserved for waiters and the second
        parameter lets this attempt take it (see SQLite's), else leaves it as it was, but
        for the mark of a waiting call's later attempt. MySQL assigns left to
        right: the token is assigned first, by the condition; every later column then
        asks whether the row now has this statement's token. The row is read back to
        learn whether this token won."""
        take = ("expires_at_us <= VALUES(acquired_at_us) OR (token IS NULL AND "
                "waiting_since_us IS NOT NULL AND fencing_token >= %s)")
        won = "token <=> VALUES(token)"
        assignments = ", ".join(
            [f"token = IF({take}, VALUES(token), token)"]
            + [
                f"{column} = IF({won}, {new}, {column})"
                for column, new in (
                    ("correlation_id", "VALUES(correlation_id)"),
                    ("fencing_token", "GREATEST(fencing_token + 1, VALUES(fencing_token))"),
                    ("acquired_at_us", "VALUES(acquired_at_us)"),
                    ("expires_at_us", "VALUES(expires_at_us)"),
                )
            ]
            + [f"waiting_since_us = IF({won}, NULL, IF(%s > 0 AND token IS NOT NULL, "
               "COALESCE(waiting_since_us, VALUES(acquired_at_us)), waiting_since_us))"]
        )
        return f"{self.insert} ON DUPLICATE KEY UPDATE {assignments}"

    def acquire_params(self, key: str, token: str, correlation_id: str | None, ttl_us: int,
                       since: int | None) -> tuple[Any, ...]:
        return (key, token, correlation_id, ttl_us, since, since)


_SQL_CLASSES: dict[str, type[LockSQL]] = {
    "postgresql": PostgreSQLLockSQL,
    "sqlite": SQLiteLockSQL,
    "mysql": MySQLLockSQL,
}


def _migrate_hint(error: BaseException, using: str) -> str:
    """What to do, put before the database's message, when the lock table does not exist."""
    for cause in (error, error.__cause__):
        if cause is None:
            continue
        missing = (
            getattr(cause, "sqlstate", None) == "42P01"  # PostgreSQL undefined_table (psycopg 3)
            or getattr(cause, "pgcode", None) == "42P01"  # (psycopg2)
            or (cause.args[:1] == (1146,))  # MariaDB/MySQL ER_NO_SUCH_TABLE
            or "no such table" in str(cause)  # SQLite
        )
        if missing:
            database = "" if using == "default" else f" --database {using}"
            return (f"the lock table does not exist: run `python manage.py migrate{database}` "
                    "(DatabaseLock keeps its locks in the django_locks app's table). The database said: ")
    return ""


# --------------------------------------------------------------------------- the backend


class WaitingCalls:
    """Fair handoff: the waiting calls (timeout > 0) of one backend instance that found
    their key taken, by their token (one per call, the same in each of its attempts), each
    with the fencing token from which on a reservation is its own: the row's, if it was
    held (this call waits since before its release), else the next one (the row was
    already reserved). An entry goes when its call wins; those of calls that gave up are
    pruned once untouched for :attr:`STALE` s."""

    STALE = 5.0
    PRUNE_FLOOR = 64

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, float]] = {}
        self._mutex = threading.Lock()
        self._prune_at = self.PRUNE_FLOOR

    def since(self, token: str) -> int | None:
        if token not in self._entries:  # a call's first attempt: no lock taken
            return None
        with self._mutex:
            entry = self._entries.get(token)
            if entry is not None:
                self._entries[token] = (entry[0], time.monotonic())
                return entry[0]
        return None

    def failed(self, token: str, row: Any) -> None:
        """The first attempt of ``token`` failed on this row (``read_row``'s columns)."""
        since = int(row[2]) + (0 if row[1] is not None else 1)
        with self._mutex:
            self._entries.setdefault(token, (since, time.monotonic()))
            if len(self._entries) >= self._prune_at:
                oldest = time.monotonic() - self.STALE
                self._entries = {t: e for t, e in self._entries.items() if e[1] > oldest}
                self._prune_at = max(self.PRUNE_FLOOR, 2 * len(self._entries))

    def won(self, token: str) -> None:
        with self._mutex:
            self._entries.pop(token, None)


def _info(row: Any) -> LockInfo:
    """A LockInfo from a row: the columns, then optionally the database's "now" (µs, or
    NULL: not measured), then optionally shared and limit."""
    key, token, fencing_token, correlation_id, acquired_us, expires_us = row[:6]
    now = row[6] if len(row) > 6 else None
    return LockInfo(
        key=key,
        token=token,
        fencing_token=int(fencing_token),
        correlation_id=correlation_id,
        acquired_at_us=int(acquired_us),
        expires_at_us=int(expires_us),
        remaining_ms=max(0, (int(expires_us) - int(now)) // 1000) if now is not None else None,
        shared=bool(row[7]) if len(row) > 7 else False,
        limit=int(row[8]) if len(row) > 8 else 1,
    )


def _refusal(mode: Mode, blockers: list[Any]) -> int:
    """From the ``blockers`` rows (µs left, kind: 0 non-shared holder, 1 shared holder,
    2 writer mark), the ms until an acquisition in ``mode`` could succeed by expiry alone
    (as MemoryLock's ``_refusal``)."""
    if mode.shared:
        left = [int(us) for us, kind in blockers if int(kind) != 1]
        return max(left) // 1000 if left else 0
    left = sorted(int(us) for us, kind in blockers if int(kind) != 2)
    if len(left) < mode.limit:
        return 0
    return left[len(left) - mode.limit] // 1000


class DatabaseLock(BaseLock):
    """Locks as rows of ``django_locks_lock``.

    OPTIONS: ``using`` (database alias, default "default"); ``durable`` (default True):
    whether each lock change waits for the disk before it returns. A lock is a promise
    that must survive a database crash as the application's own rows do, so it does by
    default. ``durable: False`` commits lock changes without waiting for the WAL flush
    (PostgreSQL: ``synchronous_commit`` off for each lock statement's own transaction,
    never as session state; SQLite: ``synchronous = NORMAL`` in WAL mode on the private
    connection, which nothing else shares), several times cheaper where a flush is slow:
    a crash of the database server (not of a client, nor a clean restart) may then forget
    the lock changes of its last moments, as a Redis restart does; fencing tokens still
    rise. MariaDB/MySQL have no such switch: there the server's
    ``innodb_flush_log_at_trx_commit`` decides.

    Culling, the way Django's ``DatabaseCache`` culls on ``set``: every
    ``cull_frequency``-th acquisition attempt of a backend instance (default 1000; 0 turns
    culling off) first deletes the rows released or expired more than ``cull_grace`` ms
    ago (default 2000), so keys built from user input (``"report:{pk}"``) cannot grow the
    table without bound: it keeps about the keys used within the grace period, plus one
    cull period's worth. The fencing guarantee survives the deleted counters: a deleted
    row's last token is at most its acquisition time in µs (plus the few acquisitions
    within one µs), and the next acquisition of that key starts from the database clock
    in µs, which has moved at least the grace period past it. Only a database clock
    stepped back by more than the grace period could break that, as with ``purge``.

    Fair handoff, on MariaDB/MySQL and SQLite (where waiters poll, 1 to 10 ms apart): a
    process releasing and re-taking a lock in a loop would otherwise win nearly every time
    against pollers. Each attempt of a waiting call (timeout > 0) after its first marks
    the row in the same upsert (``waiting_since_us``, the database clock, set if NULL: the
    oldest waiter since the last acquisition). A release of a marked row leaves it free
    but reserved for :data:`FAIR_RESERVE_US` (two backoff steps, so every waiter polls
    within it): token NULL, ``expires_at_us`` that much ahead. During it the upsert
    lets in a waiting call only if its first failed attempt found the row at this fencing
    token or a lower one (:class:`WaitingCalls`: it waited since before the release); the
    releaser's next waiting call found the reservation, so it waits for the reservation's
    end or the next holder. Any winner clears the mark. A call that does not wait
    (``try_acquire_lock``, timeout 0) may take a reservation: it barges in, as
    ``tryLock()`` does on a fair ``java.util.concurrent`` lock, so a waiter that gave up
    (timed out, cancelled) never makes a free lock look taken to it. The decision stays in
    one statement on the database clock; fencing tokens rise as before. Costs: ~2 µs on
    the uncontended pair (longer statements; with nobody waiting nothing is reserved), one
    read of the row at a waiting call's first failure on SQLite, one write per holder
    while somebody waits (the mark). A waiter that gave up leaves its mark: the next
    release reserves for nobody, and a waiting call that comes then waits at most the
    reservation, once. Not first come, first served: any waiter that waited since before
    the release may win. Reserving for the oldest waiter only would make the handoff wait
    for that one waiter's poll (p99 near a full backoff step) instead of the first of them.

    Shared locks and semaphores. The ``Lock`` row stays the key's row: its fencing
    counter, its writer mark (``mark_token``, ``mark_expires_at_us``) and, as before, its
    exclusive holder, so the exclusive path is unchanged (one upsert, one release
    statement). Shared and semaphore holders are rows of ``Holder`` (``django_locks_holder``,
    indexed by key and by expiry), and the key row stands for them: while any is alive,
    the key row has no token and expires with the last of them. The exclusive upsert,
    which only takes a row expired by the database clock, is thus refused without reading
    the holders' table, and a key whose holders all went (released, force-released or
    expired) is free for it at once. Every operation on holders is one short transaction
    on the private connection that first locks the key row (PostgreSQL and MariaDB: an
    upsert that creates it if missing, or ``SELECT ... FOR UPDATE``; SQLite:
    ``BEGIN IMMEDIATE``), so the operations of one key are serialized and none can
    deadlock with another (the key row is always the first lock, and a transaction locks
    no other key row). The statements after the lock see everything committed before it:
    the transaction is READ COMMITTED (PostgreSQL: a snapshot per statement; MariaDB:
    ``SET TRANSACTION ISOLATION LEVEL READ COMMITTED`` for that one transaction, whose
    consistent reads take no gap locks; SQLite has one writer). The admission is one
    ``INSERT ... SELECT ... WHERE`` (fewer than N live holders, counting the key row's
    exclusive holder; or, shared, no live non-shared holder and no live writer mark), with
    the fencing token ``max(counter + 1, now_us)``; the same transaction moves an exclusive
    holder that a semaphore joins into the holders' table, sets the key row's counter and
    expiry, and sets (refused waiter) or clears (its own, when admitted) the writer mark
    of a non-shared waiter. No read-then-write in Python: the application only reads the
    outcome. PostgreSQL (psycopg 3, client-side binding) and MariaDB/MySQL get the whole
    transaction as one multi-statement round trip (BEGIN ... COMMIT); SQLite, in-process,
    runs it statement by statement. Releases and extensions of a holder lock the key row,
    change the holder's row and recompute the key row's expiry from the live holders;
    the release tries the key row first (an exclusive holder: one statement, as before)
    unless this instance acquired the token as a holder. Release, force release, purge and
    culling of holders NOTIFY the key on PostgreSQL within their transaction. An exclusive
    waiter kept out by holders sets the mark with one more statement (only then), and
    clears it with one more once it wins.
    """

    option_names = frozenset({"using", "durable", "cull_frequency", "cull_grace", "notify"})
    keeps_expired_state = True

    def configure(self, options: dict[str, Any]) -> None:
        for name, default in (("cull_frequency", 1000), ("cull_grace", 2000)):
            value = options.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**9:
                raise self._invalid(f"OPTIONS {name!r} must be an int >= 0, not {value!r}",
                                    "django_locks.E002")
            setattr(self, name, value)
        self._attempts_until_cull = self.cull_frequency
        notify = options.get("notify", True)
        if not isinstance(notify, bool):
            raise self._invalid(f"OPTIONS 'notify' must be True or False, not {notify!r}",
                                "django_locks.E002")
        self.notify = notify
        durable = options.get("durable", True)
        if not isinstance(durable, bool):
            raise self._invalid(f"OPTIONS 'durable' must be True or False, not {durable!r}",
                                "django_locks.E002")
        self.durable = durable
        using = options.get("using", "default")
        if not isinstance(using, str):
            raise self._invalid(
                f"OPTIONS 'using' must be a database alias (str), not {using!r}", "django_locks.E002"
            )
        if using not in connections.settings:
            raise self._invalid(
                f"OPTIONS 'using' names database {using!r}, not in DATABASES", "django_locks.E003"
            )
        engine = connections.settings[using].get("ENGINE", "")
        if engine in _UNSUPPORTED_ENGINES:
            raise self._invalid(
                f"database {using!r} has ENGINE {engine!r}: {_UNSUPPORTED_ENGINES[engine]}",
                "django_locks.E006",
            )
        try:
            vendor = load_backend(engine).DatabaseWrapper.vendor
        except Exception as e:
            raise self._invalid(
                f"database {using!r} has an unusable ENGINE {engine!r}: {e}", "django_locks.E006"
            ) from e
        if vendor not in _SUPPORTED_VENDORS:
            raise self._invalid(
                f"database {using!r} is {vendor}; DatabaseLock supports "
                f"{', '.join(_SUPPORTED_VENDORS)}",
                "django_locks.E006",
            )
        self.using = using
        self.vendor = vendor
        self._sql: LockSQL | None = None
        self._waiting_calls = WaitingCalls()

    # ----------------------------------------------------------------------- plumbing

    @property
    def sql(self) -> LockSQL:
        if self._sql is None:
            ops = connections[self.using].ops
            table = apps.get_model("django_locks", "Lock")._meta.db_table
            holders = apps.get_model("django_locks", "Holder")._meta.db_table
            self._sql = _SQL_CLASSES[self.vendor](
                ops.quote_name(table), ops.quote_name("key"), durable=self.durable,
                holders=ops.quote_name(holders),
            )
        return self._sql

    def _in_memory_error(self) -> InvalidLockBackendError:
        return self._invalid(
            f"DatabaseLock needs a file database; database {self.using!r} is an in-memory "
            "SQLite database, which other connections cannot share (for tests, set its "
            "TEST['NAME'] to a file path)",
            "django_locks.E007",
        )

    def check(self) -> list[CheckMessage]:
        if self.vendor == "sqlite" and connections[self.using].is_in_memory_db():
            error = self._in_memory_error()
            return [Error(str(error), id=error.check_id, obj=f"LOCKS[{self.alias!r}]")]
        return []

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._waiting_calls = WaitingCalls()
        self._marks.clear()
        self._holder_tokens.clear()

    def close(self, **kwargs: Any) -> None:
        """Close this thread's private connection if it is unusable or older than the
        database's ``CONN_MAX_AGE`` (at the end of a request, or of a renewal thread)."""
        connection = _this_thread().get(self.using)
        if connection is not None:
            connection.close_if_unusable_or_obsolete()

    # ----------------------------------------------------------------------- waiting

    def _listener(self) -> Listener | None:
        """This process's listener of the database, where waiters can be notified."""
        if self.vendor != "postgresql" or not self.notify:
            return None
        listener = listener_for(self.using)
        return None if listener.unusable else listener

    @contextlib.contextmanager
    def _waiting(self, key: str) -> Iterator[None]:
        listener = self._listener()
        if listener is None:
            yield
            return
        listener.register(key)
        reset = _WAITING.set([key, listener, listener.generation(key)])
        try:
            yield
        finally:
            _WAITING.reset(reset)
            listener.unregister(key)

    @staticmethod
    def _notified(key: str) -> list[Any] | None:
        """This call's [key, listener, generation] while a ready listener wakes it on a
        release of ``key`` (see :meth:`_waiting`); else None: it polls."""
        entry = _WAITING.get()
        return entry if entry is not None and entry[0] == key and entry[1].ready.is_set() else None

    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        if (entry := self._notified(key)) is not None:
            entry[1].wait(key, entry[2], seconds)  # woken by the release's NOTIFY
        else:
            super()._wait_for_release(key, seconds, waits)

    async def _await_release(self, key: str, seconds: float, waits: int) -> None:
        if (entry := self._notified(key)) is not None:
            await entry[1].await_change(key, entry[2], seconds)  # woken by the NOTIFY
        else:
            await super()._await_release(key, seconds, waits)

    def _connect(self, wrapper: Any) -> None:
        if self.vendor == "sqlite" and wrapper.is_in_memory_db():
            raise self._in_memory_error()
        wrapper.connect()
        raw = wrapper.connection
        if self.vendor == "sqlite":
            # A second connection to the file can write while others read.
            raw.execute("PRAGMA journal_mode=WAL").fetchall()

    @contextlib.contextmanager
    def _connection(self, *, in_transaction: bool) -> Iterator[LockConnection]:
        """This thread's private connection, connected; a fork waits while it is in use on
        SQLite (see :class:`SQLiteForkGate`). A database error drops the connection and is
        raised as LockBackendError; so is any interruption of a transaction
        (``in_transaction``): whatever was left open goes with the connection."""
        connection = lock_connection(self.using)
        wrapper = connection.wrapper
        with sqlite_gate.statement() if self.vendor == "sqlite" else contextlib.nullcontext():
            try:
                if not connection.connected:
                    self._connect(wrapper)
                if self.vendor == "sqlite":
                    # Per alias: aliases of one database share this thread's connection.
                    connection.sqlite_synchronous("FULL" if self.durable else "NORMAL")
                yield connection
            except (wrapper.Database.Error, DjangoDatabaseError) as e:
                connection.close()
                raise LockBackendError(
                    f"LOCKS[{self.alias!r}]: database {self.using!r} failed: "
                    f"{_migrate_hint(e, self.using)}{e}"
                ) from e
            except BaseException:
                if in_transaction:
                    connection.close()
                raise

    def _run(self, sql: str, params: tuple[Any, ...], *, fetch: bool = True) -> tuple[list[Any], int]:
        """Run one statement on this thread's private connection: (rows, rowcount)."""
        with self._connection(in_transaction=False) as connection:
            cursor = connection.cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall() if fetch else []
            return rows, cursor.rowcount

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The rows of a read that decides which holders are live: on its one clock
        reading, taken after the snapshot it reads (see ``LockSQL.snapshot_read``), so it
        never lists a holder that had expired before a newer one it lists was admitted."""
        begin = self.sql.snapshot_read
        if not begin:
            return self._run(sql, params)[0]
        with self._connection(in_transaction=True) as connection:
            statements = [*((text, ()) for text in begin), (sql, params), ("COMMIT", ())]
            return self._execute(connection, statements)[-2][0]

    #: Test hook: called with the clock reading of a transaction on holders, after it
    #: locked the key row and before its other statements run (None in production).
    _after_clock_read: Any = None

    def _script(
        self, lock: tuple[str, tuple[Any, ...]] | None, statements: list[tuple[str, tuple[Any, ...]]]
    ) -> list[tuple[list[Any], int]]:
        """Run ``statements`` in one transaction on this thread's private connection;
        (rows, rowcount) of each. A failure drops the connection, and with it the
        transaction.

        One clock per operation: the transaction first locks the key row (``lock``; on
        SQLite ``BEGIN IMMEDIATE`` already did, and ``lock`` only creates the row), then
        reads the database clock once, in a statement of its own (so after the lock was
        granted), and every later statement decides on that reading (:data:`NOW_US`),
        never one per statement: a holder seen alive by one statement is alive for all.
        Two round trips where the driver takes several statements in one (psycopg 3,
        MariaDB/MySQL): BEGIN, the lock and the reading; then the statements and COMMIT."""
        sql = self.sql
        head = [(part, ()) for part in sql.begin.split("; ")]
        if lock is not None:
            head.append(lock)
        head.append((sql.read_clock, ()))
        with self._connection(in_transaction=True) as connection:
            now = int(self._execute(connection, head)[-1][0][0][0])
            if self._after_clock_read is not None:
                self._after_clock_read(now)
            literal = str(now)
            body = [(text.replace(NOW_US, literal), params) for text, params in statements]
            return self._execute(connection, [*body, ("COMMIT", ())])[:-1]

    @staticmethod
    def _execute(connection: LockConnection,
                 statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[list[Any], int]]:
        """Run ``statements`` on the private connection, in one round trip where the
        driver can; (rows, rowcount) of each."""
        cursor = connection.script_cursor()
        results: list[tuple[list[Any], int]] = []
        if cursor is None:  # one statement at a time (in-process SQLite, psycopg2)
            cursor = connection.cursor()
            for text, params in statements:
                cursor.execute(text, params)
                results.append((cursor.fetchall() if cursor.description else [], cursor.rowcount))
            return results
        cursor.execute(";\n".join(text for text, _ in statements),
                       tuple(p for _, params in statements for p in params))
        while True:
            results.append((cursor.fetchall() if cursor.description else [], cursor.rowcount))
            if not cursor.nextset():
                break
        return results

    # ----------------------------------------------------------------------- storage operations

    #: Remembered tokens (of the marks and holders below) per backend instance, at most.
    REMEMBERED = 1024

    def _remember(self, memory: dict[str, str], key: str, token: str) -> None:
        if len(memory) >= self.REMEMBERED:
            memory.clear()  # forgetting only costs a round trip, or an early mark clearing
        memory[key] = token

    @property
    def _marks(self) -> dict[str, str]:
        """key -> the token of this instance's exclusive waiter that set its writer mark."""
        return self.__dict__.setdefault("_marks_", {})

    @property
    def _holder_tokens(self) -> dict[str, str]:
        """token -> key of this instance's shared and semaphore holders (their release
        and extension go to the holders' table at once)."""
        return self.__dict__.setdefault("_holder_tokens_", {})

    def _cull(self) -> None:
        """Delete rows released or expired more than ``cull_grace`` ms ago (see the class)."""
        try:
            culled = self._run(self.sql.purge, (self.cull_grace * 1000,), fetch=False)[1]
            culled += self._run(self.sql.cull_holders, (self.cull_grace * 1000,), fetch=False)[1]
        except LockBackendError as e:  # the attempt that follows reports the failure
            logger.warning("culling lock rows failed: %s (alias=%s)", e, self.alias)
            return
        logger.debug("culled %d lock rows (alias=%s)", culled, self.alias)

    def _try_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        if self.cull_frequency:
            self._attempts_until_cull -= 1
            if self._attempts_until_cull <= 0:
                self._attempts_until_cull = self.cull_frequency
                self._cull()
        entry = _WAITING.get()
        if entry is not None and entry[0] == key:
            entry[2] = entry[1].generation(key)  # a release from now on wakes this waiter
        if not mode.exclusive:
            return self._try_acquire_holder(key, token, ttl, correlation_id, mode, waiter)
        sql = self.sql
        # None: a waiting call's first attempt; its later ones: since when it waits (a
        # fencing token); 0: a call that does not wait, which may take a reservation.
        since = (self._waiting_calls.since(token) if waiter else 0) if sql.fair else None
        params = sql.acquire_params(key, token, correlation_id, ttl * 1000, since)
        if sql.returning:
            rows, _ = self._run(sql.acquire, params)
            if sql.fair:  # the row comes back if taken, or marked waited for
                rows = [row[1:] for row in rows if row[0] == token]
                if not rows:
                    return self._lost(key, token, since, waiter)
            if not rows:
                if not waiter and (entry is None or entry[0] != key):
                    return Attempt(None)
                # A notified waiter sleeps until the release: it needs the holder's
                # remaining life to wake at its expiry too.
                rows, _ = self._run(sql.read_row, (key,))
                return self._refused_exclusive(key, token, rows, waiter)
            fencing_token, acquired_us, expires_us = rows[0]
        else:
            self._run(sql.acquire, params, fetch=False)
            rows, _ = self._run(sql.read_row, (key,))
            if rows and rows[0][1] == token:
                _, _, fencing_token, _, acquired_us, expires_us, _ = rows[0]
            else:
                # Won, then moved before the read-back: a semaphore admitted beside it
                # moves the exclusive holder into the holders' table (move_exclusive),
                # leaving the key row without token. Its row there says it holds the key.
                moved = self._run(sql.own_holder, (token,))[0] if rows and rows[0][1] is None else []
                if not moved:
                    return self._lost(key, token, since, waiter, rows)
                fencing_token, acquired_us, expires_us = moved[0]
        if since:
            self._waiting_calls.won(token)
        if self._marks.get(key) == token:
            del self._marks[key]
            self._run(sql.unmark, (key, token), fetch=False)
        return Attempt(
            _info((key, token, fencing_token, correlation_id, acquired_us, expires_us, acquired_us))
        )

    def _lost(self, key: str, token: str, since: int | None, waiter: bool,
              rows: Any = None) -> Attempt:
        """A failed exclusive attempt on a fair vendor: a waiting call's first failure
        records since when it waits, from the row (read here if not given); then as
        :meth:`_refused_exclusive`."""
        if rows is None:
            if not waiter:
                return Attempt(None)
            rows, _ = self._run(self.sql.read_row, (key,))
        if rows and since is None and waiter:
            self._waiting_calls.failed(token, rows[0])
        return self._refused_exclusive(key, token, rows, waiter)

    def _refused_exclusive(self, key: str, token: str, rows: list[Any], waiter: bool) -> Attempt:
        """An exclusive attempt found the key row held: how long for. A waiter kept out by
        shared or semaphore holders (the row has no token) sets the writer mark."""
        if not rows:
            return Attempt(None, 0 if self.sql.returning else None)
        remaining = max((rows[0][5] - rows[0][6]) // 1000, 0)
        if waiter and rows[0][1] is None and remaining > 0:
            if self._run(self.sql.mark, (token, key), fetch=False)[1]:
                self._remember(self._marks, key, token)
        return Attempt(None, remaining)

    def _try_acquire_holder(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        """A shared or semaphore acquisition: one transaction (one round trip where the
        driver can) that locks the key row, admits in SQL, moves an exclusive holder it
        joins to the holders' table and settles the key row."""
        sql = self.sql
        admit = (token, correlation_id, ttl * 1000, mode.shared, mode.limit, key, token)
        if mode.shared:
            admission = (sql.admit_shared, (*admit, key))
        else:
            admission = (sql.admit_semaphore, (*admit, key, mode.limit))
        statements = [admission]
        if not mode.shared:
            statements.append((sql.move_exclusive, (key, token)))
        settle = (token, token, key, token)
        if waiter and not mode.shared:
            statements += [(sql.settle_waiter, (token, token, *settle)),
                           (sql.mark_refused, (token, key, token))]
        else:
            statements.append((sql.settle, settle))
        statements.append((sql.own_holder, (token,)))
        rows = self._script((sql.lock_key, (key,)), statements)[-1][0]
        if not rows:
            blockers, _ = self._run(sql.blockers, (key, key, key))
            return Attempt(None, _refusal(mode, blockers))
        self._remember(self._holder_tokens, token, key)
        fencing_token, acquired_us, expires_us = rows[0]
        return Attempt(LockInfo(
            key=key, token=token, fencing_token=int(fencing_token), correlation_id=correlation_id,
            acquired_at_us=int(acquired_us), expires_at_us=int(expires_us),
            remaining_ms=(int(expires_us) - int(acquired_us)) // 1000,
            shared=mode.shared, limit=mode.limit,
        ))

    def _locking(self, key: str) -> tuple[str, tuple[Any, ...]] | None:
        """The statement that locks the key row first (SQLite: BEGIN IMMEDIATE did)."""
        return None if self.vendor == "sqlite" else (self.sql.lock_row, (key,))

    def _release(self, key: str, token: str) -> bool:
        sql = self.sql
        if self._holder_tokens.pop(token, None) is None:
            if self._run(sql.release, (key, token), fetch=False)[1] == 1:
                return True
        results = self._script(self._locking(key), [
            (sql.release_holder, (token, key)),
            (sql.recompute, (key, key)),
        ])
        return results[-2][1] == 1

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        sql = self.sql
        if token not in self._holder_tokens:
            expires = self._extend_exclusive(key, token, ttl)
            if expires is not None:
                return expires
        results = self._script(self._locking(key), [
            (sql.extend_holder, (ttl * 1000, token, key)),
            (sql.recompute, (key, key)),
            (sql.holder_expiry, (token,)),
        ])
        if results[-3][1] != 1 or not results[-1][0]:
            return None
        return int(results[-1][0][0][0])

    def _extend_exclusive(self, key: str, token: str, ttl: int) -> int | None:
        sql = self.sql
        if sql.returning:
            rows, _ = self._run(sql.extend, (ttl * 1000, key, token))
            return int(rows[0][0]) if rows else None
        if self._run(sql.extend, (ttl * 1000, key, token), fetch=False)[1] != 1:
            return None
        rows, _ = self._run(sql.read_row, (key,))
        if not rows or rows[0][1] != token:
            return None
        return int(rows[0][5])

    def _unmark(self, key: str, token: str) -> None:
        if self._marks.get(key) == token:
            del self._marks[key]
        self._run(self.sql.unmark, (key, token), fetch=False)

    def _force_release(self, key: str) -> bool:
        sql = self.sql
        results = self._script(self._locking(key), [
            (sql.force_holders, (key,)),
            (sql.force_release, (key,)),
            (sql.clear_standing, (key,)),
            (sql.unmark_any, (key,)),
        ])
        # Live holders deleted, or the exclusive holder released (a reservation is no one's).
        return results[-4][1] > 0 or results[-3][1] > 0

    def _holders(self, key: str) -> list[LockInfo]:
        return [_info(row) for row in self._read(self.sql.holders, (key, key))]

    def _held(self) -> list[LockInfo]:
        return [_info(row) for row in self._read(self.sql.held, ())]

    def _purge(self) -> int:
        cleared = self._run(self.sql.clear_expired, (), fetch=False)[1]
        cleared += self._run(self.sql.purge_holders, (), fetch=False)[1]
        return cleared + self._run(self.sql.purge, (PURGE_AFTER_US,), fetch=False)[1]

    def expired_locks(self) -> list[LockInfo]:
        """Holders whose lock expired without a release, until :meth:`purge` clears them."""
        rows = self._read(self.sql.expired, ())
        return sorted((_info(row) for row in rows), key=lambda info: (info.expires_at, info.key))
