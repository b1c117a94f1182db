"""System checks of the LOCKS setting (ids django_locks.E### and django_locks.W###).

E001 unknown or unusable BACKEND (or a malformed LOCKS); E002 unknown option or setting;
E003 DatabaseLock on a database alias missing from DATABASES; E004 CacheLock on a cache
alias missing from CACHES; E005 CacheLock on DummyCache; E006 DatabaseLock on an
unsupported database engine; E007 DatabaseLock on an in-memory SQLite database.
E008 a LOCKS setting without a "default" alias (what the decorators and the command use
unless told otherwise, as Django requires a "default" cache in CACHES); E009 CacheLock on
FileBasedCache, which gives no mutual exclusion.
W001 CacheLock on a process-local cache (LocMemCache); W002 CacheLock through the
generic cache.add fallback, with weaker guarantees.
W003 CacheLock through the cache.add fallback has no shared (read) locks:
``shared=True`` raises NotImplementedError there (exclusive locks and limit=N semaphores work).
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, register

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
