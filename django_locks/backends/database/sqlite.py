"""SQLite: in this process (a fork gate; no in-memory database), one writer at a time
(BEGIN IMMEDIATE), fair handoff, WAL."""

from __future__ import annotations

from typing import Any

from django_locks.backends.database.features import DatabaseFeatures
from django_locks.backends.database.operations import DatabaseOperations


class SQLiteFeatures(DatabaseFeatures):
    vendor = "sqlite"
    fair_handoff = True
    begin_locks_for_writing = True
    in_process = True

    def after_connect(self, raw: Any) -> None:
        # A second connection to the file can write while others read.
        raw.execute("PRAGMA journal_mode=WAL").fetchall()
        # Where a transaction on holders keeps its one clock reading (SQLiteOperations).
        raw.execute("CREATE TEMP TABLE IF NOT EXISTS django_locks_clock "
                    "(id INTEGER PRIMARY KEY, now_us INTEGER NOT NULL)")


class SQLiteOperations(DatabaseOperations):
    now_us = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
    greatest = "MAX"
    placeholder = "?"
    # LIKE ignores ASCII case here: the key's first characters compared instead.
    prefix_match = "SUBSTR({column}, 1, :prefix_length) = :prefix"
    # One writer at a time: BEGIN IMMEDIATE takes the database's write lock at once.
    begin = ("BEGIN IMMEDIATE",)
    lock_row_suffix = ""
    touch = "ON CONFLICT ({key}) DO NOTHING"
    # A row of a temporary table of the private connection (SQLiteFeatures.after_connect).
    store_clock = "INSERT OR REPLACE INTO temp.django_locks_clock (id, now_us) VALUES (1, {now})"
    transaction_now = "(SELECT now_us FROM temp.django_locks_clock WHERE id = 1)"

    #: Takes the row if it is free, expired, or reserved for waiters and ``since`` lets
    #: this attempt take it; else a waiting call's later attempt (``since > 0``) marks the
    #: row waited for, if it is not yet (the only failed attempts that write). Returns the
    #: row it wrote: this token's if it is in it. A reservation is a row without token,
    #: marked waited for: never the stand-in of shared or semaphore holders.
    acquire = """
        {insert} ON CONFLICT ({key}) DO UPDATE SET
            token = CASE WHEN {take} THEN excluded.token ELSE {table}.token END,
            correlation_id = CASE WHEN {take} THEN excluded.correlation_id ELSE {table}.correlation_id END,
            fencing_token = CASE WHEN {take} THEN MAX({table}.fencing_token + 1, excluded.fencing_token)
                ELSE {table}.fencing_token END,
            acquired_at_us = CASE WHEN {take} THEN excluded.acquired_at_us ELSE {table}.acquired_at_us END,
            expires_at_us = CASE WHEN {take} THEN excluded.expires_at_us ELSE {table}.expires_at_us END,
            waiting_since_us = CASE WHEN {take} THEN NULL ELSE excluded.acquired_at_us END
        WHERE {take} OR (:since > 0 AND {table}.waiting_since_us IS NULL AND {table}.token IS NOT NULL)
        RETURNING token, fencing_token, acquired_at_us, expires_at_us
    """

    def fragments(self, table: str, key: str, holders: str) -> dict[str, str]:
        return {
            **super().fragments(table, key, holders),
            "take": ("({table}.expires_at_us <= excluded.acquired_at_us "
                     "OR ({table}.token IS NULL AND {table}.waiting_since_us IS NOT NULL "
                     "AND {table}.fencing_token >= :since))"),
        }
