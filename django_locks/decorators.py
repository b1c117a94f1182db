"""Decorators: :func:`lock_view` for views, :func:`locked` for any function or coroutine.

Both are thin clients of :class:`~django_locks.guard.LockGuard`, the one locking core:
they take the lock before the call and release it after, also when the call raises.
``key`` is a format string or a callable; a key built from user input that is too long
or holds control characters is hashed to a fixed length (see :func:`safe_key`), so no
request can make a view fail on its key.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from django_locks.backends.base import BaseLock
from django_locks.exceptions import LockError, LockTimeoutError
from django_locks.guard import (
    KeySpec,
    LockGuard,
    build_key,
    check_key_format,
    free_in_ms,
    safe_key,
    warn_if_short_ttl,
)
from django_locks.handler import DEFAULT_LOCK_ALIAS
from django_locks.lease import Lease
from django_locks.values import Milliseconds, Mode, validate_correlation_id

logger = logging.getLogger("django_locks")

F = TypeVar("F", bound=Callable[..., Any])

#: Request headers read, in order, for the correlation id of a locked view.
CORRELATION_ID_HEADERS = ("X-Correlation-ID", "X-Request-ID")


# ----------------------------------------------------------------------------- any function


def locked(
    key: KeySpec,
    *,
    ttl: Milliseconds,
    timeout: Milliseconds = 0,
    backend: str = DEFAULT_LOCK_ALIAS,
    auto_renew: bool = False,
    shared: bool = False,
    limit: int = 1,
) -> LockGuard:
    """Run the function (or coroutine function) while holding a lock.

    ``key``: a format string over the function's bound arguments (``"sync:{account_id}"``)
    or a callable with the function's signature. Raises :class:`LockTimeoutError` when the
    lock cannot be had within ``timeout`` ms. The lease is released when the call returns
    or raises. (The returned :class:`LockGuard` also works as ``with locked(...)``.)
    ``ttl`` and ``timeout`` are milliseconds or ``datetime.timedelta``; an int ttl under
    1000 raises a :class:`~django_locks.exceptions.ShortTTLWarning` when the function is
    decorated.

    ``shared=True``: a shared (read) lock, held together with other shared holders and
    never with an exclusive one. ``limit=N``: at most N calls at once (a counting
    semaphore). ``shared=True`` with ``limit > 1`` is a ``ValueError``; bad values of
    either fail here, when the function is decorated, naming the argument, and so does a
    ``backend`` alias that is not in ``LOCKS`` (``InvalidLockBackendError``, once settings
    are configured).
    """
    return LockGuard(key, ttl=ttl, timeout=timeout, backend=backend, auto_renew=auto_renew,
                     shared=shared, limit=limit)


# ----------------------------------------------------------------------------- views


def _request_correlation_id(request: HttpRequest) -> str:
    for header in CORRELATION_ID_HEADERS:
        value = request.headers.get(header)
        if value:
            try:
                return validate_correlation_id(value) or uuid.uuid4().hex
            except (TypeError, ValueError):
                break
    return uuid.uuid4().hex


def _retry_after(backend: BaseLock, key: str, mode: Mode) -> int:
    """Whole seconds (at least 1) until an acquisition in ``mode`` could be admitted by
    the expiry of the holders blocking it, as the backend measures their remaining life
    (this server's clock may be skewed against the backend's): for a full semaphore the
    holder that expires first, for an exclusive lock the last of its holders, for a
    shared lock its exclusive holder. See :func:`~django_locks.guard.free_in_ms`."""
    try:
        holders = backend.get_holders(key)
    except LockError:
        return 1
    ms = free_in_ms(mode, holders)
    return 1 if ms is None else max(1, math.ceil(ms / 1000))


def _release_quietly(lease: Lease) -> None:
    """Release after the view; a lost lease is logged (the response is already made)."""
    try:
        lease.release()
    except LockError as e:
        logger.error(
            "lock %r could not be released after the view: %s (alias=%s, correlation_id=%s)",
            lease.key, e, lease.alias, lease.correlation_id,
        )


def _release_after(response: HttpResponseBase, lease: Lease) -> HttpResponseBase:
    """Release now, or for a streaming response when the server closes it. Anything that
    is not a response (a view returning None: Django reports it next) releases now."""
    if getattr(response, "streaming", False) and hasattr(response, "_resource_closers"):
        # Django calls every resource closer when the response is closed, for sync and
        # async streams alike (the same hook it uses to close the stream's iterator).
        response._resource_closers.append(lambda: _release_quietly(lease))
    else:
        _release_quietly(lease)
    return response


class _EveryDatabase(frozenset):
    """A view's ``_non_atomic_requests`` naming every database alias."""

    def __contains__(self, alias: object) -> bool:
        return True


_EVERY_DATABASE = _EveryDatabase()


