"""A worker process of the fenced-write tests (tests/surfaces/test_fencing.py).

Usage: python -m tests.support.fencing_worker CONFIG_JSON (the test databases are named in
DJANGO_LOCKS_TEST_DB_NAMES, see tests/settings.py).

Modes (CONFIG["mode"]):
- "pause": take ``key`` on lock alias ``alias`` for ``ttl`` ms and print the lease as JSON;
  then wait for a line on stdin (the test stops this process meanwhile, past the ttl), and
  try each operation of ``ops`` (``update``, ``save``, ``delete``) on the Document named
  ``name`` in database ``db``, printing one JSON line per operation: its outcome, and for a
  refusal the error's class, message and tokens.
- "contend": ``iterations`` times take ``key`` (waiting), pause a random time up to
  ``pause_max`` seconds (longer than the ttl at times: a holder paused past its ttl), then
  write the Documents named in ``names``: all of them through one fenced update, or one of
  them (loaded first) through a fenced save, at random; in the same transaction, log each
  document written (WriteLog); print a JSON summary.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time


def main() -> None:
    config = json.loads(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.db import transaction

    from django_locks import locks
    from django_locks.exceptions import LockNotHeldError
    from django_locks.fencing import StaleLeaseError
    from tests.support.fencedapp.models import Document, WriteLog

    backend = locks[config["alias"]]
    db, name, ttl = config["db"], config.get("name"), config["ttl"]

    if config["mode"] == "pause":
        lease = backend.lock(config["key"], ttl, timeout=30_000, correlation_id="paused")
        print(json.dumps({"fencing_token": lease.fencing_token, "pid": os.getpid()}), flush=True)
        sys.stdin.readline()  # the test stops this process before this line comes
        for op in config["ops"]:
            try:
                if op == "update":
                    result = Document.objects.using(db).fenced(lease).filter(name=name).update(
                        body=f"stale update {lease.fencing_token}")
                elif op == "save":
                    document = Document.objects.using(db).get(name=name)
                    document.body = f"stale save {lease.fencing_token}"
                    document.save(fence=lease, using=db)
                    result = 1
                else:
                    result = Document.objects.using(db).fenced(lease).filter(name=name).delete()[0]
                print(json.dumps({"op": op, "outcome": "written", "rows": result}), flush=True)
            except StaleLeaseError as e:
                print(json.dumps({
                    "op": op, "outcome": type(e).__name__, "message": str(e),
                    "lock_not_held": isinstance(e, LockNotHeldError),
                    "fencing_token": e.fencing_token, "newer": e.newer_fencing_token,
                }), flush=True)
        return

    rng = random.Random(config.get("seed", os.getpid()))
    accepted = refused = 0
    for _ in range(config["iterations"]):
        lease = backend.lock(config["key"], ttl, timeout=60_000)
        try:
            time.sleep(rng.uniform(0, config["pause_max"]))  # the workload's pause: GC, a slow call
            body = f"{lease.fencing_token} {os.getpid()}"
            # Load, then save in a transaction of its own (on SQLite a transaction that reads
            # before it writes fails at its first write if another connection wrote meanwhile).
            names = config["names"]
            document = None
            if rng.random() < 0.5:
                document = Document.objects.using(db).get(name=rng.choice(names))
            try:
                with transaction.atomic(using=db):
                    if document is None:
                        fenced = Document.objects.using(db).fenced(lease)
                        assert fenced.filter(name__in=names).update(body=body) == len(names)
                        written = names
                    else:
                        document.body = body
                        document.save(fence=lease, using=db)
                        written = [document.name]
                    WriteLog.objects.using(db).bulk_create([
                        WriteLog(document=each, fencing_token=lease.fencing_token, pid=os.getpid())
                        for each in written])
                accepted += 1
            except StaleLeaseError:
                refused += 1
        finally:
            try:
                lease.release()
            except LockNotHeldError:
                pass  # lost while paused: the fence is what protected the row
    print(json.dumps({"accepted": accepted, "refused": refused, "pid": os.getpid()}), flush=True)


if __name__ == "__main__":
    main()
