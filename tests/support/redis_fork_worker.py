"""A process that uses CacheLock on every Redis topology, then forks (see
tests/backends/cache/test_redis_fork.py).

Usage: python -m tests.support.redis_fork_worker CONFIG_JSON
CONFIG: aliases (lock aliases), fresh (aliases the parent configures but first uses after
forking), rounds, children.

Before the first fork the parent uses each alias but the fresh ones: an attempt, a sync
wait woken by a release, an async wait in a loop of its own (``asyncio.run``). And when it
forks, a thread of its is connecting to a cluster whose startup node accepts and never
answers (a cluster client being made). Each round, ``children`` children are forked at
once; each, for every alias, takes and releases one key (the children contend: some
wait), sync and then async. A child exits 0 if all went well, 12 on an exception (printed
on stderr), 14 if it sent or read anything on a socket it inherited (the parent's
connections). The parent kills a child still running at the deadline ("hang"), and uses
every alias again after each round.
Prints one JSON line: {"codes": [...], "touched": [...], "parent_ok": bool}.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import sys
import threading
import weakref

from tests.support.forking import reap


def spy_on_inherited_sockets() -> list[str]:
    """From now on, note every send, read or shutdown on a socket object this process
    inherited (by identity: a new socket may reuse a closed one's descriptor number)."""
    inherited = weakref.WeakSet(obj for obj in gc.get_objects() if isinstance(obj, socket.socket))
    touched: list[str] = []
    for name in ("send", "sendall", "sendmsg", "recv", "recv_into", "recvmsg", "shutdown"):
        original = getattr(socket.socket, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if self in inherited:
                touched.append(f"{_name} on an inherited socket {self!r}")
            return _original(self, *args, **kwargs)

        setattr(socket.socket, name, spy)
    return touched


def main() -> None:
    config = json.loads(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django_locks import locks
    from django_locks.cluster import cluster_client

    ttl = 10_000

    def use(alias: str, key: str) -> None:
        backend = locks[alias]
        backend.lock(key, ttl, timeout=15_000).release()

        async def wait() -> None:
            lease = await backend.alock(key, ttl, timeout=15_000)
            await lease.arelease()

        asyncio.run(wait())

    for alias in config["aliases"]:
        if alias in config["fresh"]:
            continue
        backend = locks[alias]
        assert backend.try_acquire_lock("warm", "warm", ttl)
        threading.Timer(0.05, backend.release_lock, ("warm", "warm")).start()
        use(alias, "warm")  # waits for the timer's release

    # A thread making a cluster client when the process forks: its startup node accepts
    # the connection and never answers.
    silent = socket.create_server(("127.0.0.1", 0))
    silent.settimeout(10)

    def connect() -> None:
        try:
            cluster_client([f"redis://127.0.0.1:{silent.getsockname()[1]}"], socket_timeout=5,
                           socket_connect_timeout=5)
        except Exception:
            pass

    threading.Thread(target=connect, daemon=True).start()
    peer, _ = silent.accept()  # the thread is inside cluster_client, waiting for a reply

    codes: list = []
    touched: list[str] = []
    for _ in range(config["rounds"]):
        start_read, start_write = os.pipe()
        report_read, report_write = os.pipe()
        pids = []
        for _ in range(config["children"]):
            pid = os.fork()
            if pid == 0:  # the child
                os.close(start_write)
                os.close(report_read)
                seen = spy_on_inherited_sockets()
                code = 12
                try:
                    os.read(start_read, 1)  # returns once the parent closes its end
                    for alias in config["aliases"]:
                        use(alias, f"forked:{alias}")
                    code = 14 if seen else 0
                except BaseException as e:
                    print(f"child {os.getpid()}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                finally:
                    os.write(report_write, ("\n".join(seen[:5]) + "\n").encode() if seen else b"")
                    os._exit(code)
            pids.append(pid)
        os.close(start_read)
        os.close(start_write)  # start them all at once
        os.close(report_write)
        round_codes = reap(pids, config.get("child_deadline", 60), interval=0.005)
        with os.fdopen(report_read) as report:
            touched.extend(line for line in report.read().splitlines() if line)
        codes.extend(round_codes[pid] for pid in pids)
        for alias in config["aliases"]:  # the parent keeps working
            use(alias, f"parent:{alias}")
    parent_ok = all(locks[alias].get_holders(f"forked:{alias}") == [] for alias in config["aliases"])
    peer.close()
    print(json.dumps({"codes": codes, "touched": touched, "parent_ok": parent_ok}), flush=True)


if __name__ == "__main__":
    main()
