"""Distributed locks for Django.

``from django_locks import locks``; ``locks["default"]`` is the backend of that
alias of the ``LOCKS`` setting. The contract every backend keeps is in
:mod:`django_locks.backends.base` and ``docs/contract.md``.
"""

from django_locks.handler import DEFAULT_LOCK_ALIAS, LockHandler, close_locks, locks

__all__ = ["DEFAULT_LOCK_ALIAS", "LockHandler", "close_locks", "locks"]
