"""Decorators: :func:`lock_view` for views, :func:`locked` for any function or coroutine.

Both take the lock before the call and release it after, also when the call raises.
``key`` is a format string or a callable; a key built from user input that is too long
or holds control characters is hashed to a fixed length (see :func:`safe_key`), so no
request can make a view fail on its key.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import math
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from django_locks import locks
from django_locks.backends.base import (
    _CONTROL_CHARACTERS,
    MAX_KEY_LENGTH,
    BaseLock,
    Lease,
    validate_correlation_id,
    validate_key,
    validate_timeout,
    validate_ttl,
)
from django_locks.exceptions import LockError, LockTimeoutError

logger = logging.getLogger("django_locks")

F = TypeVar("F", bound=Callable[..., Any])
KeySpec = str | Callable[..., str]

#: Request headers read, in order, for the correlation id of a locked view.
CORRELATION_ID_HEADERS = ("X-Correlation-ID", "X-Request-ID")


def safe_key(key: str) -> str:
    """``key`` if it is a valid lock key; else a readable prefix plus its SHA-256."""
    try:
        return validate_key(key)
    except (TypeError, ValueError):
        digest = hashlib.sha256(str(key).encode("utf-8", "surrogatepass")).hexdigest()
        readable = _CONTROL_CHARACTERS.sub("?", str(key))[: MAX_KEY_LENGTH - len(digest) - 1]
        return f"{readable}#{digest}"


def _check_common(key: object, ttl: object, timeout: object, backend: object) -> None:
    if not (isinstance(key, str) or callable(key)):
        raise TypeError(f"key must be a format string or a callable, not {type(key).__name__}")
    if isinstance(key, str) and not key:
        raise ValueError("key must not be empty")
    validate_ttl(ttl)
    validate_timeout(timeout)
    if not isinstance(backend, str) or not backend:
        raise TypeError(f"backend must be a LOCKS alias (str), not {backend!r}")


def _backend(alias: str) -> BaseLock:
    return locks[alias]


def _build(key: KeySpec, what: str, args: tuple, kwargs: dict[str, Any]) -> str:
    if callable(key):
        built = key(*args, **kwargs)
        if not isinstance(built, str):
            raise ImproperlyConfigured(
                f"the key callable of {what} returned {type(built).__name__}, not str"
            )
        return safe_key(built)
    try:
        return safe_key(key.format(*args, **kwargs))
    except (KeyError, IndexError) as e:
        raise ImproperlyConfigured(
            f"the lock key {key!r} of {what} needs {e.args[0]!r}, which the call does not "
            f"provide (it has {sorted(kwargs)} and {len(args)} positional)"
        ) from None


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


def _retry_after(backend: BaseLock, key: str) -> int:
    """Whole seconds (at least 1) until the current holder's lock expires."""
    try:
        info = backend.get_lock(key)
    except LockError:
        return 1
    if info is None:
        return 1
    remaining = (info.expires_at - datetime.now(timezone.utc)).total_seconds()
    return max(1, math.ceil(remaining))


