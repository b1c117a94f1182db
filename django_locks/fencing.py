"""Fenced writes: model rows that a lost lease cannot overwrite.

A lock alone does not protect data: its holder can be paused (a GC pause, a stopped VM, a
slow disk) past its ttl, another process takes the key and writes, and the first one wakes
up and writes too, still believing it holds the lock. :class:`FencedModel` rows carry the
fencing token of the lease that last wrote them, and writes through
``Model.objects.fenced(lease)`` (or ``instance.save(fence=lease)``) are refused with
:class:`StaleLeaseError` when a row they would touch carries a newer token.

How the check and the write are one step (see ``docs/fencing.md``): every fenced write
runs in ``transaction.atomic(using=db)`` (a savepoint inside the caller's transaction, so
a refusal leaves it usable). On SQLite its first statement is a no-op UPDATE of the
model's table, which takes the database's write lock: the transaction is serialized with
every other writer, and never fails upgrading a read snapshot. On PostgreSQL and
MariaDB/MySQL it locks the rows it will touch (``SELECT ... FOR UPDATE``, by primary key
order), compares their tokens with the lease's, and writes only those rows, stamped with
the lease's token; a later holder's fenced write of the same rows waits for the commit.

When the lease comes from a :class:`~django_locks.backends.database.DatabaseLock` on the
same database as the model, the same transaction also reads the lock's row and requires
this lease to still hold it by the database's clock (token and ``expires_at_us > now``),
after the model rows are locked: a holder whose ttl ran out cannot write even if nobody
took the key since. The lock row is read, not locked: a lock on it would last until the
caller's transaction commits and block the lease's own ``extend()`` and ``release()``
(a self-deadlock when the lock block sits inside ``atomic()``).

Shared and semaphore leases are refused (``ValueError`` naming ``lease``): their holders
hold the key together, so a token order between them protects nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import IntegrityError, connections, models, router, transaction
from django.db.models.utils import resolve_callables

from django_locks.backends.database import DatabaseLock
from django_locks.exceptions import LockNotHeldError
from django_locks.lease import Lease

__all__ = ["FencedManager", "FencedModel", "FencedQuerySet", "StaleLeaseError"]

FENCING_FIELD = "fencing_token"

#: Primary keys per statement when the rows of a fenced write are written by key.
_CHUNK = 500

_M = TypeVar("_M", bound=models.Model)


class StaleLeaseError(LockNotHeldError):
    """A fenced write was refused: a row it would touch was written under a newer lease,
    or (DatabaseLock on the model's database) the lease no longer holds its key by the
    database's clock. Nothing was written.

    ``model`` (the model class), ``key`` (the lease's key), ``fencing_token`` (the lease's)
    and ``newer_fencing_token`` (the newer token found on a row, or the key's current
    token when the lease is no longer held; ``None`` when the key has no row any more).
    """

    def __init__(
        self, model: type[models.Model], key: str, fencing_token: int,
        newer_fencing_token: int | None, *, held: bool = True,
    ) -> None:
        self.model = model
        self.key = key
        self.fencing_token = fencing_token
        self.newer_fencing_token = newer_fencing_token
        label = model._meta.label
        if held:
            message = (
                f"{label}: write refused: the lease on {key!r} has fencing token "
                f"{fencing_token}, but a row it would write carries the newer fencing token "
                f"{newer_fencing_token} (a later holder of the key wrote it: this lease was lost)"
            )
        else:
            current = "none (no lock row)" if newer_fencing_token is None else newer_fencing_token
            message = (
                f"{label}: write refused: the lease on {key!r} (fencing token {fencing_token}) "
                "no longer holds its key by the database's clock (expired, released, taken "
                f"over or force-released); the key's current fencing token: {current}"
            )
        super().__init__(message)


# --------------------------------------------------------------------------- validation


def _validate_lease(lease: object, name: str = "lease") -> Lease:
    if not isinstance(lease, Lease):
        raise TypeError(
            f"{name} must be a django_locks Lease (what lock() and alock() return), "
            f"not {type(lease).__name__}"
        )
    if lease.shared or lease.limit != 1:
        raise ValueError(
            f"{name} must be an exclusive lease, not a {lease.info.mode.label()} one: shared and "
            "semaphore holders hold the key together, so their fencing tokens do not order "
            "their writes"
        )
    return lease


def _check_not_released(lease: Lease) -> None:
    if lease.released:
        raise LockNotHeldError(
            f"the lease on {lease.key!r} (fencing token {lease.fencing_token}) was released "
            "or found lost: it cannot fence a write"
        )


def _check_no_token(values: dict[str, Any], name: str) -> None:
    if FENCING_FIELD in values:
        raise ValueError(
            f"{name}: do not pass {FENCING_FIELD!r}: a fenced write stamps the lease's "
            "fencing token itself"
        )


# --------------------------------------------------------------------------- the transaction


def _same_database(a: str, b: str) -> bool:
    """Whether database aliases ``a`` and ``b`` name the same database (conservative: a
    different host spelling or port, a pooler in between, counts as another)."""
    if a == b:
        return True
    sa, sb = connections[a].settings_dict, connections[b].settings_dict
    if connections[a].vendor != connections[b].vendor:
        return False
    if connections[a].vendor == "sqlite":
        na, nb = str(sa.get("NAME") or ""), str(sb.get("NAME") or "")
        if not na or not nb or ":memory:" in na or "mode=memory" in na:
            return False
        return os.path.realpath(na) == os.path.realpath(nb)
    return all(
        str(sa.get(name) or "") == str(sb.get(name) or "") for name in ("NAME", "HOST", "PORT")
    )


@contextlib.contextmanager
def _write_transaction(model: type[models.Model], db: str) -> Iterator[None]:
    """An atomic block (a savepoint inside the caller's transaction). On SQLite it starts
    with a write that changes nothing, taking the database's write lock at once: every
    statement after it sees the latest data and nobody writes until the commit."""
    with transaction.atomic(using=db):
        connection = connections[db]
        if connection.vendor == "sqlite":
            qn = connection.ops.quote_name
            column = qn(model._meta.get_field(FENCING_FIELD).column)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {qn(model._meta.db_table)} SET {column} = {column} WHERE 1 = 0"
                )
        yield


def _check_held(lease: Lease, model: type[models.Model], db: str) -> None:
    """DatabaseLock on the model's own database: in the write's transaction, require the
    lease to hold its key by the database's clock (the key row with its token, or, for an
    exclusive holder a semaphore joined, its holder row)."""
    backend = lease.backend
    if not isinstance(backend, DatabaseLock) or not _same_database(backend.using, db):
        return
    connection = connections[db]
    qn = connection.ops.quote_name
    lock_table = qn(apps.get_model("django_locks", "Lock")._meta.db_table)
    holder_table = qn(apps.get_model("django_locks", "Holder")._meta.db_table)
    key, now = qn("key"), backend.operations.now_us
    sql = (
        f"SELECT l.fencing_token, CASE WHEN (l.token = %s AND l.expires_at_us > {now}) "
        f"OR EXISTS (SELECT 1 FROM {holder_table} h WHERE h.token = %s AND h.{key} = %s "
        f"AND h.expires_at_us > {now}) THEN 1 ELSE 0 END "
        f"FROM {lock_table} l WHERE l.{key} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [lease.token, lease.token, lease.key, lease.key])
        row = cursor.fetchone()
    if row is None or not row[1]:
        current = None if row is None else int(row[0])
        raise StaleLeaseError(model, lease.key, lease.fencing_token, current, held=False)


def _check_tokens(lease: Lease, model: type[models.Model], tokens: Sequence[int]) -> None:
    newest = max(tokens, default=None)
    if newest is not None and newest > lease.fencing_token:
        raise StaleLeaseError(model, lease.key, lease.fencing_token, newest)


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


# --------------------------------------------------------------------------- queryset


class FencedQuerySet(models.QuerySet[_M]):
    """A QuerySet whose :meth:`fenced` copy makes its writes fenced by a lease.

    Without a lease (``Model.objects.filter(...)``) every method is Django's own.
    """

    _fence_lease: Lease | None = None

    def fenced(self, lease: Lease) -> FencedQuerySet[_M]:
        """This queryset, whose ``update()``, ``delete()``, ``create()``,
        ``get_or_create()`` and ``update_or_create()`` (and their async forms) write only
        when every row they touch has ``fencing_token <= lease.fencing_token``, and stamp
        ``lease.fencing_token`` on what they write; else :class:`StaleLeaseError`, and
        nothing is written. ``lease`` must be an exclusive :class:`~django_locks.lease.Lease`."""
        lease = _validate_lease(lease)
        clone = self._chain()
        clone._fence_lease = lease
        return clone

    @property
    def fence(self) -> Lease | None:
        """The lease this queryset's writes are fenced by (None: not fenced)."""
        return self._fence_lease

    def _clone(self) -> FencedQuerySet[_M]:
        clone = super()._clone()
        clone._fence_lease = self._fence_lease
        return clone

    # ------------------------------------------------------------------- plumbing

    def _write_db(self) -> str:
        self._for_write = True
        return self.db

    def _lease(self) -> Lease:
        lease = self._fence_lease
        assert lease is not None
        _check_not_released(lease)
        return lease

    def _lock_rows(self, db: str) -> list[tuple[Any, int]]:
        """Lock the rows this queryset matches (by primary key order): (pk, fencing_token)."""
        base = self.model._base_manager.db_manager(db)
        locked = (
            base.filter(pk__in=self.values("pk"))
            .order_by("pk")
            .select_for_update()
            .values_list("pk", FENCING_FIELD)
        )
        return list(locked)

    def _plain(self) -> models.QuerySet[_M]:
        clone = self._chain()
        clone._fence_lease = None
        return clone

    # ------------------------------------------------------------------- writes

    def update(self, **kwargs: Any) -> int:
        if self._fence_lease is None:
            return super().update(**kwargs)
        self._not_support_combined_queries("update")
        if self.query.is_sliced:
            raise TypeError("Cannot update a query once a slice has been taken.")
        _check_no_token(kwargs, "update()")
        lease, db = self._lease(), self._write_db()
        with _write_transaction(self.model, db):
            rows = self._lock_rows(db)
            _check_held(lease, self.model, db)
            _check_tokens(lease, self.model, [token for _, token in rows])
            plain = self._plain().using(db)
            written = 0
            for pks in _chunks([pk for pk, _ in rows]):
                written += models.QuerySet.update(
                    plain.filter(pk__in=pks), **kwargs, **{FENCING_FIELD: lease.fencing_token}
                )
            return written

    update.alters_data = True  # type: ignore[attr-defined]

    def delete(self) -> tuple[int, dict[str, int]]:
        if self._fence_lease is None:
            return super().delete()
        self._not_support_combined_queries("delete")
        if self.query.is_sliced:
            raise TypeError("Cannot use 'limit' or 'offset' with delete().")
        if self.query.distinct_fields:
            raise TypeError("Cannot call delete() after .distinct(*fields).")
        if self._fields is not None:
            raise TypeError("Cannot call delete() after .values() or .values_list()")
        lease, db = self._lease(), self._write_db()
        with _write_transaction(self.model, db):
            rows = self._lock_rows(db)
            _check_held(lease, self.model, db)
            _check_tokens(lease, self.model, [token for _, token in rows])
            deleted, per_model = 0, {}
            for pks in _chunks([pk for pk, _ in rows]):
                count, counts = self._plain().using(db).filter(pk__in=pks).delete()
                deleted += count
                for label, n in counts.items():
                    per_model[label] = per_model.get(label, 0) + n
            return deleted, per_model

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def create(self, **kwargs: Any) -> _M:
        if self._fence_lease is None:
            return super().create(**kwargs)
        _check_no_token(kwargs, "create()")
        lease, db = self._lease(), self._write_db()
        obj = self.model(**kwargs)
        setattr(obj, FENCING_FIELD, lease.fencing_token)
        with _write_transaction(self.model, db):
            _check_held(lease, self.model, db)
            obj.save(force_insert=True, using=db)
        return obj

    create.alters_data = True  # type: ignore[attr-defined]

    def get_or_create(self, defaults: dict[str, Any] | None = None, **kwargs: Any) -> tuple[_M, bool]:
        if self._fence_lease is None:
            return super().get_or_create(defaults, **kwargs)
        return self._get_or_create(defaults, None, kwargs, update=False)

    get_or_create.alters_data = True  # type: ignore[attr-defined]

    def update_or_create(
        self, defaults: dict[str, Any] | None = None,
        create_defaults: dict[str, Any] | None = None, **kwargs: Any,
    ) -> tuple[_M, bool]:
        if self._fence_lease is None:
            return super().update_or_create(defaults, create_defaults, **kwargs)
        return self._get_or_create(defaults, create_defaults, kwargs, update=True)

    update_or_create.alters_data = True  # type: ignore[attr-defined]

    def _get_or_create(
        self, defaults: dict[str, Any] | None, create_defaults: dict[str, Any] | None,
        kwargs: dict[str, Any], *, update: bool,
    ) -> tuple[_M, bool]:
        name = "update_or_create()" if update else "get_or_create()"
        defaults = defaults or {}
        if create_defaults is None:
            create_defaults = defaults
        _check_no_token(kwargs, name)
        _check_no_token(defaults, name)
        _check_no_token(create_defaults, name)
        lease, db = self._lease(), self._write_db()
        plain = self._plain().using(db)
        with _write_transaction(self.model, db):
            obj = self._locked_get(plain, kwargs)
            created = False
            if obj is None:
                params = dict(resolve_callables(self._extract_model_params(create_defaults, **kwargs)))
                _check_held(lease, self.model, db)
                try:
                    with transaction.atomic(using=db):
                        obj = self.model(**params)
                        setattr(obj, FENCING_FIELD, lease.fencing_token)
                        obj.save(force_insert=True, using=db)
                        created = True
                except IntegrityError:
                    obj = self._locked_get(plain, kwargs)  # created meanwhile
                    if obj is None:
                        raise
            if created:
                return obj, True
            _check_held(lease, self.model, db)
            _check_tokens(lease, self.model, [getattr(obj, FENCING_FIELD)])
            if update:
                for field, value in resolve_callables(defaults):
                    setattr(obj, field, value)
                setattr(obj, FENCING_FIELD, lease.fencing_token)
                update_fields = {*defaults, FENCING_FIELD}
                if self.model._meta._non_pk_concrete_field_names.issuperset(update_fields):
                    # As Django's update_or_create: with the fields set on pre_save (auto_now).
                    for field in self.model._meta.local_concrete_fields:
                        if not field.primary_key and type(field).pre_save is not models.Field.pre_save:
                            update_fields.update({field.name, field.attname})
                    obj.save(using=db, update_fields=update_fields)
                else:
                    obj.save(using=db)
            return obj, False

    def _locked_get(self, plain: models.QuerySet[_M], kwargs: dict[str, Any]) -> _M | None:
        """The one row ``kwargs`` match, locked; None if none (several: Django's
        MultipleObjectsReturned)."""
        try:
            return plain.select_for_update().get(**kwargs)
        except self.model.DoesNotExist:
            return None

    def bulk_create(self, *args: Any, **kwargs: Any) -> list[_M]:
        if self._fence_lease is not None:
            raise NotImplementedError(
                "bulk_create() is not fenced: use create() or save(fence=lease) per object"
            )
        return super().bulk_create(*args, **kwargs)

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        if self._fence_lease is not None:
            raise NotImplementedError(
                "bulk_update() is not fenced: use fenced(lease).filter(...).update(...)"
            )
        return super().bulk_update(*args, **kwargs)


class FencedManager(models.Manager.from_queryset(FencedQuerySet)):  # type: ignore[misc]
    """The manager of :class:`FencedModel`: Django's, plus :meth:`FencedQuerySet.fenced`."""


class FencedModel(models.Model):
    """An abstract model whose rows a lost lease cannot overwrite.

    Adds ``fencing_token`` (the token of the lease that last wrote the row through a fenced
    write; 0: never) and ``objects = FencedManager()``. Fenced writes:
    ``Model.objects.fenced(lease)...`` and ``instance.save(fence=lease)``.
    """

    fencing_token = models.BigIntegerField(
        default=0, help_text="The fencing token of the lock lease that last wrote this row."
    )

    objects = FencedManager()

    class Meta:
        abstract = True

    def save(self, *args: Any, fence: Lease | None = None, **kwargs: Any) -> None:
        """Django's ``save()``; with ``fence=lease``, a fenced insert or update: refused
        with :class:`StaleLeaseError` (nothing written, the instance unchanged) when the
        row already carries a newer fencing token; else written with the lease's token."""
        if fence is None:
            return super().save(*args, **kwargs)
        lease = _validate_lease(fence, "fence")
        _check_not_released(lease)
        model = type(self)
        using = kwargs.get("using") or router.db_for_write(model, instance=self)
        kwargs["using"] = using
        update_fields = kwargs.get("update_fields")
        if update_fields is not None:
            if not update_fields:
                return super().save(*args, **kwargs)  # Django's: an empty update_fields saves nothing
            kwargs["update_fields"] = {*update_fields, FENCING_FIELD}
        with _write_transaction(model, using):
            tokens: list[int] = []
            if self.pk is not None and not kwargs.get("force_insert"):
                tokens = list(
                    model._base_manager.db_manager(using).filter(pk=self.pk)
                    .select_for_update().values_list(FENCING_FIELD, flat=True)
                )
            _check_held(lease, model, using)
            _check_tokens(lease, model, tokens)
            previous = getattr(self, FENCING_FIELD)
            setattr(self, FENCING_FIELD, lease.fencing_token)
            try:
                super().save(*args, **kwargs)
            except BaseException:
                setattr(self, FENCING_FIELD, previous)
                raise
        return None

    save.alters_data = True  # type: ignore[attr-defined]

    async def asave(self, *args: Any, fence: Lease | None = None, **kwargs: Any) -> None:
        """:meth:`save` for async code (``fence=lease`` as there)."""
        return await sync_to_async(self.save)(*args, fence=fence, **kwargs)

    asave.alters_data = True  # type: ignore[attr-defined]
