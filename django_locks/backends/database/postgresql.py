"""PostgreSQL: RETURNING, NOTIFY wake-ups, a transaction-local ``synchronous_commit``."""

from __future__ import annotations

import asyncio
from typing import Any

from django_locks.backends.database.features import DatabaseFeatures
from django_locks.backends.database.operations import (
    _PARAMETER,
    NOTIFY_CHANNEL,
    DatabaseOperations,
    Statement,
)

#: Event loops without ``add_reader``, where psycopg's async connections cannot run.
LOOPS_WITHOUT_READERS: tuple[type, ...] = tuple(
    loop for loop in (getattr(asyncio, "ProactorEventLoop", None),) if loop is not None
)


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

    def has_async_driver(self, database_module: Any) -> bool:
        return getattr(database_module, "__name__", "") == "psycopg"  # psycopg 3, not psycopg2

    async def aconnect(self, wrapper: Any) -> Any:
        import psycopg
        from psycopg import sql

        # The sync private connection's parameters (prepare_threshold None, no pool),
        # without its sync cursor class: statements run on cursors made for each.
        params = wrapper.get_connection_params()
        params.pop("cursor_factory", None)
        raw = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        role = wrapper.settings_dict["OPTIONS"].get("assume_role")
        try:
            if role:  # as Django's own connection does on connect (Django 5.2's assume_role)
                await raw.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        except BaseException:
            self.async_finish(raw)
            raise
        return raw

    def can_await_in(self, loop: Any) -> bool:
        # psycopg's async connections need a loop with add_reader (not Windows' default
        # ProactorEventLoop, which psycopg refuses): there, a worker thread.
        return not isinstance(loop, LOOPS_WITHOUT_READERS)

    def async_script_cursor(self, raw: Any) -> Any:
        import psycopg

        return psycopg.AsyncClientCursor(raw)

    def async_reusable(self, raw: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return not raw.closed and raw.info.transaction_status == TransactionStatus.IDLE

    def async_finish(self, raw: Any) -> None:
        raw.pgconn.finish()  # libpq's PQfinish: no await; the connection then reads closed


class PostgreSQLOperations(DatabaseOperations):
    now_us = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000)::bigint"
    # statement_timestamp() is when the client's message arrived, before any wait for the
    # key row's lock: the reading after the lock takes the clock itself.
    clock_now = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint"
    read_clock = "SELECT " + clock_now
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


    # ------------------------------------------------------------------ server-side functions
    # Planning, not running, is what a holder's statements cost (each reference to a table
    # is planned anew: ~0.15 ms for ``hold``, more than it takes to run). PL/pgSQL keeps
    # the plans of a function's statements for the server connection's life, and holds
    # no other state: a pooled server connection (PgBouncer, transaction mode) keeps
    # nothing of a call but those plans. The functions are the statements above, run in
    # the same transaction (after ``lock_key`` or ``lock_row`` and ``store_clock``: they
    # read that one clock reading once, into ``v_now``); migration 0005 creates them.

    #: The admission: ``hold_shared``, ``hold_semaphore`` or ``hold_semaphore_waiter``.
    #: ``p_locked``: the caller's transaction locked the key row and stored the clock
    #: (``_transaction``); else the function does, as ``lock_key`` and ``store_clock`` do
    #: (the clock read after the lock was granted), and the call is the whole transaction.
    #: An existing key row (the common case) is locked as ``lock_row`` does, without
    #: writing a new version of it; a missing one is created by ``lock_key``.
    create_hold = """
        CREATE OR REPLACE FUNCTION {hold_function}(p_key text, p_token text,
            p_correlation_id text, p_ttl_us bigint, p_shared boolean, p_limit integer,
            p_waiter boolean, p_durable boolean, p_locked boolean)
        RETURNS TABLE (fencing_token bigint, acquired_at_us bigint, expires_at_us bigint)
        LANGUAGE plpgsql VOLATILE AS $django_locks$
        #variable_conflict use_column
        DECLARE v_now bigint; v_fencing_token bigint; v_acquired_at_us bigint;
            v_expires_at_us bigint;
        BEGIN
            {durability}
            IF p_locked THEN v_now := {txn_now};
            ELSE
                {lock_row};
                IF NOT FOUND THEN {lock_key}; END IF;
                v_now := {clock};
            END IF;
            IF p_shared THEN {hold_shared} {into};
            ELSIF p_waiter THEN {hold_semaphore_waiter} {into};
            ELSE {hold_semaphore} {into};
            END IF;
            IF v_fencing_token IS NOT NULL THEN
                RETURN QUERY SELECT v_fencing_token, v_acquired_at_us, v_expires_at_us;
            END IF;
        END $django_locks$
    """
    #: The release (``release_and_recompute``): one row, the key, if it released the holder.
    create_release_holder = """
        CREATE OR REPLACE FUNCTION {release_function}(p_key text, p_token text,
            p_durable boolean, p_locked boolean)
        RETURNS SETOF text
        LANGUAGE plpgsql VOLATILE AS $django_locks$
        #variable_conflict use_column
        DECLARE v_now bigint; v_released bigint;
        BEGIN
            {durability}
            IF p_locked THEN v_now := {txn_now};
            ELSE {lock_row}; v_now := {clock};
            END IF;
            {release_and_recompute_count};
            IF v_released > 0 THEN RETURN NEXT p_key; END IF;
        END $django_locks$
    """
    #: ``durable: False`` (the alias's, a parameter: aliases of one database share the
    #: functions): the transaction commits without waiting for the disk, as ``{nosync}``.
    durability = "IF NOT p_durable THEN PERFORM set_config('synchronous_commit', 'off', true); END IF;"
    hold_function = "django_locks_hold"
    release_function = "django_locks_release_holder"
    drop_functions = (
        "DROP FUNCTION IF EXISTS {hold_function}(text, text, text, bigint, boolean, integer, "
        "boolean, boolean, boolean)",
        "DROP FUNCTION IF EXISTS {release_function}(text, text, boolean, boolean)",
    )
    hold_call = ("SELECT fencing_token, acquired_at_us, expires_at_us FROM {hold_function}("
                 ":key, :token, :correlation_id, :ttl_us, :shared, :limit, :waiter, :durable, {locked})")
    #: The whole transaction, one statement: the function locks the key row.
    call_hold = hold_call.replace("{locked}", "FALSE")
    #: In the caller's transaction (after ``lock_key`` and ``store_clock``).
    call_hold_locked = hold_call.replace("{locked}", "TRUE")
    call_release_holder = "SELECT * FROM {release_function}(:key, :token, :durable, FALSE)"
    call_release_holder_locked = "SELECT * FROM {release_function}(:key, :token, :durable, TRUE)"

    STATEMENTS = (*DatabaseOperations.STATEMENTS, "hold_shared", "hold_semaphore",
                  "hold_semaphore_waiter", "release_and_recompute", "call_hold",
                  "call_hold_locked", "call_release_holder", "call_release_holder_locked")

    def holding(self, *, shared: bool, waiter: bool) -> tuple[Statement, ...]:
        return (self.call_hold_locked,)  # type: ignore[return-value]

    def releasing(self) -> tuple[Statement, ...]:
        return (self.call_release_holder_locked,)  # type: ignore[return-value]

    def holding_alone(self) -> Statement | None:
        return self.call_hold  # type: ignore[return-value]

    def releasing_alone(self) -> Statement | None:
        return self.call_release_holder  # type: ignore[return-value]

    def install(self) -> list[str]:
        """What migration 0005 runs: the functions, made of the statements above (their
        ``:name`` parameters become the functions' ``p_name``, the transaction's clock
        ``v_now``)."""
        # Durability is the call's (``p_durable``), not the migrating alias's.
        fragments = {**self._fragments, "txn_now": "v_now", "nosync": ""}

        def body(template: str) -> str:
            return _PARAMETER.sub(r"p_\1", self.render(template, fragments))

        release = body(type(self).release_and_recompute).replace(
            f"SELECT pg_notify('{NOTIFY_CHANNEL}', {self.key_column}) FROM released",
            f"SELECT COUNT(pg_notify('{NOTIFY_CHANNEL}', {self.key_column})::text) INTO v_released "
            "FROM released")
        functions = {
            **fragments, "txn_now": self._fragments["txn_now"], "clock": self.clock_now,
            "durability": self.durability, "into": "INTO v_fencing_token, v_acquired_at_us, v_expires_at_us",
            "lock_key": body(type(self).lock_key), "lock_row": "PERFORM" + body(type(self).lock_row)[6:],
            "hold_shared": body(type(self).hold_shared),
            "hold_semaphore": body(type(self).hold_semaphore),
            "hold_semaphore_waiter": body(type(self).hold_semaphore_waiter),
            "release_and_recompute_count": release,
        }
        return [self.render(type(self).create_hold, functions),
                self.render(type(self).create_release_holder, functions)]

    def uninstall(self) -> list[str]:
        return [self.render(sql, self._fragments) for sql in self.drop_functions]

    def fragments(self, table: str, key: str, holders: str) -> dict[str, str]:
        self.key_column = key
        self._fragments = {
            **super().fragments(table, key, holders), "channel": NOTIFY_CHANNEL,
            "hold_function": self.hold_function, "release_function": self.release_function,
        }
        return self._fragments

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