def _atomic_requests(view: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """``view`` in the transactions ATOMIC_REQUESTS asks for, as Django's handler would
    wrap it (``BaseHandler.make_view_atomic``, honouring ``non_atomic_requests`` on the
    view, or on ``wrapper``, lock_view's view, when it was applied over lock_view), but
    inside the lock: the view's transaction commits (or rolls back) before the lock is
    released, so the next holder sees its writes, and on SQLite the release does not wait
    behind the request's open write transaction."""
    non_atomic = set(getattr(view, "_non_atomic_requests", ()))
    outer = getattr(wrapper, "_non_atomic_requests", _EVERY_DATABASE)
    if outer is not _EVERY_DATABASE:  # non_atomic_requests over lock_view replaced the marker
        non_atomic.update(outer)
    for alias, settings_dict in connections.settings.items():
        if settings_dict.get("ATOMIC_REQUESTS") and alias not in non_atomic:
            view = transaction.atomic(using=alias)(view)
    return view


class _ViewLock:
    """What ``lock_view`` does around one view: every step but the ``await``."""

    def __init__(self, guard: LockGuard, view: Callable[..., Any], status: int,
                 on_locked: Callable[..., Any] | None) -> None:
        self.guard = guard
        self.name = f"view {getattr(view, '__qualname__', view)!r}"
        self.status = status
        self.on_locked = on_locked

    def key(self, request: HttpRequest, args: tuple, kwargs: dict[str, Any]) -> str:
        key = self.guard.key
        if callable(key):
            return build_key(key, self.name, (request, *args), kwargs)
        return build_key(key, self.name, args, kwargs)

    def busy(self, request: HttpRequest, key: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The answer when the lock is held elsewhere (may be awaitable from on_locked)."""
        if self.on_locked is not None:
            return self.on_locked(request, *args, **kwargs)
        response = HttpResponse("Locked: this resource is busy, retry later.\n", status=self.status,
                                content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(_retry_after(self.guard.lock_backend(), key, self.guard.mode))
        return response


def lock_view(
    key: KeySpec,
    *,
    ttl: Milliseconds,
    timeout: Milliseconds = 0,
    backend: str = DEFAULT_LOCK_ALIAS,
    status: int = 423,
    on_locked: Callable[..., Any] | None = None,
    auto_renew: bool = False,
    shared: bool = False,
    limit: int = 1,
) -> Callable[[F], F]:
    """Run the view while holding a lock; answer ``status`` (423) when it is busy.

    ``ttl`` and ``timeout`` are milliseconds or ``datetime.timedelta``; an int ttl under
    1000 raises a :class:`~django_locks.exceptions.ShortTTLWarning` when the view is decorated.

    ``key``: a format string over the view's URL arguments (``"report:{pk}"``) or a
    callable ``key(request, *args, **kwargs) -> str``. The response carries
    ``Retry-After`` (whole seconds, at least 1, from the holder's remaining life), unless
    ``on_locked(request, *args, **kwargs)`` supplies the response. Works on sync and
    async function views, and on class-based views through ``method_decorator``.

    ``limit=N``: at most N requests run the view at once (a counting semaphore); the
    next gets ``status`` with ``Retry-After`` from the holder that expires first.
    ``shared=True``: a shared (read) lock, run together with other shared requests and
    never with an exclusive holder of the key (a ``lock_view``/``locked`` without
    ``shared``, or a ``lock()``). ``shared=True`` with ``limit > 1`` is a ``ValueError``;
    bad values fail when ``lock_view`` is called, naming the argument; so does a
    ``backend`` alias that is not in ``LOCKS`` (``InvalidLockBackendError``, once settings
    are configured: ``manage.py check`` imports the URLconf, and with it the view).
    """
    guard = LockGuard(key, ttl=ttl, timeout=timeout, backend=backend, auto_renew=auto_renew,
                      shared=shared, limit=limit)
    check_key_format(key, "@lock_view")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status code (100-599), not {status!r}")
    if on_locked is not None and not callable(on_locked):
        raise TypeError("on_locked must be a callable")
    in_worker = functools.partial(sync_to_async, thread_sensitive=False)

    def decorator(view: F) -> F:
        step = _ViewLock(guard, view, status, on_locked)
        warn_if_short_ttl(ttl, f"@lock_view({key!r}) on {step.name}")

        if iscoroutinefunction(view):

            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                lock_key = step.key(request, args, kwargs)
                try:
                    lease = await guard.aacquire(lock_key, _request_correlation_id(request))
                except LockTimeoutError:
                    response = await in_worker(step.busy)(request, lock_key, args, kwargs)
                    return await response if inspect.isawaitable(response) else response
                try:
                    response = await view(request, *args, **kwargs)
                except BaseException:
                    await in_worker(_release_quietly)(lease)
                    raise
                return await in_worker(_release_after)(response, lease)

            return functools.wraps(view)(async_wrapper)  # type: ignore[return-value]

        def sync_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            lock_key = step.key(request, args, kwargs)
            try:
                lease = guard.acquire(lock_key, _request_correlation_id(request))
            except LockTimeoutError:
                return step.busy(request, lock_key, args, kwargs)
            try:
                response = _atomic_requests(view, wrapper)(request, *args, **kwargs)
            except BaseException:
                _release_quietly(lease)
                raise
            return _release_after(response, lease)

        wrapper = functools.wraps(view)(sync_wrapper)
        # Django must not wrap this view in ATOMIC_REQUESTS transactions: lock_view opens
        # them itself, inside the lock (_atomic_requests).
        wrapper._non_atomic_requests = _EVERY_DATABASE  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


__all__ = ["lock_view", "locked", "safe_key"]
