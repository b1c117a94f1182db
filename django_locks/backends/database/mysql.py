"""MariaDB/MySQL: no RETURNING for upserts (rows are read back), fair handoff, several
statements in one round trip."""

from __future__ import annotations

import importlib
from typing import Any

from django_locks.backends.database.features import DatabaseFeatures
from django_locks.backends.database.operations import DatabaseOperations


class MySQLFeatures(DatabaseFeatures):
    vendor = "mysql"
    returning = False
    fair_handoff = True

    def private_connection_options(self, options: dict[str, Any], database_module: Any) -> None:
        # Keys may hold any Unicode character, emoji included.
        options["charset"] = "utf8mb4"
        # Several statements in one round trip (a transaction on holders): mysqlclient
        # allows them whatever the flags say, PyMySQL only when asked. FOUND_ROWS as
        # Django sets it (an UPDATE counts the rows it matched).
        client = importlib.import_module(f"{database_module.__name__}.constants.CLIENT")
        options["client_flag"] = (
            options.get("client_flag", client.FOUND_ROWS) | client.MULTI_STATEMENTS | client.MULTI_RESULTS
        )

    def script_cursor(self, raw: Any) -> Any:
        return raw.cursor()  # multi-statements enabled (private_connection_options)


class MySQLOperations(DatabaseOperations):
    now_us = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))"
    # READ COMMITTED for this one transaction (never a session setting): a fresh
    # consistent read per statement, and no gap locks that could deadlock two keys'
    # transactions through neighbouring entries of the holders' key index.
    begin = ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "START TRANSACTION")
    # A consistent snapshot taken by a statement before the read's (whose UTC_TIMESTAMP is
    # when it starts): for this one transaction only, never a session setting.
    snapshot_read = ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                     "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
    touch = "ON DUPLICATE KEY UPDATE fencing_token = fencing_token"
    # A user variable of the private connection, cleared before the commit.
    store_clock = "SET @django_locks_now_us = {now}"
    transaction_now = "@django_locks_now_us"
    end = ("SET @django_locks_now_us = NULL", "COMMIT")

    #: Takes the row if it is free, expired, or reserved for waiters and ``since`` lets
    #: this attempt take it; else leaves it as it was, but for the mark of a waiting
    #: call's later attempt. MySQL assigns left to right: the token is assigned first, by
    #: the condition; every later column then asks whether the row now has this
    #: statement's token ({won}). The row is read back to learn whether this token won.
    acquire = """
        {insert} ON DUPLICATE KEY UPDATE
            token = IF({take}, VALUES(token), token),
            correlation_id = IF({won}, VALUES(correlation_id), correlation_id),
            fencing_token = IF({won}, GREATEST(fencing_token + 1, VALUES(fencing_token)), fencing_token),
            acquired_at_us = IF({won}, VALUES(acquired_at_us), acquired_at_us),
            expires_at_us = IF({won}, VALUES(expires_at_us), expires_at_us),
            waiting_since_us = IF({won}, NULL, IF(:since > 0 AND token IS NOT NULL,
                COALESCE(waiting_since_us, VALUES(acquired_at_us)), waiting_since_us))
    """

    def fragments(self, table: str, key: str, holders: str) -> dict[str, str]:
        return {
            **super().fragments(table, key, holders),
            "take": ("expires_at_us <= VALUES(acquired_at_us) OR (token IS NULL AND "
                     "waiting_since_us IS NOT NULL AND fencing_token >= :since)"),
            "won": "token <=> VALUES(token)",
        }
