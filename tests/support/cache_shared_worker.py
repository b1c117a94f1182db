"""A worker process of the shared-lock and semaphore contention tests (test_cache_shared.py).

Usage: python -m tests.support.cache_shared_worker CONFIG_JSON

Every worker writes ``ready_dir/PID`` once Django is set up, then waits for the file
``go`` (so that all start together, not one process start-up apart), then ``iterations``
times:

- "semaphore": takes ``key`` with ``limit``, holds it ``hold`` seconds, logs
  "S enter leave fencing_token";
- "rw": a writer (one iteration in ``writer_every``, at random) takes ``key`` exclusively
  and does a deliberately racy read-modify-write of the file ``counter``; a reader takes it
  shared and holds it ``hold`` seconds. Logs "W|R enter leave fencing_token".

Times are time.monotonic_ns(): one clock for every process of the machine.
"""

from __future__ import annotations

import json
import os
import random
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
    hold, ttl, timeout = config.get("hold", 0.005), config.get("ttl", 30_000), config.get("timeout", 120_000)
    Path(config["ready_dir"], str(os.getpid())).write_text("ready")
    go, deadline = Path(config["go"]), time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go within 120 s")
        time.sleep(0.005)

    rng = random.Random(os.getpid())
    lines = []
    for _ in range(config["iterations"]):
        if config["mode"] == "semaphore":
            kind, options = "S", {"limit": config["limit"]}
        else:
            writer = rng.randrange(config.get("writer_every", 3)) == 0
            kind, options = ("W", {}) if writer else ("R", {"shared": True})
        with backend.lock(config["key"], ttl, timeout=timeout, **options) as lease:
            enter = time.monotonic_ns()
            if kind == "W":
                counter = Path(config["counter"])
                value = int(counter.read_text() or 0)
                time.sleep(hold)  # widen the race window
                counter.write_text(str(value + 1))
            else:
                time.sleep(hold)
            leave = time.monotonic_ns()
        lines.append(f"{kind} {enter} {leave} {lease.fencing_token}\n")
    with open(config["log"], "a") as log:
        log.write("".join(lines))


if __name__ == "__main__":
    main()
