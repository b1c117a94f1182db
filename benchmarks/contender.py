"""One worker process of a contended run: ``python -m benchmarks.contender CONFIG_JSON``.

Waits for the common start time, then until the end time takes the lock, spins for the
critical section, releases; writes "acquired released pid" (time.monotonic_ns, one clock for
all processes of the machine) and the pid per section to CONFIG["log"]."""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    config = json.loads(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    from benchmarks.impls import contended

    acquire, release = contended(config["row"], config["key"])
    section_ns = int(config["section_ms"] * 1_000_000)
    start, end = config["start_ns"], config["end_ns"]
    records = []
    while time.monotonic_ns() < start:
        time.sleep(0.0005)
    while time.monotonic_ns() < end:
        handle = acquire()
        acquired = time.monotonic_ns()
        while time.monotonic_ns() - acquired < section_ns:  # busy: no sleep granularity
            pass
        released = time.monotonic_ns()
        release(handle)
        records.append(f"{acquired} {released} {os.getpid()}\n")
    with open(config["log"], "a") as log:
        log.write("".join(records))


if __name__ == "__main__":
    main()
