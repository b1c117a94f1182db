"""What each database vendor can do for DatabaseLock, as features (never ``vendor ==``).

A vendor module (``postgresql.py``, ``mysql.py``, ``sqlite.py``) subclasses
:class:`DatabaseFeatures` and :class:`~.operations.DatabaseOperations`; the backend and
the private connection ask these questions instead of naming a vendor.
"""

from __future__ import annotations

from typing import Any


class DatabaseFeatures:
    vendor = ""
    #: The upsert and the extend return the row they wrote (else it is read back).
    returning = True
    #: Fair handoff (see docs/internals/database.md): waiting calls mark the row waited
    #: for, and a release of a marked row leaves it reserved for waiters.
    fair_handoff = False
    #: Waiters can be woken by the database (PostgreSQL's LISTEN/NOTIFY).
    can_listen = False
    #: BEGIN itself locks the database for writing (SQLite's BEGIN IMMEDIATE): a
    #: transaction on holders needs no statement to lock the key row first.
    begin_locks_for_writing = False
    #: The database lives in this process (SQLite): a fork must wait for statements in
    #: flight (SQLiteForkGate), and an in-memory database cannot be shared by the private
    #: connection.
    in_process = False

    def private_connection_options(self, options: dict[str, Any], database_module: Any) -> None:
        """Adjust the OPTIONS of the private connection (a copy of the alias's)."""

    def script_cursor(self, raw: Any) -> Any:
        """A cursor of ``raw`` that runs several statements in one round trip, or None:
        they run one by one."""
        return None

    def after_connect(self, raw: Any) -> None:
        """Run once on each new raw private connection."""

    # Async: where the driver has an async API, async callers' statements are awaited in
    # the event loop on private async connections (``connection.async_connections``)
    # instead of running the sync ones in a worker thread.

    def can_await_in(self, loop: Any) -> bool:
        """Whether the async driver works in event loop ``loop`` (else the operation runs
        in a worker thread, as without an async driver)."""
        return True

    def has_async_driver(self, database_module: Any) -> bool:
        """Whether ``database_module`` (the alias's driver) can be awaited in the event loop.
        No by default: SQLite's and MariaDB's drivers have no async API, and keep the thread."""
        return False

    async def aconnect(self, wrapper: Any) -> Any:
        """A new raw async private connection with the settings of ``wrapper`` (a private
        connection's ``DatabaseWrapper``), in autocommit mode."""
        raise NotImplementedError

    def async_script_cursor(self, raw: Any) -> Any:
        """An async cursor of ``raw`` that runs several statements in one round trip."""
        raise NotImplementedError

    def async_reusable(self, raw: Any) -> bool:
        """Whether an async connection that ran its statements can serve the next ones
        (open, and no transaction left open)."""
        return False

    def async_finish(self, raw: Any) -> None:
        """Close an async connection without awaiting anything (from any thread, or after
        its event loop closed)."""
