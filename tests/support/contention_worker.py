"""A worker process of the contention and fault tests.

Usage: python -m tests.support.contention_worker CONFIG_JSON
The test databases are named in DJANGO_LOCKS_TEST_DB_NAMES (see tests/settings.py).

Modes (CONFIG["mode"]):
- "one" (default): ``iterations`` times take ``key`` (a semaphore of ``limit``, or shared
  with ``shared``, when given), do a deliberately racy read-modify-write of the file
  ``counter``, and log "enter exit fencing_token".
- "many": the same over ``keys`` chosen at random, one counter file per key in
  ``counter_dir``; logs "key enter exit fencing_token".
- "mix": ``iterations`` times take ``key`` exclusively (a writer, with probability
  ``writers``: the racy read-modify-write of ``counter``) or shared (a reader, who only
  holds it ``hold`` seconds); logs "enter exit fencing_token w|r".
- "hold": take ``key`` for ``ttl`` ms, print the lease as JSON, then wait on stdin
  (to be killed or paused); on a line "go", extend then release, printing each outcome.
Times are time.monotonic_ns(): one clock for every process of the machine.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path


def racy_increment(counter: Path, hold: float) -> None:
    value = int(counter.read_text() or 0) if counter.exists() else 0
    time.sleep(hold)  # widen the race window
    counter.write_text(str(value + 1))


def main() -> None:
    config = json.loads(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django_locks import locks
    from django_locks.exceptions import LockError

    backend = locks[config["alias"]]
    mode = config.get("mode", "one")
    hold = config.get("hold", 0.0005)
    ttl, timeout = config.get("ttl", 30_000), config.get("timeout", 120_000)

    if mode == "hold":
        lease = backend.lock(config["key"], ttl, timeout=timeout, correlation_id="worker")
        print(json.dumps({"token": lease.token, "fencing_token": lease.fencing_token,
                          "expires_at": lease.expires_at.isoformat(), "pid": os.getpid()}),
              flush=True)
        if sys.stdin.readline().strip() == "go":
            for operation in (lease.extend, lease.release):
                try:
                    operation()
                    print("ok", flush=True)
                except LockError as e:
                    print(type(e).__name__, flush=True)
        return

    if "barrier" in config:
        # Start together: every worker announces itself, then waits for the test's "go".
        barrier = Path(config["barrier"])
        (barrier / f"ready-{os.getpid()}").touch()
        deadline = time.monotonic() + 120
        while not (barrier / "go").exists():
            if time.monotonic() > deadline:
                sys.exit("no go within 120 s")
            time.sleep(0.002)

    lines = []
    rng = random.Random(config.get("seed", os.getpid()))
    if mode == "mix":
        for _ in range(config["iterations"]):
            writer = rng.random() < config["writers"]
            with backend.lock(config["key"], ttl, timeout=timeout, shared=not writer) as lease:
                enter = time.monotonic_ns()
                if writer:
                    racy_increment(Path(config["counter"]), hold)
                else:
                    time.sleep(config.get("read_hold", hold))
                leave = time.monotonic_ns()
            lines.append(f"{enter} {leave} {lease.fencing_token} {'w' if writer else 'r'}\n")
        with open(config["log"], "a") as log:
            log.write("".join(lines))
        return

    mode_arguments = {"limit": config.get("limit", 1), "shared": config.get("shared", False)}
    for _ in range(config["iterations"]):
        key = rng.choice(config["keys"]) if mode == "many" else config["key"]
        with backend.lock(key, ttl, timeout=timeout, **mode_arguments) as lease:
            enter = time.monotonic_ns()
            if mode == "many":
                racy_increment(Path(config["counter_dir"]) / key, hold)
            else:
                racy_increment(Path(config["counter"]), hold)
            leave = time.monotonic_ns()
        prefix = f"{key} " if mode == "many" else ""
        lines.append(f"{prefix}{enter} {leave} {lease.fencing_token}\n")
    with open(config["log"], "a") as log:
        log.write("".join(lines))


if __name__ == "__main__":
    main()
