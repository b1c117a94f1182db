"""A job that must never run twice at once, wherever it is started from."""

import time

from django_locks.decorators import locked


@locked("rebuild-search-index", ttl=60_000, auto_renew=True)
def rebuild_search_index(seconds: float = 2.0) -> str:
    """Runs under the lock; a second caller gets LockTimeoutError at once (timeout=0)."""
    time.sleep(seconds)
    return f"search index rebuilt in {seconds:g} s"
