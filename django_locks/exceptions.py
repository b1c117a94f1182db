"""Errors raised by django_locks. Every one is a subclass of :class:`LockError`.

Bad arguments are not here: they raise the built-in ``TypeError`` or ``ValueError``
with a message naming the argument, before anything reaches a backend.
"""

from django.core.exceptions import ImproperlyConfigured


class LockError(Exception):
    """Base class of every django_locks error."""


class LockTimeoutError(LockError):
    """The lock could not be acquired within the timeout."""


class LockNotHeldError(LockError):
    """The caller does not hold the lock (never acquired, released, expired or taken over)."""


class LockBackendError(LockError):
    """The backend is unreachable or failed. The cause is chained as ``__cause__``.

    Never means "not acquired": the state of the lock is unknown to the caller.
    """


class InvalidLockBackendError(LockError, ImproperlyConfigured):
    """A ``LOCKS`` alias is unknown or its BACKEND / OPTIONS are invalid.

    ``check_id`` is the system check id reporting the same problem (django_locks.E###).
    """

    def __init__(self, message: str, check_id: str = "django_locks.E001") -> None:
        super().__init__(message)
        self.check_id = check_id


class ShortTTLWarning(UserWarning):
    """A decorator or ``manage.py locks`` was given a ttl under one second as an int.

    ttl is in milliseconds: ``ttl=30`` is 30 ms, not 30 s. Pass the milliseconds you mean
    (``ttl=30_000``), or a ``datetime.timedelta``, which never warns.
    """
