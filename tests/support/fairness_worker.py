"""A worker process of the fairness tests: ``python -m tests.support.fairness_worker CONFIG_JSON``.

Creates CONFIG["ready"] once Django is set up, waits (with a deadline) for CONFIG["go"] to
exist, then ``sections`` times: takes ``key`` (waiting), spins ``section_ms`` ms, releases,
and at the end writes "acquired released pid" per section to CONFIG["log"]
(time.monotonic_ns: one clock for every process of the machine).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    config = json.loads(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django_locks import locks

    backend = locks[config["alias"]]
    key, section_ns = config["key"], int(config["section_ms"] * 1_000_000)
    backend.get_lock(key)  # connected before the start
    Path(config["ready"]).touch()
    deadline = time.monotonic() + 60
    while not Path(config["go"]).exists():
        if time.monotonic() > deadline:
            sys.exit("no go within 60 s")
        time.sleep(0.001)
    records = []
    for _ in range(config["sections"]):
        backend.acquire_lock(None, key, 60_000, 60_000)
        acquired = time.monotonic_ns()
        while time.monotonic_ns() - acquired < section_ns:  # busy, like the benchmark
            pass
        released = time.monotonic_ns()
        backend.release_lock(None, key)
        records.append(f"{acquired} {released} {os.getpid()}\n")
    with open(config["log"], "a") as log:
        log.write("".join(records))


if __name__ == "__main__":
    main()
