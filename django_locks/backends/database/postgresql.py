"""PostgreSQL: RETURNING, NOTIFY wake-ups, a transaction-local ``synchronous_commit``."""

from __future__ import annotations

from typing import Any

from django_locks.backends.database.features import DatabaseFeatures
from django_locks.backends.database.operations import NOTIFY_CHANNEL, DatabaseOperations, Statement


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

    # ------------------------------------------------------------------ holders, one statement each
    # Data-modifying CTEs: what follows the key row's lock and the clock reading is one
    # statement (each further statement of a transaction costs a parse, a plan and a run).
    # Every part reads the snapshot taken after the lock, and the one clock reading
    # ({txn_now}); a part sees another's writes only through RETURNING, so each one is
    # written on what the others return (``own``: the admitted row, or this token's row
    # of an earlier attempt).

    #: A shared or semaphore admission (see :meth:`DatabaseOperations.holding`):
    #: ``admit_*``, ``move_exclusive``, ``settle`` (or ``settle_waiter`` and
    #: ``mark_refused``) and ``own_holder`` in one statement.
    hold = """
        WITH mine AS (SELECT fencing_token, acquired_at_us, expires_at_us FROM {holders}
            WHERE token = :token),
        admitted AS (
            INSERT INTO {holders} (token, {key}, correlation_id, fencing_token, acquired_at_us,
                expires_at_us, shared, holder_limit)
            SELECT :token, {key}, :correlation_id, GREATEST(fencing_token + 1, {txn_now}), {txn_now},
                {txn_now} + :ttl_us, :shared, :limit
            FROM {table} WHERE {key} = :key AND NOT EXISTS (SELECT 1 FROM mine) AND {rule}
            RETURNING fencing_token, acquired_at_us, expires_at_us),
        own AS (SELECT * FROM admitted UNION ALL SELECT * FROM mine),
        {moved}
        settled AS (
            UPDATE {table} SET {clear_mark} correlation_id = NULL, token = NULL, waiting_since_us = NULL,
                fencing_token = GREATEST({table}.fencing_token, own.fencing_token),
                expires_at_us = GREATEST({table}.expires_at_us, own.expires_at_us){nosync}
            FROM own WHERE {key} = :key)
        {refused}
        SELECT fencing_token, acquired_at_us, expires_at_us FROM own
    """
    #: A semaphore admitted next to the key row's live exclusive holder moves it to the
    #: holders' table (as ``move_exclusive``; read on the row as it was before ``settled``).
    moved = """
        moved AS (
            INSERT INTO {holders} (token, {key}, correlation_id, fencing_token, acquired_at_us,
                expires_at_us, shared, holder_limit)
            SELECT token, {key}, correlation_id, fencing_token, acquired_at_us, expires_at_us, FALSE, 1
            FROM {table} WHERE {key} = :key AND {exclusive_live} AND EXISTS (SELECT 1 FROM own)),
    """
    #: A non-shared waiter: its own writer mark goes once admitted (``settle_waiter``)...
    clear_mark = """
        mark_expires_at_us = CASE WHEN mark_token = :token THEN NULL ELSE mark_expires_at_us END,
        mark_token = CASE WHEN mark_token = :token THEN NULL ELSE mark_token END,
    """
    #: ... and is set (renewed) when refused (``mark_refused``). Never both: ``settled``
    #: writes the row only if ``own`` has a row, this only if not.
    refused = """
        , refused AS (
            UPDATE {table} SET mark_expires_at_us = {txn_now} + {mark_us}{nosync}, mark_token = :token
            WHERE {key} = :key AND NOT EXISTS (SELECT 1 FROM own))
    """
    hold_shared = hold.replace("{rule}", "{shared_rule}").replace("{moved}", "").replace(
        "{clear_mark}", "").replace("{refused}", "")
    hold_semaphore = hold.replace("{rule}", "{semaphore_rule}").replace("{moved}", moved).replace(
        "{clear_mark}", "").replace("{refused}", "")
    hold_semaphore_waiter = hold.replace("{rule}", "{semaphore_rule}").replace(
        "{moved}", moved).replace("{clear_mark}", clear_mark).replace("{refused}", refused)
    #: A holder's release (``release_holder`` and ``recompute``, NOTIFY included): the key
    #: row's expiry follows the live holders but the released one (which the snapshot still
    #: shows). Its rowcount is the released holders'.
    release_and_recompute = """
        WITH released AS (
            DELETE FROM {holders}
            WHERE token = :token AND {key} = :key AND expires_at_us > {txn_now}{nosync_release}
            RETURNING {key}),
        recomputed AS (
            UPDATE {table} SET expires_at_us = COALESCE((SELECT MAX(o.expires_at_us) FROM {holders} o
                WHERE o.{key} = :key AND o.expires_at_us > {txn_now} AND o.token <> :token),
                {txn_now}){nosync}
            WHERE {key} = :key AND token IS NULL AND expires_at_us > {txn_now})
        SELECT pg_notify('{channel}', {key}) FROM released
    """

    STATEMENTS = (*DatabaseOperations.STATEMENTS, "hold_shared", "hold_semaphore",
                  "hold_semaphore_waiter", "release_and_recompute")

    def holding(self, *, shared: bool, waiter: bool) -> tuple[Statement, ...]:
        if shared:
            return (self.hold_shared,)  # type: ignore[return-value]
        return (self.hold_semaphore_waiter if waiter else self.hold_semaphore,)  # type: ignore[return-value]

    def releasing(self) -> tuple[Statement, ...]:
        return (self.release_and_recompute,)  # type: ignore[return-value]

    def fragments(self, table: str, key: str, holders: str) -> dict[str, str]:
        self.key_column = key
        return {**super().fragments(table, key, holders), "channel": NOTIFY_CHANNEL}

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
