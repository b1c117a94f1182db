"""Contention: separate OS processes (threads for process-local backends) hammer one key,
then hundreds of keys, doing deliberately racy read-modify-writes in their critical
sections. Checked: exact counts, no overlap on one clock, fencing tokens rising in
critical-section order. ``--long`` runs the large sizes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests import proof
from tests.helpers import ROOT, check_history, overlaps_in, size_from_environment, subprocess_env


@pytest.fixture
def sizes(request) -> dict[str, int]:
    """The default sizes, or --long's; DJANGO_LOCKS_CONTENTION_PROCESSES and
    DJANGO_LOCKS_CONTENTION_ITERATIONS (per process, on one key) override either."""
    if request.config.getoption("--long"):
        sizes = {"processes": 16, "iterations": 200, "keys": 500, "many_iterations": 500}
    else:
        sizes = {"processes": 8, "iterations": 10, "keys": 300, "many_iterations": 40}
    sizes["processes"] = size_from_environment("DJANGO_LOCKS_CONTENTION_PROCESSES", sizes["processes"])
    sizes["iterations"] = size_from_environment("DJANGO_LOCKS_CONTENTION_ITERATIONS", sizes["iterations"])
    return sizes


def run_workers(config: dict, processes: int) -> None:
    workers = [
        subprocess.Popen([sys.executable, "-m", "tests.support.contention_worker", json.dumps(config)],
                         cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=1200)
        assert worker.returncode == 0, stderr


def test_processes_contend_for_one_key(shared_alias, tmp_path, sizes):
    counter, log = tmp_path / "counter", tmp_path / "log"
    counter.write_text("0")
    n, m = sizes["processes"], sizes["iterations"]
    run_workers({"alias": shared_alias, "key": "contended", "iterations": m,
                 "counter": str(counter), "log": str(log)}, n)
    records = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    overlaps = overlaps_in(sorted(records))
    proof.record_contention("one key", shared_alias, n, m, 1, len(records), overlaps)
    check_history(records, int(counter.read_text()), n * m)


def test_processes_contend_for_many_keys(shared_alias, tmp_path, sizes):
    counters, log = tmp_path / "counters", tmp_path / "log"
    counters.mkdir()
    keys = [f"k{i}" for i in range(sizes["keys"])]
    n, m = sizes["processes"], sizes["many_iterations"]
    run_workers({"alias": shared_alias, "mode": "many", "keys": keys, "iterations": m,
                 "counter_dir": str(counters), "log": str(log), "hold": 0.0002}, n)
    by_key: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        key, *numbers = line.split()
        by_key[key].append(tuple(map(int, numbers)))
    overlaps = sum(overlaps_in(sorted(records)) for records in by_key.values())
    proof.record_contention("many keys", shared_alias, n, m, len(keys), n * m, overlaps)
    assert sum(len(r) for r in by_key.values()) == n * m
    for key, records in by_key.items():
        check_history(records, int((counters / key).read_text()), len(records))


@pytest.mark.parametrize("alias", ["memory", "locmem"])
def test_threads_contend_for_one_key(alias, tmp_path, sizes):
    """MemoryLock and a LocMemCache are process-local: threads are the contenders."""
    from django_locks import locks

    counter = tmp_path / "counter"
    counter.write_text("0")
    records: list[tuple[int, int, int]] = []
    errors: list[BaseException] = []
    n, m = sizes["processes"], sizes["iterations"]

    def worker() -> None:
        try:
            backend = locks[alias]
            for _ in range(m):
                with backend.lock("contended", 30_000, timeout=60_000) as lease:
                    enter = time.monotonic_ns()
                    value = int(Path(counter).read_text())
                    time.sleep(0.0005)
                    counter.write_text(str(value + 1))
                    leave = time.monotonic_ns()
                records.append((enter, leave, lease.fencing_token))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    proof.record_contention("one key, threads", alias, n, m, 1, len(records),
                            overlaps_in(sorted(records)))
    check_history(records, int(counter.read_text()), n * m)
