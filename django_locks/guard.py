"""The one locking core: :class:`LockGuard` holds a lock around a block or a call.

Every surface is a thin client of it, the way django-pglock's ``advisory`` serves every
entry point: :func:`~django_locks.decorators.locked` *is* a ``LockGuard``,
:func:`~django_locks.decorators.lock_view` takes and gives back its leases through one,
and ``manage.py locks run`` holds its command's lock with one. A guard checks its
arguments once, when it is made; each use resolves the alias's backend of the calling
thread (``locks[alias]``), acquires (waiting up to ``timeout`` ms), starts the renewer if
``auto_renew``, and releases with :class:`~django_locks.lease.Lease`'s rules on the way
out. Sync and async uses share every step but the ``await``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import re
import string
import sys
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured

from django_locks.backends.base import BaseLock
from django_locks.exceptions import InvalidLockBackendError, ShortTTLWarning
from django_locks.handler import DEFAULT_LOCK_ALIAS, DEFAULT_LOCKS, locks
from django_locks.lease import Lease
from django_locks.values import (
    CONTROL_CHARACTERS,
    MAX_KEY_LENGTH,
    LockInfo,
    Milliseconds,
    Mode,
    time_until_admitted,
    validate_correlation_id,
    validate_key,
    validate_mode,
    validate_timeout,
    validate_ttl,
)

F = TypeVar("F", bound=Callable[..., Any])
#: A lock key: a format string over the call's arguments, or a callable returning the key.
KeySpec = str | Callable[..., str]


#: What a hashed key ends with: "#" and 64 hex digits (see safe_key).
_HASHED = re.compile(r"#[0-9a-f]{64}\Z")
#: Characters a substituted value keeps as they are; every other is percent-encoded.
_KEPT_IN_VALUES = frozenset("-_.~")


def safe_key(key: str) -> str:
    """``key`` if it is a valid lock key; else a readable prefix plus its SHA-256.

    A valid key that looks like a hashed one (ends with "#" and 64 hex digits) is hashed
    too, so no plain key can take the lock of a hashed key.
    """
    try:
        validate_key(key)
        if not _HASHED.search(key):
            return key
    except (TypeError, ValueError):
        pass
    text = str(key)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    # Control characters and lone surrogates become "?": the result is always valid.
    readable = CONTROL_CHARACTERS.sub("?", text).encode("utf-8", "replace").decode("utf-8")
    readable = readable[: MAX_KEY_LENGTH - len(digest) - 1]
    return f"{readable}#{digest}"


def quote_key_part(text: str) -> str:
    """``text`` with every character but letters, digits and ``-_.~`` percent-encoded
    (as UTF-8 bytes), so a value put into a key cannot add a separator to it."""
    return "".join(
        c if c.isalnum() or c in _KEPT_IN_VALUES
        else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in text
    )


class _KeyFormatter(string.Formatter):
    """``str.format`` whose substituted fields are quoted (format specs still apply)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return quote_key_part(super().format_field(value, format_spec))


_key_formatter = _KeyFormatter()


#: A ttl given as an int below this many milliseconds is probably meant as seconds.
SHORT_TTL_MS = 1000


def warn_if_short_ttl(ttl: object, what: str, *, option: str = "ttl", stacklevel: int = 2) -> None:
    """:class:`ShortTTLWarning` when ``ttl`` is an int under one second: ``ttl=30`` is 30 ms.

    ``what`` names the function, view or key it was given for; ``option`` is ``"--ttl"``
    for the command line. A ``timedelta`` never warns: it says its unit.
    """
    if not (isinstance(ttl, int) and not isinstance(ttl, bool) and 0 < ttl < SHORT_TTL_MS):
        return
    if option.startswith("--"):
        advice = f"for {ttl} seconds pass {option} {ttl * 1000}"
    else:
        advice = (f"for {ttl} seconds pass {option}={ttl * 1000:_} or {option}=timedelta(seconds={ttl}); "
                  f"{option}=timedelta(milliseconds={ttl}) keeps {ttl} ms without this warning")
    warnings.warn(
        f"{what}: {option} {ttl} is {ttl} milliseconds, under one second (ttl is in milliseconds): "
        f"{advice}",
        ShortTTLWarning,
        stacklevel=stacklevel + 1,
    )


