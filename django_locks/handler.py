"""The ``LOCKS`` setting turned into per-thread backend instances, like ``CACHES``."""

from __future__ import annotations

from typing import Any

from asgiref.local import Local
from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.connection import BaseConnectionHandler
from django.utils.module_loading import import_string

from django_locks.backends.base import BaseLock
from django_locks.exceptions import InvalidLockBackendError

DEFAULT_LOCK_ALIAS = "default"

#: What an absent ``LOCKS`` setting means: a DatabaseLock on the "default" database.
DEFAULT_LOCKS: dict[str, dict[str, Any]] = {
    DEFAULT_LOCK_ALIAS: {
        "BACKEND": "django_locks.backends.database.DatabaseLock",
        "OPTIONS": {"using": "default"},
    }
}

_ALIAS_KEYS = frozenset({"BACKEND", "OPTIONS"})


class LockHandler(BaseConnectionHandler):
    """``locks[alias]`` is that alias's backend; each thread and async context has its own."""

    settings_name = "LOCKS"
    exception_class = InvalidLockBackendError

    def configure_settings(self, settings: dict[str, Any] | None) -> dict[str, Any]:
        if settings is None:
            settings = getattr(django_settings, self.settings_name, None)
        if settings is None:
            settings = DEFAULT_LOCKS
        if not isinstance(settings, dict):
            raise InvalidLockBackendError(
                f"The LOCKS setting must be a dict of aliases, not {type(settings).__name__}"
            )
        return settings

    def __getitem__(self, alias: str) -> BaseLock:
        if not isinstance(alias, str):
            raise TypeError(f"lock alias must be a str, not {type(alias).__name__}")
        try:
            return getattr(self._connections, alias)
        except AttributeError:
            if alias not in self.settings:
                known = ", ".join(map(repr, self.settings)) or "none"
                raise self.exception_class(
                    f"The lock alias {alias!r} doesn't exist in LOCKS (configured: {known})"
                ) from None
        backend = self.create_connection(alias)
        setattr(self._connections, alias, backend)
        return backend

    def create_connection(self, alias: str) -> BaseLock:
        params = self.settings[alias]
        if not isinstance(params, dict):
            raise InvalidLockBackendError(
                f"LOCKS[{alias!r}] must be a dict with BACKEND and OPTIONS, "
                f"not {type(params).__name__}"
            )
        unknown = sorted(set(params) - _ALIAS_KEYS)
        if unknown:
            raise InvalidLockBackendError(
                f"LOCKS[{alias!r}]: unknown setting(s) {', '.join(map(repr, unknown))} "
                "(accepted: BACKEND, OPTIONS)",
                "django_locks.E002",
            )
        backend = params.get("BACKEND")
        if not isinstance(backend, str) or not backend:
            raise InvalidLockBackendError(f"LOCKS[{alias!r}] needs a BACKEND dotted path")
        try:
            backend_cls = import_string(backend)
        except ImportError as e:
            raise InvalidLockBackendError(
                f"LOCKS[{alias!r}]: could not import BACKEND {backend!r}: {e}"
            ) from e
        if not (isinstance(backend_cls, type) and issubclass(backend_cls, BaseLock)):
            raise InvalidLockBackendError(
                f"LOCKS[{alias!r}]: BACKEND {backend!r} is not a django_locks backend "
                "(a subclass of django_locks.backends.base.BaseLock)"
            )
        return backend_cls(alias, params)

    def reset(self) -> None:
        """Forget the configuration and every instance (used when LOCKS changes in tests)."""
        self.__dict__.pop("settings", None)
        self._settings = None
        self._connections = Local(self.thread_critical)


locks = LockHandler()


def close_locks(**kwargs: Any) -> None:
    """Close what this thread's lock backends hold open (see :meth:`BaseLock.close`).

    Connected to ``request_started`` and ``request_finished`` by the app, the way
    ``django.core.cache.close_caches`` closes caches.
    """
    for backend in locks.all(initialized_only=True):
        backend.close(**kwargs)


@receiver(setting_changed)
def _reset_locks(*, setting: str, **kwargs: Any) -> None:
    if setting in {"LOCKS", "CACHES", "DATABASES"}:
        locks.reset()
