"""One worker process of a contended run: ``python -m benchmarks.contender CONFIG_JSON``.

Sets up Django and the row, says "ready" on stdout, reads the common start and end times
(JSON, one line on stdin), waits for the start, then until the end takes the lock, spins for
the critical section, releases; writes "acquired released pid" (time.monotonic_ns, one clock for
all processes of the machine) and the pid per section to CONFIG["log"]. The async rows run
the same loop as one coroutine on an event loop (their waits hold no thread)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


def spin(section_ns: int) -> tuple[int, int]:
    """The critical section, busy (no sleep granularity): (acquired, released) times."""
    acquired = time.monotonic_ns()
    while time.monotonic_ns() - acquired < section_ns:
        pass
    return acquired, time.monotonic_ns()


def main() -> None:
    config = json.loads(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    from benchmarks.impls import contended, is_async

    acquire, release = contended(config.get("mode_row", config["row"]), config["key"])
    section_ns = int(config.get("worker_section_ms", config["section_ms"]) * 1_000_000)
    print("ready", flush=True)
    times = json.loads(sys.stdin.readline())
    start, end = times["start_ns"], times["end_ns"]
    records = []
    while time.monotonic_ns() < start:
        time.sleep(0.0005)
    if "mode_row" not in config and is_async(config["row"]):

        async def run() -> None:
            while time.monotonic_ns() < end:
                handle = await acquire()
                acquired, released = spin(section_ns)
                await release(handle)
                records.append(f"{acquired} {released} {os.getpid()}\n")

        asyncio.run(run())
    else:
        while time.monotonic_ns() < end:
            requested = time.monotonic_ns()
            handle = acquire()
            acquired, released = spin(section_ns)
            release(handle)
            records.append(f"{acquired} {released} {os.getpid()} {requested}\n")
    with open(config["log"], "a") as log:
        log.write("".join(records))


if __name__ == "__main__":
    main()
