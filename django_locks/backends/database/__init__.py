"""DatabaseLock: locks as rows of this app's table, on PostgreSQL, MariaDB/MySQL and SQLite.

The package, along Django's own ``db/backends`` lines:

* ``features.py`` and ``operations.py``: what a vendor can do, and its statements by name;
  ``postgresql.py``, ``mysql.py``, ``sqlite.py``: each vendor's; ``vendors.py`` the table;
* ``connection.py``: the private connections (per process, thread and alias);
* ``listener.py``: PostgreSQL's LISTEN/NOTIFY wake-ups; ``fairness.py``: fair handoff;
* this module: the backend, :class:`DatabaseLock`, on those.

How it keeps the contract (atomic acquisition, the database's clock, independence of the
caller's transaction, fencing, shared holders, poolers, forks) is told in
``docs/internals/database.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple, TypeVar

from django.apps import apps
from django.db import Error as DjangoDatabaseError
from django.db import connections
from django.db.utils import load_backend

from django_locks.backends._acquire import AnsweredAfterCancel
from django_locks.backends.base import BaseLock, logger
from django_locks.backends.database import connection as _connections
from django_locks.backends.database.connection import (
    LockConnection,
    Result,
    abandon_all_lock_connections,
    aexecute,
    async_connections,
    close_thread_lock_connections,
    execute,
    lock_connection,
)
from django_locks.backends.database.fairness import FAIR_RESERVE_US, WaitingCalls
from django_locks.backends.database.features import DatabaseFeatures
from django_locks.backends.database.listener import (
    Listener,
    Waiting,
    current_wait,
    listener_for,
    stop_all_listeners,
)
from django_locks.backends.database.operations import (
    NOTIFY_CHANNEL,
    Blocker,
    DatabaseOperations,
    LockRow,
    Statement,
)
from django_locks.backends.database.vendors import UNSUPPORTED_ENGINES, VENDORS
from django_locks.backends.memory import MemoryLock
from django_locks.exceptions import LockBackendError
from django_locks.values import (
    Attempt,
    LockInfo,
    LockPage,
    Mode,
    encode_cursor,
    key_cursor,
    time_until_admitted,
    validate_page_arguments,
)

_Method = TypeVar("_Method", bound=Callable[..., Any])
_T = TypeVar("_T")


class _Run(NamedTuple):
    """A step of a storage operation: one statement (sent its Result; ``rows=False``:
    only its rowcount is wanted)."""

    statement: Statement
    params: dict[str, Any]
    rows: bool = True


class _Script(NamedTuple):
    """A step of a storage operation: statements (SQL, parameters) run together, in one
    round trip where the driver can (sent a Result for each); a transaction that fails
    goes with its connection."""

    statements: list[tuple[str, tuple[Any, ...]]]


#: A storage operation written as steps (see DatabaseLock._drive).
_Steps = Generator[_Run | _Script, Any, _T]


class _Done(NamedTuple):
    """Steps that ended, with the operation's value."""

    value: Any


def _advance(steps: _Steps[Any], result: Any, error: LockBackendError | None) -> _Run | _Script | _Done:
    """Send ``steps`` the last step's result (or raise its error into them): their next
    step, or :class:`_Done`. What _drive and _adrive share."""
    try:
        return steps.send(result) if error is None else steps.throw(error)
    except StopIteration as done:
        return _Done(done.value)

__all__ = [
    "FAIR_RESERVE_US",
    "NOTIFY_CHANNEL",
    "PURGE_AFTER_US",
    "DatabaseLock",
    "Listener",
    "LockConnection",
    "close_all_lock_connections",
    "close_thread_lock_connections",
    "listener_for",
    "lock_connection",
]

#: Purge deletes only rows that expired longer ago than this (microseconds).
PURGE_AFTER_US = 60 * 1_000_000


def close_all_lock_connections() -> None:
    """Close every private lock connection of this process, from any thread, and stop
    the notification listeners."""
    stop_all_listeners()
    abandon_all_lock_connections()


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
        # PostgreSQL undefined_function (psycopg 3, psycopg2): migration 0005's functions.
        functions = "42883" in (getattr(cause, "sqlstate", None), getattr(cause, "pgcode", None))
        database = "" if using == "default" else f" --database {using}"
        if missing:
            return (f"the lock table does not exist: run `python manage.py migrate{database}` "
                    "(DatabaseLock keeps its locks in the django_locks app's table). The database said: ")
        if functions:
            return (f"a function of the lock tables may be missing: run `python manage.py "
                    f"migrate{database}` (django_locks migration 0005). The database said: ")
    return ""


