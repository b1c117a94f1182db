"""Separate OS processes (threads for process-local backends) contend for one key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env

PROCESSES = int(os.environ.get("DJANGO_LOCKS_CONTENTION_PROCESSES", "4"))
ITERATIONS = int(os.environ.get("DJANGO_LOCKS_CONTENTION_ITERATIONS", "15"))


def check_history(log: Path, counter: Path, expected: int) -> None:
    records = sorted(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    assert len(records) == expected
    assert int(counter.read_text()) == expected, "a racy update was lost: two holders at once"
    for (_, leave, _), (next_enter, _, _) in pairwise(records):
        assert next_enter >= leave, "two holders overlapped"
    fencing = [record[2] for record in records]
    assert all(a < b for a, b in pairwise(fencing)), "fencing tokens did not rise"


def test_processes_contend_for_one_key(shared_alias, tmp_path):
    counter, log = tmp_path / "counter", tmp_path / "log"
    counter.write_text("0")
    config = {
        "alias": shared_alias,
        "key": "contended",
        "iterations": ITERATIONS,
        "counter": str(counter),
        "log": str(log),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.contention_worker", json.dumps(config)],
            cwd=ROOT,
            env=subprocess_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
    check_history(log, counter, PROCESSES * ITERATIONS)


@pytest.mark.parametrize("alias", ["memory", "locmem"])
def test_threads_contend_for_one_key(alias, tmp_path):
    """MemoryLock and a LocMemCache are process-local: threads are the contenders."""
    from django_locks import locks

    counter, log = tmp_path / "counter", tmp_path / "log"
    counter.write_text("0")
    lines: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            backend = locks[alias]
            for _ in range(ITERATIONS):
                with backend.lock("contended", 30_000, timeout=60_000) as lease:
                    enter = time.monotonic_ns()
                    value = int(counter.read_text())
                    time.sleep(0.0005)
                    counter.write_text(str(value + 1))
                    leave = time.monotonic_ns()
                lines.append(f"{enter} {leave} {lease.fencing_token}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(PROCESSES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    log.write_text("\n".join(lines))
    check_history(log, counter, PROCESSES * ITERATIONS)
