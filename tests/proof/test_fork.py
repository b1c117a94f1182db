"""Fork safety: a process that used a lock and then forks (gunicorn ``--preload``, Celery's
prefork pool, uWSGI, ``multiprocessing``) hands its children nothing of its own: each
child opens its own connections, listener and clients, and never touches the parent's
sockets, threads or held tokens; the parent keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from django_locks import locks
from tests import proof
from tests.helpers import ROOT, subprocess_env

ROUNDS = 20
CHILDREN = 4


def test_children_forked_after_use_each_use_their_own_connections(shared_alias):
    config = {"alias": shared_alias, "key": "forked", "rounds": ROUNDS, "children": CHILDREN}
    result = subprocess.run([sys.executable, "-m", "tests.support.fork_worker", json.dumps(config)],
                            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rounds = report["rounds"]
    outcomes = Counter(code for one in rounds for code in one["codes"])
    # 10 won, 11 lost: no hang, no error (12), no release of the parent's lock (13).
    if not set(outcomes) <= {10, 11}:
        pytest.fail(f"{outcomes}\n{result.stderr[-6000:]}")
    # One winner per round, and it alone holds the key.
    assert all(one["codes"].count(10) == 1 and one["winner_ok"] for one in rounds), rounds
    assert report["parent_ok"], "the parent's renewed or inherited lease, or its connection, was lost"
    proof.record_fault("processes forked after using the lock", ROUNDS * CHILDREN)
    backend = locks[shared_alias]
    for key in ("forked", "forked:turns", "forked:warm", "forked:async", "forked:renewed",
                "forked:inherited"):
        assert backend.get_holders(key) == [], key  # nothing left


def test_a_forked_child_starts_with_no_process_local_locks():
    """MemoryLock's locks live in one process: a child does not inherit its parent's
    (nor a mutex some thread of the parent held at the fork)."""
    import os

    backend = locks["memory"]
    lease = backend.lock("parent's", 60_000)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = backend.get_holders("parent's") == [] and backend.try_acquire_lock(None, "parent's", 1_000)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert [holder.token for holder in backend.get_holders("parent's")] == [lease.token]
    lease.release()


def test_a_child_ending_normally_leaves_the_parent_connected(shared_alias):
    """A forked child that ends through interpreter shutdown (a gunicorn worker: sys.exit)
    frees what it inherited; the drivers' goodbyes must not reach the parent's sessions
    (mysqlclient's COM_QUIT did: the parent's release then failed, the lock stayed held).
    Found by an outside attack."""
    code = (
        "import os, sys, django; django.setup()\n"
        "from django_locks import locks\n"
        f"with locks[{shared_alias!r}].lock('job', 60_000):\n"
        "    for _ in range(3):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            sys.exit(0)\n"
        "        os.waitpid(pid, 0)\n"
        "print('released')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "released" in result.stdout, result.stderr[-3000:]
    assert locks[shared_alias].get_holders("job") == []
