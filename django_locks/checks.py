"""System checks of the LOCKS setting (ids django_locks.E### and django_locks.W###).

E001 unknown or unusable BACKEND (or a malformed LOCKS); E002 unknown option or setting;
E003 DatabaseLock on a database alias missing from DATABASES; E004 CacheLock on a cache
alias missing from CACHES; E005 CacheLock on DummyCache; E006 DatabaseLock on an
unsupported database engine (E007, an in-memory SQLite database, is retired: there
DatabaseLock keeps its locks in process memory).
E008 a LOCKS setting without a "default" alias (what the decorators and the command use
unless told otherwise, as Django requires a "default" cache in CACHES); E009 CacheLock on
FileBasedCache, which gives no mutual exclusion.
W001 CacheLock on a process-local cache (LocMemCache); W002 CacheLock through the
generic cache.add fallback, with weaker guarantees.
W003 CacheLock through the cache.add fallback has no shared (read) locks:
``shared=True`` raises NotImplementedError there (exclusive locks and limit=N semaphores work).
W004 (a database check: only when databases are given) a DatabaseLock alias on a
database where this app's migrations are not applied.
E010 (a database check: only when databases are given) a concrete ``FencedModel`` whose
table lacks the ``fencing_token`` column on a database it migrates to.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from django.apps import apps
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DatabaseError, connections, router
from django.db.migrations.executor import MigrationExecutor

from django_locks.exceptions import InvalidLockBackendError
from django_locks.handler import DEFAULT_LOCK_ALIAS, locks


@register("django_locks")
def check_locks_setting(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    try:
        aliases = list(locks.configure_settings(None))
    except InvalidLockBackendError as e:
        return [Error(str(e), id=e.check_id, obj="LOCKS")]
    if DEFAULT_LOCK_ALIAS not in aliases:
        configured = ", ".join(map(repr, aliases)) or "none"
        messages.append(Error(
            f"LOCKS has no {DEFAULT_LOCK_ALIAS!r} alias (configured: {configured}): lock_view, locked "
            "and manage.py locks use it unless given another alias, and would fail at request time.",
            hint=f"Add a {DEFAULT_LOCK_ALIAS!r} alias to LOCKS, or remove LOCKS for a DatabaseLock on the "
                 "'default' database.",
            obj="LOCKS", id="django_locks.E008",
        ))
    for alias in aliases:
        try:
            backend = locks.create_connection(alias)
        except InvalidLockBackendError as e:
            messages.append(Error(str(e), id=e.check_id, obj=f"LOCKS[{alias!r}]"))
        else:
            messages.extend(backend.check())
    return messages


def _fenced_models() -> list[Any]:
    """The concrete models of FencedModel (django_locks.fencing is looked up, not imported:
    no model can subclass it unless something imported it)."""
    fencing = sys.modules.get("django_locks.fencing")
    if fencing is None:
        return []
    return [model for model in apps.get_models()
            if issubclass(model, fencing.FencedModel) and not model._meta.proxy]


def _pending_apps(db: str) -> set[str]:
    """Labels of the apps with migrations not yet applied on database ``db``."""
    executor = MigrationExecutor(connections[db])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return {migration.app_label for migration, backwards in plan if not backwards}


@register(Tags.database, "django_locks")
def check_fenced_tables(app_configs: Any = None, databases: Sequence[str] | None = None,
                        **kwargs: Any) -> list[CheckMessage]:
    """django_locks.E010: a concrete FencedModel whose table lacks ``fencing_token``.

    A database check, like Django's own: it runs only when databases are given
    (``manage.py check --database default``, ``migrate``, Django's test runner). An app
    with migrations still to apply on that database is not reported: ``migrate`` runs
    this check before it applies them, and may be what adds the column."""
    if not databases:
        return []
    fenced = [model for model in _fenced_models()
              if app_configs is None or model._meta.app_config in app_configs]
    messages: list[CheckMessage] = []
    for db in databases:
        targets = [model for model in fenced if router.allow_migrate_model(db, model)]
        if not targets:
            continue
        connection = connections[db]
        try:
            pending = _pending_apps(db)
            with connection.cursor() as cursor:
                tables = set(connection.introspection.table_names(cursor))
                described = {
                    model._meta.db_table: {
                        column.name
                        for column in connection.introspection.get_table_description(
                            cursor, model._meta.db_table)
                    }
                    for model in targets if model._meta.db_table in tables
                }
        except DatabaseError:
            continue  # an unreachable database fails the command's own use of it, not E010
        for model in targets:
            if model._meta.app_label in pending:
                continue
            table = model._meta.db_table
            column = model._meta.get_field("fencing_token").column
            columns = described.get(table)
            if columns is not None and column in columns:
                continue
            what = (f"has no table {table!r}" if columns is None
                    else f"has table {table!r} without the {column!r} column")
            messages.append(Error(
                f"{model._meta.label} is a FencedModel, but database {db!r} {what}: every "
                "fenced write to it would fail.",
                hint=f"Create and apply its migration: manage.py makemigrations "
                     f"{model._meta.app_label}, then manage.py migrate --database {db}.",
                obj=model, id="django_locks.E010",
            ))
    return messages


@register(Tags.database, "django_locks")
def check_lock_tables(app_configs: Any = None, databases: Sequence[str] | None = None,
                      **kwargs: Any) -> list[CheckMessage]:
    """django_locks.W004: a DatabaseLock alias on a database where this app's migrations
    are not applied (every lock call would fail: the tables do not exist).

    A database check, like Django's own: it runs only when databases are given
    (``manage.py check --database default``, Django's test runner, ``migrate`` itself,
    where it says what the migration is about to fix)."""
    if not databases:
        return []
    from django_locks.backends.database import DatabaseLock

    try:
        aliases = list(locks.configure_settings(None))
    except InvalidLockBackendError:
        return []  # check_locks_setting reports it
    messages: list[CheckMessage] = []
    pending: dict[str, bool] = {}
    for alias in aliases:
        try:
            backend = locks.create_connection(alias)
        except InvalidLockBackendError:
            continue
        if not isinstance(backend, DatabaseLock) or backend.using not in databases:
            continue
        if backend.in_memory_store() is not None:
            continue  # its locks live in memory, not in the tables
        if backend.using not in pending:
            try:
                pending[backend.using] = "django_locks" in _pending_apps(backend.using)
            except DatabaseError:
                pending[backend.using] = False  # unreachable: the command's own use says so
        if pending[backend.using]:
            option = "" if backend.using == "default" else f" --database {backend.using}"
            messages.append(Warning(
                f"LOCKS[{alias!r}] (DatabaseLock): the django_locks migrations are not applied "
                f"on database {backend.using!r}: every lock call on this alias would fail.",
                hint=f"Run manage.py migrate{option}.",
                obj=f"LOCKS[{alias!r}]", id="django_locks.W004",
            ))
    return messages
