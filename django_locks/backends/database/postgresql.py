"""PostgreSQL: RETURNING, NOTIFY wake-ups, a transaction-local ``synchronous_commit``."""

from __future__ import annotations

from typing import Any

from django_locks.backends.database.features import DatabaseFeatures
from django_locks.backends.database.operations import NOTIFY_CHANNEL, DatabaseOperations


class PostgreSQLFeatures(DatabaseFeatures):
    vendor = "postgresql"
    can_listen = True

    def private_connection_options(self, options: dict[str, Any], database_module: Any) -> None:
        # A private connection, not one of Django's pool (Django 5.1+), so nothing of it
        # goes back to a pool that Django's own connections share.
        options.pop("pool", None)
        if getattr(database_module, "__name__", "") == "psycopg":
            # Never server-side prepared statements: behind PgBouncer in transaction mode
            # the next statement may run on another server connection, where a prepared
            # statement is missing or clashes ("_pg3_0 already exists").
            options["prepare_threshold"] = None

    def script_cursor(self, raw: Any) -> Any:
        if not hasattr(raw, "pipeline"):  # psycopg2: one statement at a time
            return None
        import psycopg

        # Client-side binding sends the statements as one simple query.
        return psycopg.ClientCursor(raw)


class PostgreSQLOperations(DatabaseOperations):
    now_us = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000)::bigint"
    # statement_timestamp() is when the client's message arrived, before any wait for the
    # key row's lock: the reading after the lock takes the clock itself.
    read_clock = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint"
    # A transaction-local setting (is_local => true): gone at the commit, never session
    # state, so a pooled server connection keeps nothing of it.
    store_clock = ("SELECT set_config('django_locks.now_us', "
                   "((EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint)::text, true)")
    transaction_now = "current_setting('django_locks.now_us')::bigint"
    # set_config(..., is_local => true) lasts until the end of the statement's own
    # (autocommit) transaction, and the commit reads it: no SET survives the statement,
    # so a pooled server connection keeps synchronous_commit as it was.
    nosync = "0 * length(set_config('synchronous_commit', 'off', true))"

    #: Reads deciding which holders are live: statement_timestamp() is when the statement
    #: arrived, its snapshot is taken later, so they read the clock once during execution,
    #: after the snapshot (a materialized CTE: one reading).
    READS_ON_THEIR_OWN_CLOCK = ("holders", "held", "expired", "held_page", "held_count")
    #: Statements that free holders tell the waiters of those keys, in the same statement:
    #: NOTIFY is delivered when its transaction commits.
    NOTIFYING = ("release", "force_release", "clear_expired", "release_holder", "force_holders",
                 "purge_holders", "cull_holders")

    def fragments(self, table: str, key: str, holders: str) -> dict[str, str]:
        self.key_column = key
        return super().fragments(table, key, holders)

    def adapt(self, name: str, sql: str) -> str:
        sql = super().adapt(name, sql)
        if name in self.READS_ON_THEIR_OWN_CLOCK:
            clock = "(SELECT now_us FROM django_locks_clock)"
            sql = (f"WITH django_locks_clock AS MATERIALIZED ({self.read_clock} AS now_us) "
                   + sql.replace(self.now_us, clock))
        if name in self.NOTIFYING:
            # PostgreSQL sends one of identical notifications of a transaction.
            sql = (f"WITH changed AS ({sql} RETURNING {self.key_column}) "
                   f"SELECT pg_notify('{NOTIFY_CHANNEL}', {self.key_column}) FROM changed")
        return sql