def _aliases_in_settings() -> list[str] | None:
    """The LOCKS aliases an alias given now may name: those of the settings in force and,
    under a test's ``override_settings``, those of the settings it overrides (a module
    imported for the first time inside a test that overrides LOCKS keeps its decorators
    after the test: the project's own aliases are valid for them). None: not known yet
    (settings not configured, or LOCKS malformed: the system checks report that)."""
    from django.conf import UserSettingsHolder, global_settings, settings

    if not settings.configured:
        return None
    try:
        aliases = list(locks)
    except InvalidLockBackendError:
        return None
    # override_settings stacks a UserSettingsHolder over the settings it overrides;
    # settings.configure() makes one over Django's global_settings, where the walk stops.
    holder = getattr(settings, "_wrapped", None)
    while isinstance(holder, UserSettingsHolder) and holder.default_settings is not global_settings:
        holder = holder.default_settings
        outer = getattr(holder, "LOCKS", None)
        outer = DEFAULT_LOCKS if outer is None else outer
        if isinstance(outer, dict):
            aliases += [alias for alias in outer if alias not in aliases]
    return aliases


def check_alias(backend: str) -> None:
    """An alias that is not in ``LOCKS`` fails when it is given (a decorator: when the
    view or function is decorated, so at import, and ``manage.py check`` sees it), as bad
    ``shared=`` / ``limit=`` values do, naming the argument and the configured aliases.

    Left to the first use when settings are not configured yet (a module imported before
    them: reading ``LOCKS`` now would configure them, or fail), or when ``LOCKS`` itself
    is malformed (the system checks report that).
    """
    configured = _aliases_in_settings()
    if configured is not None and backend not in configured:
        known = ", ".join(map(repr, configured)) or "none"
        raise InvalidLockBackendError(
            f"backend={backend!r}: the lock alias {backend!r} doesn't exist in LOCKS (configured: {known})"
        )


def check_key_format(key: KeySpec, what: str) -> None:
    """A key format string that can never be built fails when it is given (decoration),
    naming it: unbalanced braces, an unknown conversion (``{pk!z}``)."""
    if callable(key):
        return
    try:
        fields = list(_key_formatter.parse(key))
    except ValueError as e:
        raise ValueError(f"key {key!r} of {what} is not a valid format string: {e}") from None
    for _, field, _, conversion in fields:
        if field is not None and conversion not in (None, "r", "s", "a"):
            raise ValueError(
                f"key {key!r} of {what} is not a valid format string: unknown conversion "
                f"!{conversion} (use !r, !s or !a)"
            )


def build_key(key: KeySpec, what: str, args: tuple, kwargs: dict[str, Any]) -> str:
    """The lock key of one call: ``key`` formatted with (or called on) its arguments.

    Values substituted into a format string are quoted (:func:`quote_key_part`): they
    cannot change the key's structure, so ``"report:{pk}"`` with ``pk="5:pdf"`` is not
    ``"report:{pk}:pdf"`` with ``pk=5``. A built key that is not a valid lock key (too long,
    control characters) is hashed by :func:`safe_key`, so no argument can make the call
    fail on its key.
    """
    if callable(key):
        built = key(*args, **kwargs)
        if not isinstance(built, str):
            raise ImproperlyConfigured(
                f"the key callable of {what} returned {type(built).__name__}, not str"
            )
        return safe_key(built)
    try:
        return safe_key(_key_formatter.format(key, *args, **kwargs))
    except (KeyError, IndexError) as e:
        raise ImproperlyConfigured(
            f"the lock key {key!r} of {what} needs {e.args[0]!r}, which the call does not "
            f"provide (it has {sorted(kwargs)} and {len(args)} positional)"
        ) from None
    except (AttributeError, TypeError, ValueError) as e:  # {pk.nope}, {pk:zz}
        raise ImproperlyConfigured(f"the lock key {key!r} of {what} cannot be built: {e}") from None


