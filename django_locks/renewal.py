"""Auto-renewal: the one mechanism behind every ``auto_renew=True``.

A :class:`LeaseRenewer` is a daemon thread (it never keeps a process alive) that
extends a lease to its full ttl every third of the ttl, so two renewals can fail before
the lease runs out. If an extension finds the lease lost, the renewer stops; the loss is
logged at ERROR level with key and correlation id and the ``lock_lost`` signal is sent
(by :meth:`Lease.extend <django_locks.lease.Lease.extend>`). A backend error is logged
and retried at the next tick; it never ends the renewer silently. When the renewer
ends, it gives back what its thread opened through ``BaseLock.close()``.

The renewer holds its lease weakly (between ticks it holds no reference at all): a lease
dropped without ``release()`` is collected, its renewer stops with a WARNING naming key
and correlation id, and the lock expires by its ttl instead of living as long as the
process.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from django_locks.exceptions import LockBackendError, LockNotHeldError

if TYPE_CHECKING:
    from django_locks.lease import Lease

logger = logging.getLogger("django_locks")


class LeaseRenewer:
    def __init__(self, lease: Lease, interval: float | None = None) -> None:
        self._lease_ref = weakref.ref(lease)  # between ticks, the lease is not kept alive
        self.key, self.alias, self.correlation_id = lease.key, lease.alias, lease.correlation_id
        self.backend = lease.backend
        self.interval = interval if interval is not None else lease.ttl / 3000
        #: Set when an extension found the lease lost.
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"django_locks renewer {lease.key!r}", daemon=True
        )

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set() and not self.lost.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(self.interval, 1.0) + 5)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                if not self._renew():
                    return
        except Exception:
            logger.exception(
                "lock renewer for %r failed (alias=%s, correlation_id=%s)",
                self.key, self.alias, self.correlation_id,
            )
        finally:
            self.backend.close()

    def _renew(self) -> bool:
        """One tick: extend the lease if it still exists. False: stop renewing."""
        lease = self._lease_ref()
        if lease is None:
            logger.warning(
                "lease on lock %r was dropped without release(): renewal stopped, the lock "
                "expires with its ttl (alias=%s, correlation_id=%s)",
                self.key, self.alias, self.correlation_id,
            )
            return False
        try:
            lease.extend()
        except LockNotHeldError:
            self.lost.set()  # extend() logged it and sent lock_lost
            return False
        except LockBackendError as e:
            logger.error(
                "could not renew lock %r, retrying: %s (alias=%s, correlation_id=%s)",
                self.key, e, self.alias, self.correlation_id,
            )
        return True
