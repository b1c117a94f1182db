"""A worker process of the contention tests.

Usage: python -m tests.contention_worker CONFIG_JSON
CONFIG: alias, key, iterations, counter (a file), log (a file), ttl, timeout, hold. The
test databases are named in DJANGO_LOCKS_TEST_DB_NAMES (see tests/settings.py).
Each iteration takes the lock, does a deliberately racy read-modify-write of the
counter file, and logs "enter exit fencing_token" (monotonic ns,
one clock for all processes of the machine).
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
    counter = Path(config["counter"])
    lines = []
    for _ in range(config["iterations"]):
        with backend.lock(config["key"], config.get("ttl", 30_000),
                          timeout=config.get("timeout", 120_000)) as lease:
            enter = time.monotonic_ns()
            value = int(counter.read_text() or 0)
            time.sleep(config.get("hold", 0.0005))  # widen the race window
            counter.write_text(str(value + 1))
            leave = time.monotonic_ns()
        lines.append(f"{enter} {leave} {lease.fencing_token}\n")
    with open(config["log"], "a") as log:
        log.write("".join(lines))


if __name__ == "__main__":
    main()
