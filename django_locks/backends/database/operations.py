"""The statements of DatabaseLock, declared by name, with named parameters.

Each statement is a template written as the SQL it becomes. Fragments in braces are
filled once per alias from :meth:`DatabaseOperations.fragments` (the tables, the clock,
the vendor's spelling); parameters are written ``:name`` and compiled to the driver's
placeholder, so a statement is run with keyword arguments (:meth:`Statement.bind`) and
never by counting placeholders. Vendors override templates and fragments in their own
module (``postgresql.py``, ``mysql.py``, ``sqlite.py``); how the statements keep the
contract is told in ``docs/internals/database.md``.

Two clocks appear in the templates:

* ``{now}``: the database clock, constant within one statement (single statements);
* ``{txn_now}``: the one reading of the clock a transaction on holders takes after it
  locked the key row (``store_clock``), kept for the rest of the transaction where the
  vendor keeps such a value (PostgreSQL: a transaction-local setting; MariaDB/MySQL: a
  user variable, cleared before the commit; SQLite: a row of a temporary table of the
  private connection), so every statement of one operation decides on the same instant
  and the whole transaction is one round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from django_locks.backends.database import fairness
from django_locks.values import WRITER_MARK_MS, LockInfo

#: The channel of PostgreSQL's NOTIFY: the payload is the key whose holder went away.
NOTIFY_CHANNEL = "django_locks"

#: A ``:name`` parameter (not PostgreSQL's ``::type`` cast, nor a time literal's ``:00``).
_PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z_0-9]*)")


@dataclass(frozen=True)
class Statement:
    """One statement: its SQL with the driver's placeholders, and its parameters' names
    in the order the placeholders take them."""

    name: str
    sql: str
    parameters: tuple[str, ...]

    @classmethod
    def compile(cls, name: str, template: str, placeholder: str) -> Statement:
        parameters: list[str] = []

        def positional(match: re.Match[str]) -> str:
            parameters.append(match.group(1))
            return placeholder

        sql = " ".join(_PARAMETER.sub(positional, template).split())
        return cls(name, sql, tuple(parameters))

    def bind(self, **values: Any) -> tuple[Any, ...]:
        """The parameters in placeholder order, from keyword arguments (all required)."""
        return tuple(values[name] for name in self.parameters)



class LockRow(NamedTuple):
    """A holder as the reads return it: the lock columns, the database's "now" (µs; None
    when not measured), and the holder's mode."""

    key: str
    token: str | None
    fencing_token: int
    correlation_id: str | None
    acquired_at_us: int
    expires_at_us: int
    now_us: int | None = None
    shared: bool = False
    holder_limit: int = 1

    def info(self) -> LockInfo:
        now = self.now_us
        return LockInfo(
            key=self.key,
            token=self.token,
            fencing_token=int(self.fencing_token),
            correlation_id=self.correlation_id,
            acquired_at_us=int(self.acquired_at_us),
            expires_at_us=int(self.expires_at_us),
            remaining_ms=(max(0, (int(self.expires_at_us) - int(now)) // 1000)
                          if now is not None else None),
            shared=bool(self.shared),
            limit=int(self.holder_limit),
        )


class Blocker(NamedTuple):
    """What keeps an acquisition out (the ``blockers`` statement): µs left, and its kind."""

    remaining_us: int
    kind: int  # HOLDER, SHARED_HOLDER or WRITER_MARK

    HOLDER = 0
    SHARED_HOLDER = 1
    WRITER_MARK = 2


#: The key row's lock columns, in LockRow's order.
LOCK_COLUMNS = "{key}, token, fencing_token, correlation_id, acquired_at_us, expires_at_us"


class DatabaseOperations:
    """The statements of one vendor. Subclasses set the clock and what differs in their
    dialect; :meth:`statements` renders and compiles every template once per alias."""

    #: The database clock in µs since the Unix epoch (UTC), constant within one statement.
    now_us = ""
    #: The clock as a statement of its own reads it (after a wait for a lock, say).
    read_clock = "SELECT {now}"
    #: The transaction's one reading of the clock, as its later statements read it back.
    transaction_now = ""
    #: Takes that reading, once the key row is locked (a statement of its own: evaluated
    #: after the lock was granted).
    store_clock = ""
    #: What ends a transaction on holders.
    end: tuple[str, ...] = ("COMMIT",)
    greatest = "GREATEST"
    false = "FALSE"
    #: The driver's parameter placeholder (statements run on the raw DB-API cursor).
    placeholder = "%s"
    #: An integer expression worth 0 whose evaluation makes the statement's transaction
    #: commit without waiting for the disk (added to a value each write statement of a
    #: non-durable alias writes). Empty: no such transaction-local switch.
    nosync = ""
    #: What opens the transaction of a multi-statement operation on the holders.
    begin: tuple[str, ...] = ("BEGIN ISOLATION LEVEL READ COMMITTED",)
    #: What opens the transaction of a read deciding which holders are live, where its
    #: snapshot would otherwise be taken after its clock reading. Empty: one statement
    #: reads the clock after its snapshot.
    snapshot_read: tuple[str, ...] = ()
    #: Locks the key row for the rest of the transaction.
    lock_row_suffix = " FOR UPDATE"

    # ------------------------------------------------------------------ the exclusive path

    insert = """
        INSERT INTO {table} ({key}, token, correlation_id, fencing_token, acquired_at_us, expires_at_us)
        VALUES (:key, :token, :correlation_id, {now}, {now}, {now} + :ttl_us{nosync})
    """
    #: Takes the row if it is free or expired; returns nothing if it is held.
    acquire = """
        {insert} ON CONFLICT ({key}) DO UPDATE SET
            token = excluded.token, correlation_id = excluded.correlation_id,
            fencing_token = {greatest}({table}.fencing_token + 1, excluded.fencing_token),
            acquired_at_us = excluded.acquired_at_us, expires_at_us = excluded.expires_at_us
        WHERE {table}.expires_at_us <= excluded.acquired_at_us
        RETURNING fencing_token, acquired_at_us, expires_at_us
    """
    #: Frees the row only for its holder's token, and only while it is unexpired. A
    #: holder's own release never waits for the disk, durable or not (see
    #: docs/internals/database.md): ``{nosync_release}``.
    release = """
        UPDATE {table} SET token = NULL, correlation_id = NULL,
            expires_at_us = {now}{reserve}{nosync_release}
        WHERE {key} = :key AND token = :token AND expires_at_us > {now}
    """
    #: The exclusive holder goes, and the writer mark (after the holders' rows, in the
    #: same transaction).
    force_release = """
        UPDATE {table} SET token = NULL, correlation_id = NULL, mark_token = NULL,
            mark_expires_at_us = NULL, expires_at_us = {txn_now}{nosync}
        WHERE {key} = :key AND token IS NOT NULL AND expires_at_us > {txn_now}
    """
    extend = """
        UPDATE {table} SET expires_at_us = {now} + :ttl_us{nosync}
        WHERE {key} = :key AND token = :token AND expires_at_us > {now}
        RETURNING expires_at_us
    """
    read_row = "SELECT " + LOCK_COLUMNS + ", {now} FROM {table} WHERE {key} = :key"

    # ------------------------------------------------------------------ reads (LockRow)

    #: A key row with no token and a future expiry stands for its holders' rows.
    held_exclusive = ("SELECT " + LOCK_COLUMNS + ", {now}, {false}, 1 FROM {table} "
                      "WHERE token IS NOT NULL AND expires_at_us > {now}")
    held_holders = ("SELECT " + LOCK_COLUMNS + ", {now}, shared, holder_limit FROM {holders} "
                    "WHERE expires_at_us > {now}")
    holders = """
        {held_exclusive} AND {key} = :key
        UNION ALL SELECT {lock_columns}, {now}, shared, holder_limit FROM {holders}
        WHERE {key} = :key AND expires_at_us > {now}
    """
    held = "{held_exclusive} UNION ALL {held_holders}"
    #: Holders that expired without releasing: shown until purged.
    expired = """
        SELECT {lock_columns}, NULL, {false}, 1 FROM {table}
        WHERE token IS NOT NULL AND expires_at_us <= {now}
        UNION ALL SELECT {lock_columns}, NULL, shared, holder_limit FROM {holders}
        WHERE expires_at_us <= {now}
    """

    #: The first ``:limit`` of them whose key starts with the prefix, by expiry then key
    #: (the admin's page: never every expired holder).
    expired_page = """
        SELECT {lock_columns}, NULL, {false}, 1 FROM {table} p
        WHERE p.token IS NOT NULL AND p.expires_at_us <= {now} AND {prefix_p}
        UNION ALL SELECT {lock_columns}, NULL, shared, holder_limit FROM {holders} q
        WHERE q.expires_at_us <= {now} AND {prefix_q}
        ORDER BY 6, 1 LIMIT :limit
    """

    #: The keys of one listing page (``:limit`` of them, after ``:after``, starting with the
    #: prefix), in key order: the keys of live exclusive holders (the key row's token) and
    #: those of live shared and semaphore holders (their key row has no token), each side a
    #: keyset read of its own index; no per-row subquery, so the planner's estimates stay
    #: those of a short index scan (PostgreSQL would otherwise JIT-compile the statement).
    page_keys = """
        SELECT u.page_key FROM (
            SELECT e.page_key FROM (SELECT p.{key} AS page_key FROM {table} p
                WHERE p.{key} > :after AND {prefix_p} AND p.token IS NOT NULL
                    AND p.expires_at_us > {now}
                ORDER BY p.{key} LIMIT :limit) e
            UNION
            SELECT s.page_key FROM (SELECT DISTINCT q.{key} AS page_key FROM {holders} q
                WHERE q.{key} > :after AND {prefix_q} AND q.expires_at_us > {now}
                ORDER BY q.{key} LIMIT :limit) s
        ) u ORDER BY u.page_key LIMIT :limit
    """
    #: Every live holder of the keys of one page (list_locks), on one clock, by key (the
    #: database's order, the one the keyset follows). The keys are a derived table (MySQL
    #: takes no LIMIT in an IN subquery).
    held_page = """
        SELECT {lock_columns}, {now}, {false}, 1 FROM {table}
        JOIN ({page_keys}) k ON k.page_key = {table}.{key}
        WHERE token IS NOT NULL AND expires_at_us > {now}
        UNION ALL SELECT {holders}.{key}, token, fencing_token, correlation_id, acquired_at_us,
            expires_at_us, {now}, shared, holder_limit FROM {holders}
        JOIN ({page_keys}) k ON k.page_key = {holders}.{key}
        WHERE expires_at_us > {now}
        ORDER BY 1
    """
    #: How many keys are held that start with the prefix: exclusive holders' key rows, and
    #: the distinct keys of shared and semaphore holders (one scan of each).
    held_count = """
        SELECT (SELECT COUNT(*) FROM {table} p
                WHERE {prefix_p} AND p.token IS NOT NULL AND p.expires_at_us > {now})
            + (SELECT COUNT(DISTINCT q.{key}) FROM {holders} q
               WHERE {prefix_q} AND q.expires_at_us > {now})
    """
    #: Keys starting with the prefix (``{column}``): a LIKE the key index serves (``:pattern``
    #: is the prefix with ``!``, ``%`` and ``_`` escaped by ``!``, then ``%``). SQLite's LIKE
    #: ignores ASCII case: its own compares the first characters.
    prefix_match = "{column} LIKE :pattern ESCAPE '!'"

    # ------------------------------------------------------------------ purge and culling

    #: Rows expired long ago go (the row, and its fencing counter, stays a while).
    purge = "DELETE FROM {table} WHERE expires_at_us < {now} - :age_us{nosync}"
    clear_expired = """
        UPDATE {table} SET token = NULL, correlation_id = NULL{keep_expiry}
        WHERE token IS NOT NULL AND expires_at_us <= {now}
    """
    purge_holders = "DELETE FROM {holders} WHERE expires_at_us <= {now}{nosync}"
    cull_holders = "DELETE FROM {holders} WHERE expires_at_us < {now} - :age_us{nosync}"

    # ------------------------------------------------------------------ shared and semaphore holders
    # Each operation runs in one transaction that first locks the key row (lock_key or
    # lock_row), then reads the clock once ({txn_now}).

    #: The key row, created free if missing, locked until the end of the transaction.
    lock_key = """
        INSERT INTO {table} ({key}, token, correlation_id, fencing_token, acquired_at_us, expires_at_us)
        VALUES (:key, NULL, NULL, {now}, {now}, {now}{nosync}) {touch}
    """
    #: What follows the insert of a free key row when the row exists: it locks it.
    touch = "ON CONFLICT ({key}) DO UPDATE SET fencing_token = {table}.fencing_token"
    lock_row = "SELECT 1 FROM {table} WHERE {key} = :key{lock_row_suffix}"
    #: Admits this token as a holder of the key if the rule that follows allows it.
    admit = """
        INSERT INTO {holders} (token, {key}, correlation_id, fencing_token, acquired_at_us,
            expires_at_us, shared, holder_limit)
        SELECT :token, {key}, :correlation_id, {greatest}(fencing_token + 1, {txn_now}), {txn_now},
            {txn_now} + :ttl_us, :shared, :limit
        FROM {table} WHERE {key} = :key AND NOT {mine} AND
    """
    #: Fewer than ``limit`` live holders of any mode.
    admit_semaphore = "{admit} {semaphore_rule}"
    #: No live non-shared holder and no live writer mark.
    admit_shared = "{admit} {shared_rule}"
    #: A semaphore admitted next to the key row's exclusive holder: that one moves to the
    #: holders' table, so that the key row stands for its holders.
    move_exclusive = """
        INSERT INTO {holders} (token, {key}, correlation_id, fencing_token, acquired_at_us,
            expires_at_us, shared, holder_limit)
        SELECT token, {key}, correlation_id, fencing_token, acquired_at_us, expires_at_us,
            {false}, 1
        FROM {table} WHERE {key} = :key AND {exclusive_live} AND {mine}
    """
    #: After an admission: the key row has no token, the new fencing counter, and expires
    #: with the last holder.
    settle = "UPDATE {table} SET {settle_columns}"
    #: A non-shared waiter clears its own writer mark once admitted. MySQL assigns left to
    #: right: the mark's expiry first, reading the old mark_token.
    settle_waiter = """
        UPDATE {table} SET
            mark_expires_at_us = CASE WHEN mark_token = :token THEN NULL ELSE mark_expires_at_us END,
            mark_token = CASE WHEN mark_token = :token THEN NULL ELSE mark_token END,
            {settle_columns}
    """
    #: Refused, a non-shared waiter sets (renews) its writer mark.
    mark_refused = """
        UPDATE {table} SET mark_expires_at_us = {txn_now} + {mark_us}{nosync}, mark_token = :token
        WHERE {key} = :key AND NOT {mine}
    """
    own_holder = "SELECT fencing_token, acquired_at_us, expires_at_us FROM {holders} WHERE token = :token"
    #: What keeps an acquisition out (Blocker rows), on one statement's clock.
    blockers = """
        SELECT expires_at_us - {now}, CASE WHEN shared THEN 1 ELSE 0 END FROM {holders}
        WHERE {key} = :key AND expires_at_us > {now}
        UNION ALL SELECT expires_at_us - {now}, 0 FROM {table}
        WHERE {key} = :key AND token IS NOT NULL AND expires_at_us > {now}
        UNION ALL SELECT mark_expires_at_us - {now}, 2 FROM {table}
        WHERE {key} = :key AND mark_expires_at_us > {now}
    """
    #: An exclusive waiter kept out by shared or semaphore holders (a statement of its own).
    mark = """
        UPDATE {table} SET mark_expires_at_us = {now} + {mark_us}{nosync}, mark_token = :token
        WHERE {key} = :key AND token IS NULL AND expires_at_us > {now}
    """
    #: Its own mark, once it won.
    unmark = """
        UPDATE {table} SET mark_token = NULL, mark_expires_at_us = NULL{nosync}
        WHERE {key} = :key AND mark_token = :token
    """
    #: The key row's expiry follows its live holders (now when none is left).
    recompute = """
        UPDATE {table} SET expires_at_us = COALESCE((SELECT MAX(o.expires_at_us) FROM {holders} o
            WHERE o.{key} = :key AND o.expires_at_us > {txn_now}), {txn_now}){nosync}
        WHERE {key} = :key AND token IS NULL AND expires_at_us > {txn_now}
    """
    release_holder = """
        DELETE FROM {holders}
        WHERE token = :token AND {key} = :key AND expires_at_us > {txn_now}{nosync_release}
    """
    extend_holder = """
        UPDATE {holders} SET expires_at_us = {txn_now} + :ttl_us{nosync}
        WHERE token = :token AND {key} = :key AND expires_at_us > {txn_now}
    """
    holder_expiry = "SELECT expires_at_us FROM {holders} WHERE token = :token"
    #: After a force release: a key row standing for holders is free at once; a
    #: reservation for waiters stays.
    clear_standing = """
        UPDATE {table} SET expires_at_us = {txn_now}{nosync}
        WHERE {key} = :key AND token IS NULL AND waiting_since_us IS NULL AND expires_at_us > {txn_now}
    """
    #: Live ones only: expired rows are purge's.
    force_holders = "DELETE FROM {holders} WHERE {key} = :key AND expires_at_us > {txn_now}{nosync}"
    unmark_any = """
        UPDATE {table} SET mark_token = NULL, mark_expires_at_us = NULL{nosync}
        WHERE {key} = :key AND mark_token IS NOT NULL
    """

    #: Every statement an alias runs, by name (the templates above and the vendor's).
    STATEMENTS = (
        "insert", "acquire", "release", "force_release", "extend", "read_row", "holders", "held",
        "expired", "purge", "clear_expired", "purge_holders", "cull_holders", "lock_key",
        "lock_row", "admit_semaphore", "admit_shared", "move_exclusive", "settle", "settle_waiter",
        "mark_refused", "own_holder", "blockers", "mark", "unmark", "recompute", "release_holder",
        "extend_holder", "holder_expiry", "clear_standing", "force_holders", "unmark_any",
        "held_page", "held_count", "expired_page", "read_clock", "store_clock", "stored_clock",
    )
    #: The reading a transaction stored, read back (only a test hook waits on it).
    stored_clock = "SELECT {txn_now}"

    def __init__(self, table: str, key: str, holders: str, *, durable: bool = True,
                 returning: bool = True, fair: bool = False) -> None:
        self.durable = durable
        self.returning = returning
        self.fair = fair
        fragments = self.fragments(table, key, holders)
        for name in self.STATEMENTS:
            template = self.render(getattr(type(self), name), fragments)
            setattr(self, name, Statement.compile(name, self.adapt(name, template), self.placeholder))

    def fragments(self, table: str, key: str, holders: str) -> dict[str, str]:
        """What fills the templates' braces for one alias."""
        nosync = "" if self.durable or not self.nosync else f" + {self.nosync}"
        mine = "EXISTS (SELECT 1 FROM {holders} o WHERE o.token = :token)"
        exclusive_live = "{table}.token IS NOT NULL AND {table}.expires_at_us > {txn_now}"
        own = "(SELECT o.{column} FROM {holders} o WHERE o.token = :token)"
        return {
            "table": table, "key": key, "holders": holders,
            "now": self.now_us, "txn_now": self.transaction_now,
            "greatest": self.greatest, "false": self.false,
            "nosync": nosync,
            # A holder's own release never waits for the disk, durable or not.
            "nosync_release": f" + {self.nosync}" if self.nosync else "",
            # Fair handoff: a release of a row waited for leaves it reserved for waiters.
            "reserve": (f" + CASE WHEN waiting_since_us IS NULL THEN 0 ELSE {fairness.FAIR_RESERVE_US} END"
                        if self.fair else ""),
            "keep_expiry": f", expires_at_us = expires_at_us{nosync}" if nosync else "",
            "lock_columns": LOCK_COLUMNS, "lock_row_suffix": self.lock_row_suffix,
            "mark_us": str(WRITER_MARK_MS * 1000),
            "insert": type(self).insert, "touch": type(self).touch, "admit": type(self).admit,
            "held_exclusive": type(self).held_exclusive, "held_holders": type(self).held_holders,
            "page_keys": type(self).page_keys,
            "prefix_p": self.prefix_match.replace("{column}", "p.{key}"),
            "prefix_q": self.prefix_match.replace("{column}", "q.{key}"),
            "mine": mine, "exclusive_live": exclusive_live,
            # The admission rules, read on the key row (locked) and the live holders.
            "semaphore_rule": (
                "(CASE WHEN {exclusive_live} THEN 1 ELSE 0 END) + (SELECT COUNT(*) FROM {holders} o "
                "WHERE o.{key} = :key AND o.expires_at_us > {txn_now}) < :limit"),
            "shared_rule": (
                "NOT ({exclusive_live}) AND NOT ({table}.mark_expires_at_us IS NOT NULL AND "
                "{table}.mark_expires_at_us > {txn_now}) AND NOT EXISTS (SELECT 1 FROM {holders} o "
                "WHERE o.{key} = :key AND o.expires_at_us > {txn_now} AND NOT o.shared)"),
            "settle_columns": (
                "correlation_id = NULL, token = NULL, waiting_since_us = NULL, "
                "fencing_token = {greatest}(fencing_token, " + own.replace("{column}", "fencing_token")
                + "), expires_at_us = {greatest}(expires_at_us, "
                + own.replace("{column}", "expires_at_us") + "){nosync} WHERE {key} = :key AND {mine}"
            ),
        }

    def holding(self, *, shared: bool, waiter: bool) -> tuple[Statement, ...]:
        """The statements of a shared or semaphore admission, after the key row's lock and
        the clock reading: the last one returns this token's holder row (fencing token,
        acquired, expires) if it holds the key. A non-shared waiter clears its writer mark
        once admitted, and sets it when refused."""
        if shared:
            return (self.admit_shared, self.settle, self.own_holder)  # type: ignore[return-value]
        settle = (self.settle_waiter, self.mark_refused) if waiter else (self.settle,)
        return (self.admit_semaphore, self.move_exclusive, *settle, self.own_holder)  # type: ignore[return-value]

    def releasing(self) -> tuple[Statement, ...]:
        """The statements of a holder's release, after the key row's lock and the clock
        reading: the first one's rowcount is 1 if this token's holder was released; the key
        row's expiry then follows the live holders left."""
        return (self.release_holder, self.recompute)  # type: ignore[return-value]

    def holding_alone(self) -> Statement | None:
        """One statement that is a whole admission's transaction (it locks the key row,
        reads the clock once, then does what :meth:`holding` does; its rows are the last
        one's), or None: :meth:`holding` runs in a transaction."""
        return None

    def releasing_alone(self) -> Statement | None:
        """The same for a holder's release (:meth:`releasing`; its rowcount is the
        first one's)."""
        return None

    def install(self) -> list[str]:
        """What the vendor needs in the database beside the tables (migration 0005 runs
        it): PostgreSQL's functions."""
        return []

    def uninstall(self) -> list[str]:
        """What undoes :meth:`install`."""
        return []

    @staticmethod
    def render(template: str, fragments: dict[str, str]) -> str:
        """Fill the braces until none is left (fragments may hold fragments)."""
        for _ in range(5):
            if "{" not in template:
                return " ".join(template.split())
            template = template.format_map(fragments)
        raise ValueError(f"unresolved fragment in {template!r}")

    def adapt(self, name: str, sql: str) -> str:
        """A vendor's last word on one rendered statement (PostgreSQL adds NOTIFY)."""
        if name in ("extend",) and not self.returning:
            return sql.replace("RETURNING expires_at_us", "")
        return sql