def refusal_ms(mode: Mode, blockers: list[Blocker]) -> int:
    """From what keeps an acquisition out (read on one clock), the ms until one in
    ``mode`` could be admitted by expiry alone: the one admission rule of
    :func:`~django_locks.values.time_until_admitted`."""
    holders = [(int(b.remaining_us), int(b.kind) == Blocker.SHARED_HOLDER)
               for b in blockers if int(b.kind) != Blocker.WRITER_MARK]
    marks = [int(b.remaining_us) for b in blockers if int(b.kind) == Blocker.WRITER_MARK]
    left = time_until_admitted(mode, holders, max(marks) if marks else None)
    return 0 if left is None else int(left) // 1000


def _in_memory_too(method: _Method) -> _Method:
    """A storage operation that, on an in-memory SQLite database, is the in-process
    store's (see :meth:`DatabaseLock.in_memory_store`)."""
    name = method.__name__

    @functools.wraps(method)
    def operation(self: DatabaseLock, *args: Any, **kwargs: Any) -> Any:
        store = self.in_memory_store()
        if store is not None:
            return getattr(store, name)(*args, **kwargs)
        return method(self, *args, **kwargs)

    return operation  # type: ignore[return-value]


class DatabaseLock(BaseLock):
    """Locks as rows of ``django_locks_lock`` (shared and semaphore holders: rows of
    ``django_locks_holder``).

    OPTIONS: ``using`` (database alias, default "default"); ``durable`` (default True):
    whether each lock change waits for the disk before it returns (``False``: PostgreSQL
    turns ``synchronous_commit`` off for each lock statement's own transaction, SQLite
    uses ``synchronous = NORMAL`` on the private connection; a database crash may then
    forget the last moments of lock changes); ``notify`` (default True): PostgreSQL
    waiters are woken by NOTIFY (set False behind a transaction-mode pooler);
    ``cull_frequency`` (default 1000; 0 turns culling off) and ``cull_grace`` (ms, default
    2000): every ``cull_frequency``-th attempt first deletes rows released or expired more
    than ``cull_grace`` ago, the way Django's ``DatabaseCache`` culls.

    Fair handoff on MariaDB/MySQL and SQLite, and how shared holders are admitted, are
    told in ``docs/internals/database.md``.
    """

    option_names = frozenset({"using", "durable", "cull_frequency", "cull_grace", "notify"})
    keeps_expired_state = True

    #: Remembered tokens (of the marks and holders below) per backend instance, at most.
    REMEMBERED = 1024

    #: Test hook: called with the clock reading of a transaction on holders, after it
    #: locked the key row and before its other statements run (None in production).
    _after_clock_read: Any = None

    def configure(self, options: dict[str, Any]) -> None:
        for name, default in (("cull_frequency", 1000), ("cull_grace", 2000)):
            value = options.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**9:
                raise self._invalid(f"OPTIONS {name!r} must be an int >= 0, not {value!r}",
                                    "django_locks.E002")
            setattr(self, name, value)
        self._attempts_until_cull = self.cull_frequency
        for name in ("notify", "durable"):
            value = options.get(name, True)
            if not isinstance(value, bool):
                raise self._invalid(f"OPTIONS {name!r} must be True or False, not {value!r}",
                                    "django_locks.E002")
            setattr(self, name, value)
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
        if engine in UNSUPPORTED_ENGINES:
            raise self._invalid(
                f"database {using!r} has ENGINE {engine!r}: {UNSUPPORTED_ENGINES[engine]}",
                "django_locks.E006",
            )
        try:
            wrapper_class = load_backend(engine).DatabaseWrapper
            vendor = wrapper_class.vendor
        except Exception as e:
            raise self._invalid(
                f"database {using!r} has an unusable ENGINE {engine!r}: {e}", "django_locks.E006"
            ) from e
        if vendor not in VENDORS:
            raise self._invalid(
                f"database {using!r} is {vendor}; DatabaseLock supports {', '.join(VENDORS)}",
                "django_locks.E006",
            )
        self.using = using
        self.vendor = vendor
        self.features: DatabaseFeatures = VENDORS[vendor][0]
        #: The driver has an async API (psycopg 3): see native_async.
        self._async_driver = self.features.has_async_driver(wrapper_class.Database)
        self._driver_errors: type[BaseException] = wrapper_class.Database.Error
        self._operations: DatabaseOperations | None = None
        self._waiting_calls = WaitingCalls()
        #: key -> the token of this instance's exclusive waiter that set its writer mark.
        self._marked_keys: dict[str, str] = {}
        #: token -> key of this instance's shared and semaphore holders.
        self._holder_keys: dict[str, str] = {}

    # ----------------------------------------------------------------------- plumbing

    @property
    def operations(self) -> DatabaseOperations:
        """This alias's statements (built on first use: the app registry must be ready)."""
        if self._operations is None:
            quote = connections[self.using].ops.quote_name
            table = apps.get_model("django_locks", "Lock")._meta.db_table
            holders = apps.get_model("django_locks", "Holder")._meta.db_table
            self._operations = VENDORS[self.vendor][1](
                quote(table), quote("key"), quote(holders), durable=self.durable,
                returning=self.features.returning, fair=self.features.fair_handoff,
            )
        return self._operations

    def in_memory_store(self) -> MemoryLock | None:
        """On an in-memory SQLite database (Django's default test database), the locks
        live in this process's memory, in a MemoryLock store of this alias: the private
        connection cannot share a test transaction's database (SQLite's shared cache
        admits one writer), and no other process can see an in-memory database, so a
        lock in this process's memory excludes everyone who could. None otherwise (the
        database's NAME decides, at each call: the test runner renames it)."""
        if not (self.features.in_process and connections[self.using].is_in_memory_db()):
            return None
        store = self.__dict__.get("_memory_store")
        if store is None:
            store = self.__dict__["_memory_store"] = MemoryLock(f"{self.alias}\x00in-memory", {})
        return store

    @property  # type: ignore[override]
    def native_async(self) -> bool:
        """Whether async callers' statements are awaited in the running event loop (psycopg
        3, a loop it can run in; see _adrive), not run in a worker thread. Outside an event
        loop: whether the driver can."""
        if not self._async_driver:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True
        return self.features.can_await_in(loop)

    @property  # type: ignore[override]
    def process_local(self) -> bool:
        """Locks of an in-memory database are this process's alone (see in_memory_store)."""
        return self.in_memory_store() is not None

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._waiting_calls = WaitingCalls()
        self._marked_keys.clear()
        self._holder_keys.clear()

    def close(self, **kwargs: Any) -> None:
        """Close this thread's private connection if it is unusable or older than the
        database's ``CONN_MAX_AGE`` (at the end of a request, or of a renewal thread)."""
        connection = _connections._this_thread().get(self.using)
        if connection is not None:
            connection.close_if_unusable_or_obsolete()

    # ----------------------------------------------------------------------- waiting

    def _listener(self) -> Listener | None:
        """This process's listener of the database, where waiters can be notified."""
        if not self.features.can_listen or not self.notify:
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
        reset = current_wait.set(Waiting(key, listener, listener.generation(key)))
        try:
            yield
        finally:
            current_wait.reset(reset)
            listener.unregister(key)

    @staticmethod
    def _notified(key: str) -> Waiting | None:
        """This call's wait while a ready listener wakes it on a release of ``key`` (see
        :meth:`_waiting`); else None: it polls."""
        wait = current_wait.get()
        return wait if wait is not None and wait.key == key and wait.listener.ready.is_set() else None

    @_in_memory_too
    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        if (wait := self._notified(key)) is not None:
            wait.listener.wait(key, wait.generation, seconds)  # woken by the release's NOTIFY
        else:
            super()._wait_for_release(key, seconds, waits)

    @_in_memory_too
    async def _await_release(self, key: str, seconds: float, waits: int) -> None:
        if (wait := self._notified(key)) is not None:
            await wait.listener.await_change(key, wait.generation, seconds)  # woken by the NOTIFY
        else:
            await super()._await_release(key, seconds, waits)

    # ----------------------------------------------------------------------- running statements
    # Each storage operation on the hot path is written once, as steps (a generator): it
    # yields what to run (a _Run, a _Script) and is sent the result; its return value is
    # the operation's. _drive runs the steps on this thread's private connection; _adrive
    # awaits them in the event loop on an async private connection where the driver has an
    # async API (psycopg 3: ``native_async``), so sync and async callers decide with the
    # same code (as CacheLock's Redis client does with its scripts).

    @contextlib.contextmanager
    def _connection(self, *, in_transaction: bool) -> Iterator[LockConnection]:
        """This thread's private connection, connected; a fork waits while it is in use
        in-process (see ``SQLiteForkGate``). A database error drops the connection and is
        raised as LockBackendError; so is any interruption of a transaction
        (``in_transaction``): whatever was left open goes with the connection."""
        connection = lock_connection(self.using)
        wrapper = connection.wrapper
        features = self.features
        with _connections.sqlite_gate.statement() if features.in_process else contextlib.nullcontext():
            try:
                if not connection.connected:
                    wrapper.connect()
                    features.after_connect(wrapper.connection)
                if features.in_process:
                    # Per alias: aliases of one database share this thread's connection.
                    connection.sqlite_synchronous("FULL" if self.durable else "NORMAL")
                yield connection
            except (wrapper.Database.Error, DjangoDatabaseError) as e:
                connection.close()
                raise self._failed(e) from e
            except BaseException:
                if in_transaction:
                    connection.close()
                raise

    def _failed(self, error: BaseException) -> LockBackendError:
        return LockBackendError(
            f"LOCKS[{self.alias!r}]: database {self.using!r} failed: "
            f"{_migrate_hint(error, self.using)}{error}"
        )

    def _run(self, statement: Statement, /, *, rows: bool = True, **params: Any) -> Result:
        """Run one statement on this thread's private connection (``rows=False``: only its
        rowcount is wanted; a notifying write's rows are not read)."""
        return self._do(_Run(statement, params, rows))

    def _do(self, step: _Run | _Script) -> Any:
        """One step on this thread's private connection: a statement's Result, or a
        script's (a Result per statement)."""
        if isinstance(step, _Script):
            with self._connection(in_transaction=True) as connection:
                return execute(connection, step.statements)
        with self._connection(in_transaction=False) as connection:
            cursor = connection.cursor()
            cursor.execute(step.statement.sql, step.statement.bind(**step.params))
            return Result(cursor.fetchall() if step.rows and cursor.description else [],
                          cursor.rowcount)

    async def _ado(self, step: _Run | _Script) -> Any:
        """:meth:`_do` awaited in the event loop, on an async private connection of this
        loop (see ``connection.async_connections``): a failure or an interruption closes
        the connection."""
        pool = async_connections(self.using)
        try:
            connection = await pool.take()
            try:
                if isinstance(step, _Script):
                    result: Any = await aexecute(connection, step.statements)
                else:
                    cursor = connection.cursor()
                    await cursor.execute(step.statement.sql, step.statement.bind(**step.params))
                    rows = await cursor.fetchall() if step.rows and cursor.description else []
                    result = Result(rows, cursor.rowcount)
            except BaseException:
                pool.lose(connection)
                raise
        except self._driver_errors as e:
            raise self._failed(e) from e
        pool.give_back(connection)
        return result

    def _drive(self, steps: _Steps[_T]) -> _T:
        """Carry out ``steps`` on this thread's private connection. A LockBackendError is
        raised into the steps (an operation may carry on without that step)."""
        result: Any = None
        error: LockBackendError | None = None
        while not isinstance(step := _advance(steps, result, error), _Done):
            try:
                result, error = self._do(step), None
            except LockBackendError as e:
                result, error = None, e
        return step.value  # type: ignore[no-any-return]

    async def _adrive(self, steps: _Steps[_T]) -> _T:
        """:meth:`_drive` in the event loop (:meth:`_ado`), holding no thread."""
        result: Any = None
        error: LockBackendError | None = None
        while not isinstance(step := _advance(steps, result, error), _Done):
            try:
                result, error = await self._ado(step), None
            except LockBackendError as e:
                result, error = None, e
        return step.value  # type: ignore[no-any-return]

    async def _anative(self, steps: _Steps[_T], *,
                       after_cancel: Callable[[], _Steps[Any]] | None = None) -> _T:
        """An async caller's operation, awaited directly (a task per operation would cost
        about a tenth of an uncontended pair). Cancelled while a statement is in flight,
        psycopg cancels it in the database and the outcome is unknown: ``after_cancel``
        (an attempt's undo, a release's redo: a release by token, which touches nothing
        else) then settles it at once, and the cancellation goes on with its answer
        (AnsweredAfterCancel). If that fails too (a second cancellation, a backend error),
        the plain cancellation goes on (an attempt's token is then uncertain: the settler
        releases it)."""
        try:
            return await self._adrive(steps)
        except asyncio.CancelledError:
            if after_cancel is None:
                raise
            try:
                answer = await self._adrive(after_cancel())
            except (asyncio.CancelledError, LockBackendError):
                raise asyncio.CancelledError from None
            raise AnsweredAfterCancel(answer) from None

    def _read(self, statement: Statement, **params: Any) -> list[LockRow]:
        """The rows of a read that decides which holders are live: on its one clock
        reading, taken after the snapshot it reads (see ``snapshot_read``)."""
        begin = self.operations.snapshot_read
        if not begin:
            return [LockRow(*row) for row in self._run(statement, **params).rows]
        results = self._do(_Script([*((sql, ()) for sql in begin),
                                    (statement.sql, statement.bind(**params)), ("COMMIT", ())]))
        return [LockRow(*row) for row in results[-2].rows]

    def _transaction(self, key: str, *statements: Statement, lock_key: bool = False,
                     **params: Any) -> dict[str, Result]:
        """:meth:`_transacting` on this thread's private connection."""
        return self._drive(self._transacting(key, *statements, lock_key=lock_key, **params))

    def _transacting(self, key: str, *statements: Statement, lock_key: bool = False,
                     **params: Any) -> _Steps[dict[str, Result]]:
        """Run ``statements`` in one transaction on holders of ``key``; each one's result
        by name. A failure drops the connection, and with it the transaction.

        One clock per operation: the transaction first locks the key row (``lock_key``
        creates it if missing; where BEGIN locks for writing, only that), then stores one
        reading of the database clock (``store_clock``, a statement of its own, so after
        the lock was granted), and every later statement decides on that reading
        (``{txn_now}``). One round trip where the driver takes several statements in one.
        The test hook ``_after_clock_read`` splits it in two, to act between the reading
        and the statements that use it."""
        ops = self.operations
        head = [(sql, ()) for sql in ops.begin]
        if lock_key:
            head.append((ops.lock_key.sql, ops.lock_key.bind(key=key)))
        elif not self.features.begin_locks_for_writing:
            head.append((ops.lock_row.sql, ops.lock_row.bind(key=key)))
        head.append((ops.store_clock.sql, ()))
        body = [(s.sql, s.bind(key=key, **params)) for s in statements]
        tail = [(sql, ()) for sql in ops.end]
        if self._after_clock_read is None:
            results = (yield _Script([*head, *body, *tail]))[len(head):]
        else:
            read = yield _Script([*head, (ops.stored_clock.sql, ())])
            self._after_clock_read(int(read[-1].rows[0][0]))
            results = yield _Script([*body, *tail])
        return {s.name: result for s, result in zip(statements, results[:len(body)], strict=True)}

    # ----------------------------------------------------------------------- storage operations

    def _remember(self, memory: dict[str, str], name: str, value: str) -> None:
        if len(memory) >= self.REMEMBERED:
            memory.clear()  # forgetting only costs a round trip, or an early mark clearing
        memory[name] = value

    def _culling(self) -> _Steps[None]:
        """Delete rows released or expired more than ``cull_grace`` ms ago."""
        ops, age_us = self.operations, self.cull_grace * 1000
        try:
            culled = (yield _Run(ops.purge, {"age_us": age_us}, False)).rowcount
            culled += (yield _Run(ops.cull_holders, {"age_us": age_us}, False)).rowcount
        except LockBackendError as e:  # the attempt that follows reports the failure
            logger.warning("culling lock rows failed: %s (alias=%s)", e, self.alias)
            return
        logger.debug("culled %d lock rows (alias=%s)", culled, self.alias)

    def _try_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        if (store := self.in_memory_store()) is not None:  # inline: a hot path
            return store._try_acquire(key, token, ttl, correlation_id, mode, waiter)
        return self._drive(self._acquiring(key, token, ttl, correlation_id, mode, waiter))

    async def _atry_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        if not self.native_async:
            return await super()._atry_acquire(key, token, ttl, correlation_id, mode, waiter)
        return await self._anative(
            self._acquiring(key, token, ttl, correlation_id, mode, waiter),
            after_cancel=lambda: self._undoing(key, token),
        )

    def _undoing(self, key: str, token: str) -> _Steps[Attempt]:
        """After an attempt cancelled in flight: whatever it did is undone (a win released
        by its token), so its answer is a refusal."""
        yield from self._releasing(key, token)
        return Attempt(None)

    def _acquiring(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> _Steps[Attempt]:
        if self.cull_frequency:
            self._attempts_until_cull -= 1
            if self._attempts_until_cull <= 0:
                self._attempts_until_cull = self.cull_frequency
                yield from self._culling()
        wait = current_wait.get()
        notified = wait is not None and wait.key == key
        if notified:
            wait.generation = wait.listener.generation(key)  # a release from now on wakes it
        if not mode.exclusive:
            return (yield from self._holding(key, token, ttl, correlation_id, mode, waiter))
        ops = self.operations
        fair = self.features.fair_handoff
        # None: a waiting call's first attempt; its later ones: since when it waits (a
        # fencing token); 0: a call that does not wait, which may take a reservation.
        since = (self._waiting_calls.since(token) if waiter else 0) if fair else None
        acquired = yield _Run(ops.acquire, {"key": key, "token": token,
                                            "correlation_id": correlation_id,
                                            "ttl_us": ttl * 1000, "since": since})
        if self.features.returning:
            rows = acquired.rows
            if fair:  # the row comes back if taken, or marked waited for
                rows = [row[1:] for row in rows if row[0] == token]
                if not rows:
                    return (yield from self._lost(key, token, since, waiter))
            if not rows:
                if not waiter and not notified:
                    return Attempt(None)
                # A notified waiter sleeps until the release: it needs the holder's
                # remaining life to wake at its expiry too.
                row = yield from self._reading_row(key)
                return (yield from self._refused_exclusive(key, token, row, waiter))
            fencing_token, acquired_us, expires_us = rows[0]
        else:
            row = yield from self._reading_row(key)
            if row is not None and row.token == token:
                fencing_token, acquired_us, expires_us = row[2], row.acquired_at_us, row.expires_at_us
            else:
                # Won, then moved before the read-back: a semaphore admitted beside it
                # moves the exclusive holder into the holders' table (move_exclusive),
                # leaving the key row without token. Its row there says it holds the key.
                moved = ((yield _Run(ops.own_holder, {"token": token})).rows
                         if row is not None and row.token is None else [])
                if not moved:
                    return (yield from self._lost(key, token, since, waiter, row, read=True))
                fencing_token, acquired_us, expires_us = moved[0]
        if since:
            self._waiting_calls.won(token)
        if self._marked_keys.get(key) == token:
            del self._marked_keys[key]
            yield _Run(ops.unmark, {"key": key, "token": token}, False)
        return Attempt(LockRow(key, token, fencing_token, correlation_id, acquired_us, expires_us,
                               acquired_us).info())

    def _reading_row(self, key: str) -> _Steps[LockRow | None]:
        rows = (yield _Run(self.operations.read_row, {"key": key})).rows
        return LockRow(*rows[0]) if rows else None

    def _lost(self, key: str, token: str, since: int | None, waiter: bool,
              row: LockRow | None = None, *, read: bool = False) -> _Steps[Attempt]:
        """A failed exclusive attempt on a fair vendor: a waiting call's first failure
        records since when it waits, from the row (read here if not ``read``); then as
        :meth:`_refused_exclusive`."""
        if not read:
            if not waiter:
                return Attempt(None)
            row = yield from self._reading_row(key)
        if row is not None and since is None and waiter:
            self._waiting_calls.failed(token, row.fencing_token, held=row.token is not None)
        return (yield from self._refused_exclusive(key, token, row, waiter))

    def _refused_exclusive(self, key: str, token: str, row: LockRow | None,
                           waiter: bool) -> _Steps[Attempt]:
        """An exclusive attempt found the key row held: how long for. A waiter kept out by
        shared or semaphore holders (the row has no token) sets the writer mark."""
        if row is None:
            return Attempt(None, 0 if self.features.returning else None)
        remaining = max((row.expires_at_us - row.now_us) // 1000, 0)
        if waiter and row.token is None and remaining > 0:
            if (yield _Run(self.operations.mark, {"token": token, "key": key}, False)).rowcount:
                self._remember(self._marked_keys, key, token)
        return Attempt(None, remaining)

    def _holding(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> _Steps[Attempt]:
        """A shared or semaphore acquisition: one transaction (one round trip where the
        driver can) that locks the key row, admits in SQL, moves an exclusive holder it
        joins to the holders' table and settles the key row."""
        ops = self.operations
        params = {"token": token, "correlation_id": correlation_id, "ttl_us": ttl * 1000,
                  "shared": mode.shared, "limit": mode.limit, "waiter": waiter,
                  "durable": self.durable}
        alone = ops.holding_alone() if self._after_clock_read is None else None
        if alone is not None:
            rows = (yield _Run(alone, {"key": key, **params})).rows
        else:
            statements = ops.holding(shared=mode.shared, waiter=waiter)
            results = yield from self._transacting(key, *statements, lock_key=True, **params)
            rows = results[statements[-1].name].rows
        if not rows:
            blockers = [Blocker(*row) for row in (yield _Run(ops.blockers, {"key": key})).rows]
            return Attempt(None, refusal_ms(mode, blockers))
        self._remember(self._holder_keys, token, key)
        fencing_token, acquired_us, expires_us = rows[0]
        return Attempt(LockInfo(
            key=key, token=token, fencing_token=int(fencing_token), correlation_id=correlation_id,
            acquired_at_us=int(acquired_us), expires_at_us=int(expires_us),
            remaining_ms=(int(expires_us) - int(acquired_us)) // 1000,
            shared=mode.shared, limit=mode.limit,
        ))

    def _release(self, key: str, token: str) -> bool:
        if (store := self.in_memory_store()) is not None:  # inline: a hot path
            return store._release(key, token)
        return self._drive(self._releasing(key, token))

    async def _arelease(self, key: str, token: str) -> bool:
        if not self.native_async:
            return await super()._arelease(key, token)
        return await self._anative(self._releasing(key, token),
                                   after_cancel=lambda: self._releasing(key, token))

    def _releasing(self, key: str, token: str) -> _Steps[bool]:
        ops = self.operations
        if self._holder_keys.pop(token, None) is None:
            if (yield _Run(ops.release, {"key": key, "token": token}, False)).rowcount == 1:
                return True
        alone = ops.releasing_alone() if self._after_clock_read is None else None
        if alone is not None:
            released = yield _Run(alone, {"key": key, "token": token, "durable": self.durable}, False)
            return bool(released.rowcount == 1)
        statements = ops.releasing()
        results = yield from self._transacting(key, *statements, token=token, durable=self.durable)
        return results[statements[0].name].rowcount == 1

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        if (store := self.in_memory_store()) is not None:  # inline: a hot path
            return store._extend(key, token, ttl)
        return self._drive(self._extending(key, token, ttl))

    async def _aextend(self, key: str, token: str, ttl: int) -> int | None:
        if not self.native_async:
            return await super()._aextend(key, token, ttl)
        return await self._anative(self._extending(key, token, ttl))

    def _extending(self, key: str, token: str, ttl: int) -> _Steps[int | None]:
        ops = self.operations
        if token not in self._holder_keys:
            expires = yield from self._extending_exclusive(key, token, ttl)
            if expires is not None:
                return expires
        results = yield from self._transacting(key, ops.extend_holder, ops.recompute,
                                               ops.holder_expiry, token=token, ttl_us=ttl * 1000)
        if results["extend_holder"].rowcount != 1 or not results["holder_expiry"].rows:
            return None
        return int(results["holder_expiry"].rows[0][0])

    def _extending_exclusive(self, key: str, token: str, ttl: int) -> _Steps[int | None]:
        ops = self.operations
        extended = yield _Run(ops.extend, {"ttl_us": ttl * 1000, "key": key, "token": token})
        if self.features.returning:
            return int(extended.rows[0][0]) if extended.rows else None
        if extended.rowcount != 1:
            return None
        row = yield from self._reading_row(key)
        return int(row.expires_at_us) if row is not None and row.token == token else None

    @_in_memory_too
    def _unmark(self, key: str, token: str) -> None:
        self._drive(self._unmarking(key, token))

    async def _aunmark(self, key: str, token: str) -> None:
        if not self.native_async:
            return await super()._aunmark(key, token)
        await self._anative(self._unmarking(key, token))

    def _unmarking(self, key: str, token: str) -> _Steps[None]:
        if self._marked_keys.get(key) == token:
            del self._marked_keys[key]
        yield _Run(self.operations.unmark, {"key": key, "token": token}, False)

    @_in_memory_too
    def _force_release(self, key: str) -> bool:
        ops = self.operations
        results = self._transaction(key, ops.force_holders, ops.force_release, ops.clear_standing,
                                    ops.unmark_any)
        # Live holders deleted, or the exclusive holder released (a reservation is no one's).
        return results["force_holders"].rowcount > 0 or results["force_release"].rowcount > 0

    @_in_memory_too
    def _holders(self, key: str) -> list[LockInfo]:
        return [row.info() for row in self._read(self.operations.holders, key=key)]

    @_in_memory_too
    def _held(self) -> list[LockInfo]:
        return [row.info() for row in self._read(self.operations.held)]

    @_in_memory_too
    def _purge(self) -> int:
        ops = self.operations
        cleared = self._run(ops.clear_expired, rows=False).rowcount
        cleared += self._run(ops.purge_holders, rows=False).rowcount
        return cleared + self._run(ops.purge, age_us=PURGE_AFTER_US, rows=False).rowcount

    @_in_memory_too
    def expired_locks(self, *, prefix: str = "", limit: int | None = None) -> list[LockInfo]:
        """Holders whose lock expired without a release, until :meth:`purge` clears them,
        by expiry: those of keys starting with ``prefix``, the first ``limit`` of them
        (read at the database) or all."""
        if limit is None:
            validate_page_arguments(prefix, None, 1)
            rows = self._read(self.operations.expired)
            infos = [row.info() for row in rows if row.key.startswith(prefix)]
        else:
            validate_page_arguments(prefix, None, limit)
            infos = [row.info() for row in self._read(
                self.operations.expired_page, limit=limit, **self._prefix_bounds(prefix))]
        return sorted(infos, key=lambda info: (info.expires_at, info.key))

    @staticmethod
    def _prefix_bounds(prefix: str) -> dict[str, Any]:
        """The parameters of a statement's prefix match (operations.prefix_match)."""
        pattern = "".join("!" + c if c in "!%_" else c for c in prefix) + "%"
        return {"prefix": prefix, "prefix_length": len(prefix), "pattern": pattern}

    @_in_memory_too
    def _held_page(self, prefix: str, cursor: str | None, limit: int) -> LockPage:
        """One page by key at the database: a keyset read (the primary key's order, after
        the cursor's key) of ``limit`` + 1 keys on one clock, and a COUNT of the held keys
        that match."""
        after = key_cursor(cursor) or ""
        ops = self.operations
        bounds = {"after": after, **self._prefix_bounds(prefix)}
        rows = self._read(ops.held_page, limit=limit + 1, **bounds)
        keys = list(dict.fromkeys(row.key for row in rows))  # the database's key order
        more = len(keys) > limit
        order = {key: i for i, key in enumerate(keys[:limit])}
        holders = sorted((row.info() for row in rows if row.key in order),
                         key=lambda info: (order[info.key], info.expires_at_us, info.token))
        total = self._run(ops.held_count, **{k: v for k, v in bounds.items() if k != "after"}).rows
        return LockPage(holders, encode_cursor("key", keys[limit - 1]) if more else None,
                        int(total[0][0]))
