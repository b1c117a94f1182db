"""Auto-renewal: the one mechanism behind every ``auto_renew=True``.

A :class:`LeaseRenewer` is a daemon thread (it never keeps a process alive) that
extends a lease to its full ttl every third of the ttl, so two renewals can fail before
the lease runs out. If an extension finds the lease lost, the renewer stops; the loss is
logged at ERROR level with key and correlation id and the ``lock_lost`` signal is sent
(by :meth:`Lease.extend <django_locks.lease.Lease.extend>`). A backend error is logged
and retried at the next tick; it never ends the renewer silently. When the renewer
ends, it gives back what its thread opened through ``BaseLock.close()``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from django_locks.exceptions import LockBackendError, LockNotHeldError

if TYPE_CHECKING:
    from django_locks.lease import Lease

logger = logging.getLogger("django_locks")


class LeaseRenewer:
    def __init__(self, lease: Lease, interval: float | None = None) -> None:
        self.lease = lease
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
        lease = self.lease
        try:
            while not self._stop.wait(self.interval):
                try:
                    lease.extend()
                except LockNotHeldError:
                    self.lost.set()  # extend() logged it and sent lock_lost
                    return
                except LockBackendError as e:
                    logger.error(
                        "could not renew lock %r, retrying: %s (alias=%s, correlation_id=%s)",
                        lease.key, e, lease.alias, lease.correlation_id,
                    )
        except Exception:
            logger.exception(
                "lock renewer for %r failed (alias=%s, correlation_id=%s)",
                lease.key, lease.alias, lease.correlation_id,
            )
        finally:
            lease.backend.close()