def _locked_response(status: int, retry_after: int) -> HttpResponse:
    response = HttpResponse("Locked: this resource is busy, retry later.\n", status=status,
                            content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(retry_after)
    return response


def _release_quietly(lease: Lease) -> None:
    """Release after the view; a lost lease is logged (the response is already made)."""
    try:
        lease.release()
    except LockError as e:
        logger.error(
            "lock %r could not be released after the view: %s (alias=%s, correlation_id=%s)",
            lease.key, e, lease.alias, lease.correlation_id,
        )


def _release_with(response: HttpResponseBase, lease: Lease) -> HttpResponseBase:
    """Release now, or for a streaming response when the server closes it."""
    if response.streaming:
        # Django calls every resource closer when the response is closed, for sync and
        # async streams alike (the same hook it uses to close the stream's iterator).
        response._resource_closers.append(lambda: _release_quietly(lease))
    else:
        _release_quietly(lease)
    return response


def lock_view(
    key: KeySpec,
    *,
    ttl: int,
    timeout: int = 0,
    backend: str = "default",
    status: int = 423,
    on_locked: Callable[..., Any] | None = None,
    auto_renew: bool = False,
) -> Callable[[F], F]:
    """Run the view while holding a lock; answer ``status`` (423) when it is busy.

    ``key``: a format string over the view's URL arguments (``"report:{pk}"``) or a
    callable ``key(request, *args, **kwargs) -> str``. The response carries
    ``Retry-After`` (whole seconds, at least 1, from the holder's remaining life), unless
    ``on_locked(request, *args, **kwargs)`` supplies the response. Works on sync and
    async function views, and on class-based views through ``method_decorator``.
    """
    _check_common(key, ttl, timeout, backend)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status code (100-599), not {status!r}")
    if on_locked is not None and not callable(on_locked):
        raise TypeError("on_locked must be a callable")

    def decorator(view: F) -> F:
        name = f"view {getattr(view, '__qualname__', view)!r}"

        def view_key(request: HttpRequest, args: tuple, kwargs: dict[str, Any]) -> str:
            if callable(key):
                return _build(key, name, (request, *args), kwargs)
            return _build(key, name, args, kwargs)

        if iscoroutinefunction(view):

            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                lock_backend = _backend(backend)
                lock_key = view_key(request, args, kwargs)
                try:
                    lease = await lock_backend.alock(
                        lock_key, ttl, timeout, _request_correlation_id(request)
                    )
                except LockTimeoutError:
                    if on_locked is not None:
                        response = on_locked(request, *args, **kwargs)
                        return await response if inspect.isawaitable(response) else response
                    retry = await sync_to_async(_retry_after, thread_sensitive=False)(
                        lock_backend, lock_key
                    )
                    return _locked_response(status, retry)
                if auto_renew:
                    lease.start_renewing()
                try:
                    response = await view(request, *args, **kwargs)
                except BaseException:
                    await sync_to_async(_release_quietly, thread_sensitive=False)(lease)
                    raise
                if response.streaming:
                    return _release_with(response, lease)
                await sync_to_async(_release_quietly, thread_sensitive=False)(lease)
                return response

            return functools.wraps(view)(async_wrapper)  # type: ignore[return-value]

        @functools.wraps(view)
        def sync_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            lock_backend = _backend(backend)
            lock_key = view_key(request, args, kwargs)
            try:
                lease = lock_backend.lock(lock_key, ttl, timeout, _request_correlation_id(request))
            except LockTimeoutError:
                if on_locked is not None:
                    return on_locked(request, *args, **kwargs)
                return _locked_response(status, _retry_after(lock_backend, lock_key))
            if auto_renew:
                lease.start_renewing()
            try:
                response = view(request, *args, **kwargs)
            except BaseException:
                _release_quietly(lease)
                raise
            return _release_with(response, lease)

        return sync_wrapper  # type: ignore[return-value]

    return decorator


# ----------------------------------------------------------------------------- any function


def locked(
    key: KeySpec,
    *,
    ttl: int,
    timeout: int = 0,
    backend: str = "default",
    auto_renew: bool = False,
) -> Callable[[F], F]:
    """Run the function (or coroutine function) while holding a lock.

    ``key``: a format string over the function's bound arguments (``"sync:{account_id}"``)
    or a callable with the function's signature. Raises :class:`LockTimeoutError` when the
    lock cannot be had within ``timeout`` ms. The lease is released when the call returns
    or raises.
    """
    _check_common(key, ttl, timeout, backend)

    def decorator(function: F) -> F:
        name = f"function {getattr(function, '__qualname__', function)!r}"
        signature = inspect.signature(function)

        def function_key(args: tuple, kwargs: dict[str, Any]) -> str:
            if callable(key):
                return _build(key, name, args, kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return _build(key, name, (), dict(bound.arguments))

        if iscoroutinefunction(function):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                lease = await _backend(backend).alock(function_key(args, kwargs), ttl, timeout)
                if auto_renew:
                    lease.start_renewing()
                async with lease:
                    return await function(*args, **kwargs)

            return functools.wraps(function)(async_wrapper)  # type: ignore[return-value]

        @functools.wraps(function)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            lease = _backend(backend).lock(function_key(args, kwargs), ttl, timeout)
            if auto_renew:
                lease.start_renewing()
            with lease:
                return function(*args, **kwargs)

        return sync_wrapper  # type: ignore[return-value]

    return decorator


__all__ = ["lock_view", "locked", "safe_key"]
