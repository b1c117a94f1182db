"""The tables behind DatabaseLock: one row per key ever locked (until purged), and one per
shared or semaphore holder."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models

from django_locks.values import MAX_KEY_LENGTH, datetime_from_us


class ExactTextField(models.CharField):
    """A varchar compared exactly (case, accents, trailing spaces) on every database.

    PostgreSQL and SQLite compare bytes by default. MySQL/MariaDB default collations
    fold case and accents and pad spaces, so there the column is utf8mb4 with a binary
    NO PAD collation.
    """

    def db_type(self, connection: Any) -> str | None:
        if connection.vendor == "mysql":
            collation = "utf8mb4_nopad_bin" if connection.mysql_is_mariadb else "utf8mb4_0900_bin"
            return f"varchar({self.max_length}) CHARACTER SET utf8mb4 COLLATE {collation}"
        return super().db_type(connection)


class Lock(models.Model):
    """A lock row. Times are microseconds since the Unix epoch by the database's clock.

    A released row keeps its ``fencing_token`` (the next acquisition continues from it);
    ``token`` is NULL and ``expires_at_us`` is the release time (or, on MariaDB/MySQL and
    SQLite, a few ms later when a waiter waits: reserved for waiters, see DatabaseLock).
    """

    key = ExactTextField(max_length=MAX_KEY_LENGTH, primary_key=True)
    token = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001 - NULL: free
    correlation_id = ExactTextField(max_length=255, null=True, blank=True)
    fencing_token = models.BigIntegerField()
    acquired_at_us = models.BigIntegerField()
    # Not indexed: every acquire and release rewrites it, and without an index on it
    # PostgreSQL updates the row in place (HOT). Listing scans the table (a row per key).
    expires_at_us = models.BigIntegerField()
    # MariaDB/MySQL and SQLite (fair handoff, see DatabaseLock): since when a waiter waits
    # for this key (the oldest since the last acquisition), NULL when nobody does. A
    # release of a row with a waiter reserves it for waiters for a few ms.
    waiting_since_us = models.BigIntegerField(null=True, blank=True)
    # The writer mark: a waiting non-shared acquirer keeps new shared acquisitions of this
    # key waiting behind it until this time (see DatabaseLock). NULL: none.
    mark_token = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    mark_expires_at_us = models.BigIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = "lock"
        verbose_name_plural = "locks"
        # Locks are never added, changed or deleted through the admin: only looked at
        # (view_lock) and force-released or purged (force_release).
        default_permissions = ("view",)
        permissions = [("force_release", "Can force-release locks held by others")]

    def __str__(self) -> str:
        return self.key

    @property
    def acquired_at(self) -> datetime:
        return datetime_from_us(self.acquired_at_us)

    @property
    def expires_at(self) -> datetime:
        return datetime_from_us(self.expires_at_us)


class Holder(models.Model):
    """A shared or semaphore holder of a key (an exclusive holder lives in its key's
    :class:`Lock` row, until a semaphore joins it). Times as in :class:`Lock`; an expired
    holder's row stays until purged or culled, and counts for nothing."""

    token = models.CharField(max_length=32, primary_key=True)
    key = ExactTextField(max_length=MAX_KEY_LENGTH, db_index=True)
    correlation_id = ExactTextField(max_length=255, null=True, blank=True)
    fencing_token = models.BigIntegerField()
    acquired_at_us = models.BigIntegerField()
    expires_at_us = models.BigIntegerField(db_index=True)
    shared = models.BooleanField(default=False)
    # "limit" is a reserved word in SQL.
    limit = models.IntegerField(default=1, db_column="holder_limit")

    class Meta:
        verbose_name = "lock holder"
        verbose_name_plural = "lock holders"
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.key} ({self.token})"
