"""Lock use in a server's master process before it forks its workers.

gunicorn ``--preload`` imports the app in the master and forks the workers from it, and
a Celery worker forks its prefork pool after ``worker_init``: whatever django_locks
opened in the master (private database connections, the PostgreSQL listener thread,
Redis clients) is inherited by every child. So the master uses the lock alias named in
``DJANGO_LOCKS_DEPLOY_WARMUP`` the way an app would: a try-once acquisition, a waiting
one that really waits (another holder releases it from a thread), and the same through
``alock``. It prints one line that the tests read (the pid and how long it waited).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

from django_locks import locks

ENV = "DJANGO_LOCKS_DEPLOY_WARMUP"
#: How long the other holder keeps the key before releasing it (s).
HELD_FOR = 0.2


def use_lock_before_fork() -> None:
    alias = os.environ.get(ENV)
    if not alias:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(f"{ENV}: the warm-up runs where no event loop runs (a master process)")
    backend = locks[alias]
    key = f"deploy-warmup:{os.getpid()}"
    with backend.lock(key, 10_000):
        pass
    held = backend.lock(key, 10_000)
    releaser = threading.Timer(HELD_FOR, held.release)
    releaser.start()
    started = time.monotonic()
    with backend.lock(key, 10_000, timeout=10_000):
        waited = time.monotonic() - started
    releaser.join()

    async def asynchronously() -> float:
        held = await backend.alock(key, 10_000)

        async def release_later() -> None:
            await asyncio.sleep(HELD_FOR)
            await held.arelease()

        releasing = asyncio.create_task(release_later())
        started = time.monotonic()
        async with backend.alock(key, 10_000, timeout=10_000):
            waited = time.monotonic() - started
        await releasing
        return waited

    awaited = asyncio.run(asynchronously())
    print(f"django_locks deploy warm-up: alias={alias} pid={os.getpid()} "
          f"waited_ms={waited * 1000:.0f} awaited_ms={awaited * 1000:.0f}", file=sys.stderr, flush=True)
