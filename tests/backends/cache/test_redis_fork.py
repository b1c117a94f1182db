"""Fork safety of CacheLock on Redis, on every topology: a process that used its locks
(waits included, sync and async) and then forks (gunicorn ``--preload``, Celery's prefork
pool, ``multiprocessing``) hands its children none of its clients, pools, connections or
mutexes; they never send or read on the parent's sockets, and the parent keeps working.
tests/proof/test_fork.py covers the shared aliases with one child attempt per round; this
module has the children wait on each other, on the cluster and Sentinel aliases too."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from tests import proof
from tests.helpers import ROOT, subprocess_env

ALIASES = ["redis", "django_redis", "cluster", "cluster_django", "sentinel", "sentinel_django"]


def test_children_forked_after_use_open_their_own_redis_clients(redis_cluster, sentinel_set):
    """4 children per round, 3 rounds, each taking every alias's key in turn (sync, then
    async). When the parent forks, one of its threads is making a cluster client (its
    startup node never answers), holding the mutex of the process's cluster clients: a
    child that first needs a cluster client (here "cluster_django", configured but not
    used before the fork) waited for that mutex forever."""
    config = {"aliases": ALIASES, "fresh": ["cluster_django"], "rounds": 3, "children": 4,
              "child_deadline": 30}
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.redis_fork_worker", json.dumps(config)], cwd=ROOT,
        env=subprocess_env(DJANGO_LOCKS_TEST_TOPOLOGY_LOCKS="1"), capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    outcomes = Counter(report["codes"])
    print(f"children: {dict(outcomes)}; touched: {report['touched'][:3]}")
    # 0: every alias used; not 12 (an error), 14 (a parent's socket used) or a hang.
    assert outcomes == {0: 12}, (outcomes, report["touched"][:5], result.stderr[-3000:])
    assert report["touched"] == []
    assert report["parent_ok"]
    proof.record_fault("processes forked after using Redis locks on every topology", 12)