def free_in_ms(mode: Mode, holders: list[LockInfo]) -> int | None:
    """How long (ms) until an acquisition in ``mode`` could be admitted among ``holders``
    by their expiry alone, from each holder's ``remaining_ms`` as the backend measured it
    (never this server's clock). ``None`` when it is admitted already (a holder left
    meanwhile), or when a holder it waits for has no measured ``remaining_ms``.

    The rule of :class:`~django_locks.values.Mode`: a non-shared acquisition with limit N
    waits until ``len(holders) - N + 1`` holders have gone (a full semaphore: the holder
    that expires first; an exclusive one: the last holder); a shared one until every
    non-shared holder has gone (a waiting writer's mark is not a holder: not counted).
    """
    left = time_until_admitted(mode, [(math.inf if info.remaining_ms is None else info.remaining_ms,
                                        info.shared) for info in holders])
    return None if left is None or left == math.inf else int(left)


class LockGuard:
    """Hold ``key`` for ``ttl`` ms around a block or each call of a function.

    * ``with LockGuard("nightly", ttl=60_000) as lease:`` (or ``async with``): the key is
      used as given;
    * ``@LockGuard("sync:{account_id}", ttl=60_000)`` on a function or coroutine function:
      the key is a format string over the call's bound arguments (or a callable with the
      function's signature), built per call.

    ``timeout`` ms to wait (0: one attempt; :class:`~django_locks.exceptions.LockTimeoutError`
    when it runs out), ``backend`` the LOCKS alias, ``auto_renew`` keeps the lease alive
    while the block runs, ``correlation_id`` is stored with the lock. ``shared=True`` takes
    a shared (read) lock, ``limit=N`` a place in a counting semaphore of N (see
    :class:`~django_locks.values.Mode`); both are checked when the guard is made, and so
    is ``backend`` (an alias not in ``LOCKS``: :class:`InvalidLockBackendError`). Leaving
    releases the lease; a lease lost meanwhile is reported as
    :class:`~django_locks.lease.Lease` does.
    """

    def __init__(
        self,
        key: KeySpec,
        *,
        ttl: Milliseconds,
        timeout: Milliseconds = 0,
        backend: str = DEFAULT_LOCK_ALIAS,
        auto_renew: bool = False,
        correlation_id: str | None = None,
        shared: bool = False,
        limit: int = 1,
    ) -> None:
        if not (isinstance(key, str) or callable(key)):
            raise TypeError(f"key must be a format string or a callable, not {type(key).__name__}")
        if isinstance(key, str) and not key:
            raise ValueError("key must not be empty")
        if not isinstance(backend, str) or not backend:
            raise TypeError(f"backend must be a LOCKS alias (str), not {backend!r}")
        if not isinstance(auto_renew, bool):
            raise TypeError(f"auto_renew must be True or False, not {auto_renew!r}")
        self.key = key
        self.ttl = validate_ttl(ttl)
        #: The ttl as given: an int under a second warns when the guard decorates something.
        self.given_ttl = ttl
        self.timeout = validate_timeout(timeout)
        self.backend = backend
        self.auto_renew = auto_renew
        self.correlation_id = validate_correlation_id(correlation_id)
        #: How the key is shared: exclusive, shared, or a semaphore of ``limit``.
        self.mode = validate_mode(shared, limit)
        check_alias(backend)
        # The leases of the blocks entered and not yet left, per thread and async task,
        # each with the id of the frame that entered it.
        self._entered: ContextVar[tuple[tuple[int, Lease], ...]] = ContextVar(
            f"django_locks_guard_{id(self)}", default=()
        )

    # ----------------------------------------------------------------------- the steps

    def lock_backend(self) -> BaseLock:
        """The calling thread's backend of this guard's alias."""
        return locks[self.backend]

    def acquire(self, key: str, correlation_id: str | None = None) -> Lease:
        """Take ``key`` (waiting up to ``timeout``), renewing it if ``auto_renew``."""
        lease = self.lock_backend().lock(key, self.ttl, self.timeout,
                                         correlation_id or self.correlation_id,
                                         shared=self.mode.shared, limit=self.mode.limit)
        return self._started(lease)

    async def aacquire(self, key: str, correlation_id: str | None = None) -> Lease:
        """:meth:`acquire` for async code (the wait holds no thread)."""
        lease = await self.lock_backend().alock(key, self.ttl, self.timeout,
                                                correlation_id or self.correlation_id,
                                                shared=self.mode.shared, limit=self.mode.limit)
        return self._started(lease)

    def _started(self, lease: Lease) -> Lease:
        if self.auto_renew:
            lease.start_renewing()
        return lease

    def _literal_key(self) -> str:
        if not isinstance(self.key, str):
            raise TypeError("a LockGuard used as a context manager needs a str key, not a callable")
        return validate_key(self.key)

    # ----------------------------------------------------------------------- with / async with

    def __enter__(self) -> Lease:
        lease = self.acquire(self._literal_key())
        self._entered.set((*self._entered.get(), (id(sys._getframe(1)), lease)))
        return lease

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._left(id(sys._getframe(1))).__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> Lease:
        frame = id(sys._getframe(1))
        lease = await self.aacquire(self._literal_key())
        self._entered.set((*self._entered.get(), (frame, lease)))
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._left(id(sys._getframe(1))).__aexit__(exc_type, exc, tb)

    def _left(self, frame: int) -> Lease:
        """The lease of the block being left: the last one entered from the same frame
        (``frame``: its id), so generators or coroutines that share a context and
        interleave their blocks each leave their own; else (a block entered and left
        from different frames, as an ExitStack does) the last one entered."""
        entered = list(self._entered.get())
        index = next((i for i in range(len(entered) - 1, -1, -1) if entered[i][0] == frame),
                     len(entered) - 1)
        _, lease = entered.pop(index)
        self._entered.set(tuple(entered))
        return lease

    # ----------------------------------------------------------------------- as a decorator

    def __call__(self, function: F) -> F:
        name = f"function {getattr(function, '__qualname__', function)!r}"
        check_key_format(self.key, f"@locked on {name}")
        warn_if_short_ttl(self.given_ttl, f"@locked({self.key!r}) on {name}")
        signature = inspect.signature(function)
        key = self.key

        def call_key(args: tuple, kwargs: dict[str, Any]) -> str:
            if callable(key):
                return build_key(key, name, args, kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return build_key(key, name, (), dict(bound.arguments))

        # A generator's body runs as it is iterated: the lock is taken at its first step
        # and held until it is exhausted or closed, not only while the generator is made.
        if inspect.isasyncgenfunction(function):

            async def async_generator_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with await self.aacquire(call_key(args, kwargs)):
                    async for item in function(*args, **kwargs):
                        yield item

            return functools.wraps(function)(async_generator_wrapper)  # type: ignore[return-value]

        if inspect.isgeneratorfunction(function):

            def generator_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.acquire(call_key(args, kwargs)):
                    return (yield from function(*args, **kwargs))

            return functools.wraps(function)(generator_wrapper)  # type: ignore[return-value]

        if iscoroutinefunction(function):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with await self.aacquire(call_key(args, kwargs)):
                    return await function(*args, **kwargs)

            return functools.wraps(function)(async_wrapper)  # type: ignore[return-value]

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.acquire(call_key(args, kwargs)):
                return function(*args, **kwargs)

        return functools.wraps(function)(sync_wrapper)  # type: ignore[return-value]

    def __repr__(self) -> str:
        mode = "" if self.mode.exclusive else f" {self.mode.label()}"
        return f"<LockGuard {self.backend}:{self.key!r}{mode} ttl={self.ttl} timeout={self.timeout}>"
