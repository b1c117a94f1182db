"""What the held locks of each ``LOCKS`` alias are, for the admin and ``manage.py locks``.

Both surfaces show the same thing: per alias, its backend, the holders it lists now (and,
for the admin, those that expired without a release), or why it lists nothing: it cannot
enumerate its keys (a generic Django cache), it is misconfigured, it failed, or the
django_locks tables are not there yet. :func:`list_alias` gathers that into one
:class:`AliasListing` through the backends' public methods (``list_locks()`` for one page,
``held_locks()`` for everything, ``expired_locks()``) and nothing else; each surface only
formats it.

Both surfaces ask for one page per alias (``limit``): what a page costs does not grow with
the number of locks held where the backend pages itself (DatabaseLock, CacheLock on Redis).

Texts here are plain: no markup and no backticks. A command to run is kept apart, in
``remedy``, for each surface to set off its own way (``<code>`` in the admin, backticks on
a terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django_locks.backends.base import BaseLock
from django_locks.exceptions import LockError
from django_locks.handler import locks
from django_locks.values import LockInfo, validate_page_arguments

#: ``error_kind`` of an alias that is not configured right (unknown, bad BACKEND or OPTIONS).
CONFIGURATION = "configuration"
#: ``error_kind`` of an alias whose backend failed (unreachable, a database error...).
BACKEND = "backend"
#: ``error_kind`` of a DatabaseLock alias whose database lacks the django_locks tables.
MISSING_TABLES = "missing tables"


@dataclass
class AliasListing:
    """One alias's locks, as its backend listed them, or why it listed none.

    ``holders``: the live holders (soonest expiry first, as the backend orders them);
    ``expired``: holders whose lock expired without a release, still kept by the backend
    (DatabaseLock), when they were asked for. ``error`` (with ``error_kind``) says why
    nothing could be listed; ``note`` says why nothing *can* be listed here: the backend
    cannot enumerate its keys. ``remedy`` is a shell command that helps with either,
    introduced by ``remedy_lead``; :meth:`message` puts them together.
    """

    alias: str
    #: The backend, for people: "DatabaseLock", "CacheLock on cache 'x', LocMemCache", or
    #: "?" when the alias could not be configured.
    backend_name: str
    holders: list[LockInfo] = field(default_factory=list)
    expired: list[LockInfo] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    note: str | None = None
    #: A shell command that helps, and what it does: ("run", "manage.py migrate").
    remedy: str | None = None
    remedy_lead: str = "run"
    #: The backend's locks live in the listing process only (MemoryLock, LocMemCache).
    process_local: bool = False
    #: The backend keeps expired state that ``purge()`` clears (DatabaseLock).
    can_purge: bool = False
    #: Listed by pages (a ``limit`` was given): ``holders`` are one page's, in key order.
    paged: bool = False
    #: Where the next page starts (``list_locks(cursor=...)``); None: no page follows.
    next_cursor: str | None = None
    #: How many held keys match, where the backend counts them cheaply; else None.
    total: int | None = None

    @property
    def lock_count(self) -> int:
        """How many keys ``holders`` hold."""
        return len({info.key for info in self.holders})

    @property
    def label(self) -> str:
        """``LOCKS['default'] (DatabaseLock)``: the alias and its backend, as messages name them."""
        return f"LOCKS[{self.alias!r}] ({self.backend_name})"

    def message(self, code: Callable[[str], str] = "`{}`".format,
                text: Callable[[str], str] = str) -> str | None:
        """Why nothing is listed, in one line without the alias (``None``: listed):
        ``the django_locks tables are missing: run `manage.py migrate```. ``code`` sets
        off the command, ``text`` the rest (the admin: ``<code>`` and HTML escaping)."""
        reason = self.error or self.note
        if reason is None:
            return None
        if not self.remedy:
            return text(reason)
        separator = ": " if self.error else "; "
        return f"{text(reason)}{separator}{text(self.remedy_lead)} {code(self.remedy)}"

    @property
    def listed(self) -> bool:
        """The backend answered: ``holders`` (and ``expired``) are its locks."""
        return self.error is None and self.note is None


def backend_name(backend: BaseLock) -> str:
    """The backend's class, and for a CacheLock its cache: ``CacheLock on cache 'x', RedisCache``."""
    cache_class = getattr(backend, "cache_backend_class", None)
    if cache_class is not None:
        cache_alias = getattr(backend, "cache_alias", "?")
        return f"{type(backend).__name__} on cache {cache_alias!r}, {cache_class.__name__}"
    return type(backend).__name__


def describe(backend: BaseLock) -> str:
    """``LOCKS['cache'] (CacheLock on cache 'default', LocMemCache)``."""
    return f"LOCKS[{backend.alias!r}] ({backend_name(backend)})"


def show_key_command(alias: str) -> str:
    """How to look at one known key of ``alias`` from a shell."""
    return f"manage.py locks show KEY --backend {alias}"


