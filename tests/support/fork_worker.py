"""A process that uses a lock alias, then forks, as gunicorn ``--preload``, Celery's
prefork pool and ``multiprocessing`` do (see tests/proof/test_fork.py).

Usage: python -m tests.support.fork_worker CONFIG_JSON
CONFIG: alias, key, rounds, children, ttl (ms), child_deadline (s).

Before the first fork the parent uses everything the library opens per process: a
try_acquire, a waiting acquisition (PostgreSQL: the LISTEN thread), an async waiting
acquisition (Redis: its asyncio client), a lease renewed by a thread (kept for the whole
run), and a lease of its own that the children inherit as an object. Then, each round,
``children`` children are forked at once; each waits for the start (a pipe closes),
makes one ``try_acquire_lock`` (timeout 0), then a waiting acquisition of a second key
(the children take turns), and exits 10 if it won the first (keeping that lock),
11 if it lost, 12 on an exception (printed on stderr), 13 if releasing the inherited
lease did not fail as it must. The parent kills a child still running at the deadline
(a hang) and reports it. After each round the parent lists the key's holders (the
winner's correlation id, alone, is the round's "holders"), releases the winner's lock by
its token, then acquires and releases the key itself.
Prints one JSON line: {"rounds": [{"codes": [...], "winner_ok": bool}, ...], "parent_ok": bool}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading

from tests.support.forking import reap


def main() -> None:
    config = json.loads(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django_locks import locks
    from django_locks.exceptions import LockNotHeldError

    alias, key, ttl = config["alias"], config["key"], config.get("ttl", 10_000)
    backend = locks[alias]

    # Use everything the library opens per process.
    assert backend.try_acquire_lock("warm", key, ttl)
    backend.release_lock("warm", key)
    blocker = backend.lock(f"{key}:warm", ttl)
    threading.Timer(0.05, blocker.release).start()
    backend.lock(f"{key}:warm", ttl, timeout=5_000).release()  # waited: the listener, if any

    async def wait_async() -> None:
        held = await backend.alock(f"{key}:async", ttl)
        asyncio.get_running_loop().call_later(0.05, held.release)
        await asyncio.sleep(0)
        lease = await backend.alock(f"{key}:async", ttl, timeout=5_000)
        await lease.arelease()

    asyncio.run(wait_async())
    renewed = backend.lock(f"{key}:renewed", 3_000)
    renewed.start_renewing(interval=0.05)
    inherited = backend.lock(f"{key}:inherited", 60_000)

    def own_connection() -> object:
        """The parent's private database connection (None for other backends, and for
        SQLite, whose connections the parent closes before each fork and reopens)."""
        using = getattr(backend, "using", None)
        if using is None or getattr(backend, "vendor", "") == "sqlite":
            return None
        from django_locks.backends.database import lock_connection

        return lock_connection(using).wrapper.connection

    before = own_connection()
    rounds = []
    for _ in range(config["rounds"]):
        start_read, start_write = os.pipe()
        pids = []
        for _ in range(config["children"]):
            pid = os.fork()
            if pid == 0:  # the child
                os.close(start_write)
                code = 12
                try:
                    os.read(start_read, 1)  # returns once the parent closes its end
                    try:
                        inherited.release()
                        code = 13  # released the parent's lock
                    except LockNotHeldError:
                        child = locks[alias]
                        won = child.try_acquire_lock(f"child-{os.getpid()}", key, ttl)
                        # A wait of its own (PostgreSQL: the child's own listener), the
                        # children taking turns on a second key.
                        child.lock(f"{key}:turns", ttl, timeout=10_000).release()
                        code = 10 if won else 11
                except BaseException as e:  # reported to the parent
                    import traceback

                    print(f"child {os.getpid()}: {type(e).__name__}: {e}\n{traceback.format_exc()}",
                          file=sys.stderr, flush=True)
                    code = 12
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(start_read)
        os.close(start_write)  # start them all at once
        codes = reap(pids, config.get("child_deadline", 20))
        winners = [f"child-{pid}" for pid in pids if codes[pid] == 10]
        holders = backend.get_holders(key)
        for holder in holders:
            backend.release_lock("parent", key, owner=holder.token)
        rounds.append({"codes": [codes[pid] for pid in pids],
                       "winner_ok": [h.correlation_id for h in holders] == winners})
        # The parent keeps working on its own connections.
        backend.lock(key, ttl, timeout=5_000).release()

    holders = backend.get_holders(f"{key}:inherited")
    # Still renewing, still holding, and on the same connection: no child ended its
    # session (a dropped connection is replaced by the next statement).
    parent_ok = (renewed.renewing and inherited.token in [h.token for h in holders]
                 and own_connection() is before)
    renewed.release()
    inherited.release()
    print(json.dumps({"rounds": rounds, "parent_ok": parent_ok}), flush=True)


if __name__ == "__main__":
    main()
