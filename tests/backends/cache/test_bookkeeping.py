"""CacheLock's bookkeeping stays bounded: keys taken and left to expire, never released,
are not remembered forever."""

from __future__ import annotations

import gc
import logging
import tracemalloc

from django_locks import locks
from tests import proof
from tests.helpers import wait_until


def _allocated_by(action) -> int:
    """Bytes still allocated after ``action`` (tracemalloc, after a full collection)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        action()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def test_bookkeeping_of_unreleased_expired_keys_stays_bounded(caplog):
    # pytest keeps every captured log record: DEBUG lines of 5,000 acquisitions would count.
    caplog.set_level(logging.WARNING, logger="django_locks")
    backend = locks["redis"]

    def take_and_abandon(first: int, count: int) -> None:
        for n in range(first, first + count):
            assert backend.try_acquire_lock(None, f"abandoned:{n}", 1)
        wait_until(lambda: backend.get_lock(f"abandoned:{first + count - 1}") is None)

    take_and_abandon(0, 2_000)  # fills the per-instance caches towards their steady size
    grown = _allocated_by(lambda: take_and_abandon(2_000, 20_000))
    proof.record_fault("abandoned keys (22,000 in one run)")
    # Bounded caches (keys' cache keys, holdings) stay under ~0.5 MB whatever the count; before
    # the fix every abandoned key stayed remembered (~120 bytes each: 2.4 MB more here).
    assert grown < 800_000, grown
    # Bookkeeping still works for what is held now.
    assert backend.try_acquire_lock(None, "kept", 60_000)
    backend.release_lock(None, "kept")
    assert backend.get_lock("kept") is None