def cannot_enumerate(backend: BaseLock) -> str:
    """Why ``backend`` lists no locks: it has no way to enumerate its keys."""
    if getattr(backend, "cache_backend_class", None) is not None:
        why = ("it goes through the generic cache.add fallback, and that cache cannot list its keys "
               "(only Redis caches can)")
    else:
        why = "its backend does not support enumeration"
    return f"cannot list its locks: {why}"


def migrate_command(backend: BaseLock) -> str:
    """``python manage.py migrate`` for the database of a DatabaseLock alias (as the
    backend's own error says it)."""
    using = getattr(backend, "using", "default")
    return "python manage.py migrate" + ("" if using == "default" else f" --database {using}")


def tables_missing(backend: BaseLock) -> bool:
    """Whether the database of a DatabaseLock alias lacks a table of the django_locks app
    (its migrations are not applied). False for any other backend, or when the database
    cannot be asked (then its error is the one to show)."""
    using = getattr(backend, "using", None)
    if not isinstance(using, str):
        return False
    from django.apps import apps
    from django.db import connections

    try:
        wanted = {model._meta.db_table for model in apps.get_app_config("django_locks").get_models()}
        connection = connections[using]
        with connection.cursor() as cursor:
            present = set(connection.introspection.table_names(cursor))
    except Exception:  # unreachable or misconfigured: the backend's own error says so
        return False
    return bool(wanted - present)


def error_text(backend: BaseLock, error: LockError) -> tuple[str, str, str | None]:
    """``(kind, text, remedy)`` of a backend's error, for a line that names the alias
    itself (``backend error: ...``): the backend's own ``LOCKS['alias']: `` prefix is
    dropped (no doubled prefix),
    and a database without the django_locks tables is said so in one sentence."""
    if tables_missing(backend):
        return MISSING_TABLES, "the django_locks tables are missing", migrate_command(backend)
    text = str(error)
    prefix = f"LOCKS[{backend.alias!r}]: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    return BACKEND, f"backend error: {text}", None


def failed(backend: BaseLock, error: LockError) -> AliasListing:
    """The listing of ``backend`` when a call to it raised ``error``: what a surface says
    of any failed call (``f"{listing.label}: {listing.message()}"``)."""
    listing = AliasListing(backend.alias, backend_name(backend), process_local=backend.process_local)
    listing.error_kind, listing.error, listing.remedy = error_text(backend, error)
    return listing


def list_alias(alias: str, *, expired: bool = False, prefix: str = "", cursor: str | None = None,
               limit: int | None = None, key: str | None = None) -> AliasListing:
    """The holders of ``alias`` now (``expired``: and its expired holders not cleaned), or
    why there are none to show. Never raises a :class:`LockError`: it is in the listing.

    ``limit``: one page of the held locks (``list_locks(prefix=, cursor=, limit=)``): the
    holders of at most ``limit`` keys, ``next_cursor`` and ``total`` set; None: every held
    lock (``held_locks()``), those of keys starting with ``prefix``. A bad ``prefix``,
    ``cursor`` or ``limit`` raises ``ValueError`` (or ``TypeError``) before any backend is
    asked. ``key``: the holders of that one key only (``get_holders(key)``), and its
    expired holders."""
    if limit is not None:
        validate_page_arguments(prefix, cursor, limit)
    try:
        backend = locks[alias]
    except LockError as e:
        return AliasListing(alias, "?", error=str(e), error_kind=CONFIGURATION)
    listing = AliasListing(alias, backend_name(backend), process_local=backend.process_local)
    if not backend.supports_enumeration:
        listing.note = cannot_enumerate(backend)
        listing.remedy = show_key_command(alias)
        listing.remedy_lead = "look up a known key with"
        return listing
    try:
        if key is not None:
            try:
                listing.holders = backend.get_holders(key)
            except ValueError:  # not a key (from a URL): no lock has it
                listing.holders = []
        elif limit is not None:
            page = backend.list_locks(prefix=prefix, cursor=cursor, limit=limit)
            listing.holders, listing.next_cursor, listing.total = page
            listing.paged = True
        else:
            listing.holders = [info for info in backend.held_locks() if info.key.startswith(prefix)]
        if expired and limit is not None and key is None:  # a page: the first ``limit``
            listing.expired = backend.expired_locks(prefix=prefix, limit=limit)
        elif expired:
            listing.expired = [info for info in backend.expired_locks(prefix=prefix)
                               if key in (None, info.key)]
    except LockError as e:
        return failed(backend, e)
    listing.can_purge = backend.keeps_expired_state
    return listing


def list_aliases(aliases: Iterable[str] | None = None, *, expired: bool = False, prefix: str = "",
                 limit: int | None = None) -> list[AliasListing]:
    """:func:`list_alias` of each of ``aliases`` (default: every configured alias, in order);
    with ``limit``, the first page of each."""
    return [list_alias(alias, expired=expired, prefix=prefix, limit=limit)
            for alias in (locks if aliases is None else aliases)]


__all__ = [
    "BACKEND",
    "CONFIGURATION",
    "MISSING_TABLES",
    "AliasListing",
    "backend_name",
    "cannot_enumerate",
    "describe",
    "error_text",
    "failed",
    "list_alias",
    "list_aliases",
    "tables_missing",
]
