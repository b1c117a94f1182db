"""``python -m benchmarks [--quick] [--listing] [--json FILE] [--out DIR | --update-results]``.

Uncontended acquire + release pairs (one client; rows interleaved round by round) and
contended runs (4 processes on one key, one waiter each: a thread, or a coroutine for the
async rows; critical sections of 0 and 1 ms) with handoff latency and the share of
handoffs the releasing process took back itself. Writes results.json, results.md and
handoff.png to --out (default benchmarks/results/local/, not committed); only
--update-results (a full run) writes the committed benchmarks/results/. Asserts nothing.

``--listing`` runs only the row "listing: first page" (benchmarks/listing.py): the admin's
first page, ``locks list --limit 100`` and ``list_locks(limit=100)`` with 1,000 / 10,000 /
100,000 locks held, next to ``held_locks()``; it writes listing.md and listing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.servers import Topology  # the test suite's server harness

ROOT = Path(__file__).resolve().parent.parent
#: The committed results (README and docs quote them): written by --update-results only.
COMMITTED_RESULTS = ROOT / "benchmarks" / "results"
#: Where a run writes by default: untracked (.gitignore), replaced by each run.
LOCAL_RESULTS = COMMITTED_RESULTS / "local"
#: --quick: the sizes that keep it under a minute on 2 busy cores (rounds, pairs per round,
#: warm-up pairs of the uncontended rows; seconds of each contended and mode run).
QUICK_UNCONTENDED = (3, 60, 20)
FULL_UNCONTENDED = (60, 75, 200)
QUICK_SECONDS, FULL_SECONDS = 0.4, 3.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ----------------------------------------------------------------------------- setup


def ensure_databases() -> None:
    from django.conf import settings

    name = settings.BENCH_DB
    pg, my = settings.DATABASES["postgres"], settings.DATABASES["mysql"]
    import MySQLdb
    import psycopg

    with psycopg.connect(host=pg["HOST"], port=pg["PORT"], user=pg["USER"],
                         password=pg["PASSWORD"] or None, dbname="postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            c.execute(f'CREATE DATABASE "{name}"')
    connection = MySQLdb.connect(host=my["HOST"], port=int(my["PORT"]), user=my["USER"],
                                 passwd=my["PASSWORD"])
    connection.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    connection.close()


def start_servers() -> Topology:
    """The benchmark's own Redis Cluster and PgBouncer (transaction pooling, a pool of 4
    server connections), with the test suite's harness."""
    servers = Topology(os.environ.get("POSTGRES_HOST", "127.0.0.1"),
                       int(os.environ.get("POSTGRES_PORT", "5432")),
                       os.environ.get("POSTGRES_USER", "postgres"))
    try:
        servers.prestart(cluster=True)
        servers.start_pgbouncer("transaction", pool_size=4)
        servers.start_cluster()
    except BaseException:
        servers.stop()
        raise
    return servers


def setup(servers: Topology) -> dict[str, str]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    ensure_databases()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    from benchmarks.impls import DB_ALIASES, ensure_baseline_table, redis_client

    for alias in DB_ALIASES.values():
        call_command("migrate", database=alias, verbosity=0)
    for db in DB_ALIASES:
        ensure_baseline_table(db)
    client = redis_client()
    for prefix in (settings.BENCH_DB, f"{settings.BENCH_DB}_dj"):  # this run's keys only
        for name in client.scan_iter(match=f"{prefix}:*"):
            client.delete(name)

    import sqlite3

    import django as dj

    def version(alias: str, sql: str) -> str:
        with connections[alias].cursor() as cursor:
            cursor.execute(sql)
            return str(cursor.fetchone()[0])

    return {
        "redis": client.info("server")["redis_version"],
        "postgresql": version("postgres", "SHOW server_version"),
        "mariadb/mysql": version("mysql", "SELECT VERSION()"),
        "sqlite": sqlite3.sqlite_version,
        "pgbouncer": servers.pgbouncers["transaction"].admin("SHOW VERSION")[0]["version"],
        "redis cluster": "3 masters + 3 replicas",
        "python": platform.python_version(),
        "django": dj.get_version(),
        "cpu_cores": str(os.cpu_count()),
        "machine": platform.machine(),
    }


# ----------------------------------------------------------------------------- uncontended


def run_uncontended(quick: bool) -> list[dict]:
    from benchmarks.impls import UNCONTENDED

    rounds, ops, warmup = QUICK_UNCONTENDED if quick else FULL_UNCONTENDED
    rows = []
    for group, name, factory in UNCONTENDED:
        pair = factory()
        timed_pairs(pair, warmup, [])
        rows.append({"group": group, "name": name, "pair": pair, "latencies_us": [], "rates": []})
    rng = random.Random(7)
    for _ in range(rounds):
        order = rows[:]
        rng.shuffle(order)  # interleaved: drift and noise hit every row alike
        for row in order:
            started = time.perf_counter_ns()
            timed_pairs(row["pair"], ops, row["latencies_us"])
            row["rates"].append(ops / ((time.perf_counter_ns() - started) / 1e9))
    for row in rows:
        del row["pair"]
        lat = row.pop("latencies_us")
        row.update(median_us=statistics.median(lat), p99_us=percentile(lat, 0.99),
                   pairs_per_s=statistics.median(row.pop("rates")))
    return rows


def timed_pairs(pair: Callable[[], Any], ops: int, latencies: list[float]) -> None:
    """``ops`` pairs, each one's latency (µs) appended. A coroutine function's pairs are
    awaited in one event loop (``asyncio.run`` for the round, not per pair)."""
    if inspect.iscoroutinefunction(pair):
        async def timed() -> None:
            for _ in range(ops):
                t0 = time.perf_counter_ns()
                await pair()
                latencies.append((time.perf_counter_ns() - t0) / 1000)

        asyncio.run(timed())
        return
    for _ in range(ops):
        t0 = time.perf_counter_ns()
        pair()
        latencies.append((time.perf_counter_ns() - t0) / 1000)


# ----------------------------------------------------------------------------- contended


def run_workers(configs: list[dict], seconds: float) -> tuple[list[tuple[int, ...]], int]:
    """One worker process per config, all started together for ``seconds``: the records
    (acquired, released, pid[, requested]) sorted, and the common end (monotonic ns)."""
    row = configs[0]["row"]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log"
        workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.contender",
                                     json.dumps({**config, "log": str(log)})], cwd=ROOT, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                   for config in configs]
        # A common start once every worker has set up Django and its row (however
        # long that takes on a loaded machine), a little ahead for all to see it.
        for worker in workers:
            if not any(line.strip() == "ready" for line in worker.stdout):
                raise SystemExit(f"a worker of {row!r} failed to start ({worker.wait(60)})")
        start = time.monotonic_ns() + int(0.1e9)
        end = start + int(seconds * 1e9)
        for worker in workers:
            worker.stdin.write(json.dumps({"start_ns": start, "end_ns": end}) + "\n")
            worker.stdin.close()
        for worker in workers:
            worker.wait(300)
            if worker.returncode:
                raise SystemExit(f"a worker of {row!r} failed ({worker.returncode})")
        records = sorted(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    return records, end


def most_at_once(records: list[tuple[int, ...]]) -> int:
    """The largest number of critical sections in progress at one time."""
    events = sorted([(r[0], 1) for r in records] + [(r[1], -1) for r in records])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


#: Backends of the shared-lock and semaphore runs (issue 13).
MODE_RUN_ALIASES = ("django_redis", "postgres", "mysql", "sqlite")


def run_modes(quick: bool) -> list[dict]:
    """8 processes on one key with ``limit=4`` next to the same with an exclusive lock
    (critical sections of 1 ms: sections per second, most holders at once); then 7 reader
    processes (shared, 5 ms sections back to back) and one writer (exclusive, 1 ms): the
    writer's waits, which the writer mark bounds."""
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    results = []
    for alias in MODE_RUN_ALIASES[:1] if quick else MODE_RUN_ALIASES:
        for mode in ("limit=4", "limit=1"):
            row = f"{alias} {mode}"
            config = {"row": row, "mode_row": row, "key": f"bench:modes:{row}", "section_ms": 1}
            records, end = run_workers([config] * 8, seconds)
            in_window = [r for r in records if r[0] < end]
            results.append({"name": row, "kind": "semaphore", "processes": 8,
                            "sections_per_s": len(in_window) / seconds,
                            "most_at_once": most_at_once(records)})
            print(f"  {row}, 8 processes: {results[-1]['sections_per_s']:.0f} sections/s, "
                  f"at most {results[-1]['most_at_once']} at once", flush=True)
        key = f"bench:modes:{alias}:rw"
        readers = {"row": f"{alias} shared", "mode_row": f"{alias} shared", "key": key,
                   "section_ms": 5}
        writer = {"row": f"{alias} limit=1", "mode_row": f"{alias} limit=1", "key": key,
                  "section_ms": 1}
        records, end = run_workers([readers] * 7 + [writer], seconds)
        # The writer is the process with the 1 ms sections (the readers' are 5 ms).
        writer_pid = min({r[2] for r in records}, key=lambda pid: statistics.mean(
            r[1] - r[0] for r in records if r[2] == pid))
        waits = [(r[0] - r[3]) / 1e6 for r in records if r[2] == writer_pid]
        reads = [r for r in records if r[2] != writer_pid]
        results.append({"name": f"{alias} 7 readers + 1 writer", "kind": "readers+writer",
                        "processes": 8, "writer_sections": len(waits),
                        "reader_sections_per_s": len(reads) / seconds,
                        "writer_wait_p50_ms": percentile(waits, 0.5) if waits else None,
                        "writer_wait_max_ms": max(waits) if waits else None,
                        "overlaps_with_writer": sum(
                            1 for w in records if w[2] == writer_pid
                            for r in reads if r[0] < w[1] and w[0] < r[1])})
        print(f"  {alias}, 7 readers + 1 writer: {len(waits)} writes, longest writer wait "
              f"{_ms(results[-1]['writer_wait_max_ms'])} ms", flush=True)
    return results


def run_contended(quick: bool) -> list[dict]:
    from benchmarks.impls import CONTENDED, FULL_ONLY

    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    processes = 4
    results = []
    for section_ms in (1,) if quick else (0, 1):  # --quick stays under a minute
        for row in [name for name in CONTENDED if not (quick and name in FULL_ONLY)]:
            config = {"row": row, "key": f"bench:contended:{section_ms}:{row}",
                      "section_ms": section_ms}
            records, end_ns = run_workers([config] * processes, seconds)
            config["end_ns"] = end_ns
            # A handoff: a release, then the next acquisition by *another* process (a waiter).
            # A process re-taking the lock it just released is counted apart: it is what
            # polling locks mostly do, while their waiters sleep.
            pairs = list(pairwise(records))
            overlaps = sum(1 for cur, nxt in pairs if nxt[0] < cur[1])
            handoffs = [max((nxt[0] - cur[1]) / 1e6, 0.0) for cur, nxt in pairs if nxt[2] != cur[2]]
            in_window = [r for r in records if r[0] < config["end_ns"]]
            results.append({
                "name": row, "section_ms": section_ms, "processes": processes,
                "sections_per_s": len(in_window) / seconds,
                "same_process_share": (1 - len(handoffs) / len(pairs)) if pairs else None,
                "handoff_p50_ms": percentile(handoffs, 0.5) if handoffs else None,
                "handoff_p99_ms": percentile(handoffs, 0.99) if handoffs else None,
                "handoff_max_ms": max(handoffs) if handoffs else None,
                "overlaps": overlaps, "handoffs_ms": handoffs,
            })
            result = results[-1]
            p50, retake = result["handoff_p50_ms"], result["same_process_share"]
            print(f"  contended {section_ms} ms {row}: {len(in_window) / seconds:.0f} sections/s, "
                  f"handoff p50 {'n/a (no handoff)' if p50 is None else f'{_ms(p50)} ms'}, "
                  f"re-taken by the releaser {'n/a' if retake is None else f'{retake:.0%}'}", flush=True)
    return results


# ----------------------------------------------------------------------------- report


def ratios(rows: list[dict]) -> list[tuple[str, float, str]]:
    by = {row["name"]: row["median_us"] for row in rows}
    out = []

    def ratio(label: str, a: str, b: str, goal: str) -> None:
        if a in by and b in by:
            out.append((label, by[a] / by[b], goal))

    ratio("CacheLock: Redis Cluster / one Redis (django-redis)", "CacheLock (Redis Cluster, django-redis)",
          "CacheLock (django-redis)", "")
    ratio("Redis Cluster: CacheLock / SET NX PX + EVALSHA", "CacheLock (Redis Cluster, django-redis)",
          "Redis Cluster floor: SET NX PX + EVALSHA", "")
    ratio("postgres: DatabaseLock via PgBouncer / direct",
          "postgres: DatabaseLock via PgBouncer (transaction)", "postgres: DatabaseLock", "")
    for db in ("postgres", "sqlite"):
        ratio(f"{db}: DatabaseLock durable / durable: False", f"{db}: DatabaseLock",
              f"{db}: DatabaseLock, durable: False", "")
    for cache in ("CacheLock (django-redis)", "CacheLock (Django RedisCache)"):
        ratio(f"{cache} / redis-py Lock", cache, "redis-py Lock (django-redis cache.lock)", "<= 0.95")
        ratio(f"{cache} / PING x2", cache, "Redis floor: PING x2", "<= 1.25")
        ratio(f"{cache} / SET NX PX + EVALSHA", cache, "Redis floor: SET NX PX + EVALSHA", "")
    for db in ("postgres", "mysql", "sqlite"):
        ratio(f"{db}: DatabaseLock / same SQL raw", f"{db}: DatabaseLock", f"{db}: DatabaseLock SQL, raw",
              "<= 1.25")
        ratio(f"{db}: baseline / DatabaseLock (speed-up)", f"{db}: django-db-lock-style baseline",
              f"{db}: DatabaseLock", ">= 2")
        ratio(f"{db}: DatabaseLock / SELECT 1 x2", f"{db}: DatabaseLock", f"{db}: floor SELECT 1 x2", "")
        ratio(f"{db}: fenced update / plain update",
              f"{db}: fenced update of one row (DatabaseLock lease, same database)",
              f"{db}: plain update of one row", "")
    for db in ("postgres", "mysql"):
        for mode in ("semaphore (limit 4)", "shared"):
            ratio(f"{db}: DatabaseLock, {mode} / exclusive", f"{db}: DatabaseLock, {mode}",
                  f"{db}: DatabaseLock", "<= 1.25")
    ratio("CacheLock async / sync pair (django-redis, async with alock / with lock)",
          "CacheLock (django-redis), async alock", "CacheLock (django-redis), with lock", "<= 1.2")
    ratio("postgres: DatabaseLock async / sync pair (psycopg 3, async with alock / with lock)",
          "postgres: DatabaseLock, async alock", "postgres: DatabaseLock, with lock", "<= 1.2")
    ratio("MemoryLock / threading.Lock", "MemoryLock", "threading.Lock", "")
    return out


def goal(row: dict, rows: list[dict], judged: bool = True) -> str:
    """The row's goals (issue 14: absolute; issue 22: against an anchor row of ``rows``, the
    same run and section) and whether this run met them (``judged``), or ""."""
    from benchmarks.impls import GOALS, GOALS_VS

    if row["handoff_p50_ms"] is None:
        return ""
    texts, met = [], True
    if row["name"] in GOALS:
        p50, p99, retake = GOALS[row["name"]]
        met = row["handoff_p50_ms"] < p50 and row["handoff_p99_ms"] < p99
        texts.append(f"p50 < {p50:g}, p99 < {p99:g}")
        if retake is not None:
            met = met and row["same_process_share"] < retake
            texts[-1] += f", re-take < {retake:.0%}"
    anchor_name, retake = GOALS_VS.get(row["name"], (None, None))
    anchor = next((r for r in rows if r["name"] == anchor_name
                   and r["section_ms"] == row["section_ms"] and r["handoff_p50_ms"] is not None), None)
    if anchor is not None:
        met = (met and row["handoff_p50_ms"] <= anchor["handoff_p50_ms"]
               and row["handoff_p99_ms"] <= anchor["handoff_p99_ms"])
        texts.append(f"p50, p99 <= {anchor_name}")
        if retake is not None:
            met = met and row["same_process_share"] < retake
            texts[-1] += f", re-take < {retake:.0%}"
    if not texts:
        return ""
    text = "; ".join(texts)
    if not judged:
        return f"{text} (not judged: --quick)"
    return f"{text}: {'met' if met else 'missed'}"


def holders_goal(row: dict, judged: bool = True) -> str:
    """A semaphore row's goal (issue 22): its ``limit`` holders at once under 8 processes."""
    limit = int(row["name"].rsplit("limit=", 1)[1])
    text = f"{limit} at once"
    if not judged:
        return f"{text} (not judged: --quick)"
    return f"{text}: {'met' if row['most_at_once'] == limit else 'missed'}"


def _ms(value: float | None) -> str:
    """Milliseconds for a table or a progress line: three significant decimals below
    10 ms (0.471), one below 100 (12.3), none above (268)."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def quick_caveat() -> str:
    rounds, ops, _ = QUICK_UNCONTENDED
    return (f"A --quick run: {rounds} rounds of {ops} pairs per row and {QUICK_SECONDS:g} s per contended "
            "run. Its ratios and tails rest on few samples on a machine that may be busy: a ratio "
            "can be off by half or more (a row below its own raw SQL is noise), and its goals are "
            "not judged. Compare full runs (scripts/bench).")


def markdown(env: dict, uncontended: list[dict], contended: list[dict], modes: list[dict],
             quick: bool = False) -> str:
    lines = ["Servers: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             *([f"**{quick_caveat()}**", ""] if quick else []),
             "| uncontended acquire + release (update rows: one update) | median µs | p99 µs | pairs/s |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['median_us']:.1f} | {r['p99_us']:.1f} | {r['pairs_per_s']:,.0f} |"
              for r in uncontended]
    if quick:
        lines += ["", f"Ratios of a --quick run ({QUICK_UNCONTENDED[0]} x {QUICK_UNCONTENDED[1]} pairs "
                      "per row): indicative only, see above."]
    lines += ["", "| ratio (medians) | value | goal |", "|---|---:|---|"]
    lines += [f"| {label} | {value:.2f} | {f'{goal} (not judged: --quick)' if quick and goal else goal} |"
              for label, value, goal in ratios(uncontended)]
    lines += ["", "| contended: 4 processes, one key | section | sections/s | re-taken by the "
              "releaser | handoff to a waiter p50 ms | p99 ms | max ms | goal |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['name']} | {r['section_ms']} ms | {r['sections_per_s']:,.0f} | "
              f"{'n/a' if r['same_process_share'] is None else format(r['same_process_share'], '.0%')} | "
              f"{_ms(r['handoff_p50_ms'])} | {_ms(r['handoff_p99_ms'])} | {_ms(r['handoff_max_ms'])} | "
              f"{goal(r, contended, judged=not quick)} |"
              for r in contended]
    semaphores = [r for r in modes if r["kind"] == "semaphore"]
    lines += ["", "| shared locks and semaphores: 8 processes, one key, 1 ms sections | "
              "sections/s | most holders at once | goal |", "|---|---:|---:|---|"]
    lines += [f"| {r['name']} | {r['sections_per_s']:,.0f} | {r['most_at_once']} | "
              f"{holders_goal(r, judged=not quick)} |" for r in semaphores]
    lines += ["", "| 7 readers (shared, 5 ms sections) + 1 writer (exclusive, 1 ms) | writes | "
              "writer wait p50 ms | longest ms | reader sections/s | a reader with the writer |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['writer_sections']} | {_ms(r['writer_wait_p50_ms'])} | "
              f"{_ms(r['writer_wait_max_ms'])} | {r['reader_sections_per_s']:,.0f} | "
              f"{r['overlaps_with_writer']} |" for r in modes if r["kind"] == "readers+writer"]
    return "\n".join(lines) + "\n"


def plot(contended: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.impls import CONTENDED, is_async

    rows = [r for r in contended if r["section_ms"] == 1 and r["handoffs_ms"]]
    figure, axis = plt.subplots(figsize=(10, 6.5))
    # Thirteen-odd rows: ten clearly different colours (tab10), and a marker of its own per
    # row, so that no two rows look alike (tab20's pairs are shades of one hue); async
    # rows dashed.
    colors = plt.get_cmap("tab10").colors
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "8", "H"]
    for index, row in enumerate(rows):
        values = sorted(max(v, 1e-3) for v in row["handoffs_ms"])
        label = f"{row['name']} ({len(values)} handoffs; releaser re-took {row['same_process_share']:.0%})"
        style = "--" if row["name"] in CONTENDED and is_async(row["name"]) else "-"  # async: dashed
        axis.plot(values, [(i + 1) / len(values) for i in range(len(values))], linestyle=style,
                  label=label, color=colors[index % len(colors)], marker=markers[index % len(markers)],
                  markevery=max(1, len(values) // 8), markersize=5, linewidth=1.4)
    axis.set_xscale("log")
    axis.set_xlabel("handoff latency, a release to the next acquisition by a waiter (ms, log scale)")
    axis.set_ylabel("fraction of handoffs")
    axis.set_title("Contended handoff: 4 processes, one key, 1 ms critical section")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def run_listing_row(args: argparse.Namespace) -> None:
    """``--listing``: the listing row alone (no Redis Cluster, no PgBouncer to start)."""
    from benchmarks import listing

    out = COMMITTED_RESULTS if args.update_results else args.out or LOCAL_RESULTS
    began = time.monotonic()
    env = listing.setup()
    sizes = listing.SIZES[:2] if args.quick else listing.SIZES
    print(f"Listing: first page, {', '.join(f'{n:,}' for n in sizes)} locks held...", flush=True)
    rows = listing.run_listing(sizes)
    table = listing.markdown(rows)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "listing.md").write_text(table)
    data = {"environment": env, "quick": args.quick, "listing": rows}
    (out / "listing.json").write_text(json.dumps(data, indent=1))
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    print(f"Wrote {out / 'listing.md'} and listing.json [{time.monotonic() - began:.0f} s]")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smaller run, under a minute (its ratios are indicative only)")
    parser.add_argument("--json", type=Path, help="write every figure to this file too")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None,
                       help=f"where results.md, results.json and handoff.png go (default "
                            f"{LOCAL_RESULTS.relative_to(ROOT)}/, not committed)")
    where.add_argument("--update-results", action="store_true",
                       help=f"write them to {COMMITTED_RESULTS.relative_to(ROOT)}/, the committed "
                            "results that README and docs quote (a full run only)")
    parser.add_argument("--listing", action="store_true",
                        help="only the row \"listing: first page\" (1,000 / 10,000 / 100,000 locks held; "
                             "--quick: 1,000 / 10,000): writes listing.md and listing.json")
    args = parser.parse_args()
    if args.update_results and args.quick:
        parser.error("--update-results needs a full run: the committed results are not --quick ones")
    if args.listing:
        run_listing_row(args)
        return
    out = COMMITTED_RESULTS if args.update_results else args.out or LOCAL_RESULTS
    began = time.monotonic()

    def stage(text: str) -> None:
        print(f"{text} [{time.monotonic() - began:.0f} s]", flush=True)

    servers = start_servers()
    try:
        env = setup(servers)
        print("Servers and machine: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
        if args.quick:
            print(quick_caveat(), flush=True)
        stage("Uncontended pairs (interleaved rounds)...")
        uncontended = run_uncontended(args.quick)
        stage("Contended runs (4 processes)...")
        contended = run_contended(args.quick)
        stage("Shared locks and semaphores (8 processes)...")
        modes = run_modes(args.quick)
        stage("Done")
    finally:
        servers.stop()
    table = markdown(env, uncontended, contended, modes, quick=args.quick)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    plot(contended, out / "handoff.png")
    data = {"environment": env, "quick": args.quick, "uncontended": uncontended,
            "ratios": [{"ratio": label, "value": value, "goal": goal}
                       for label, value, goal in ratios(uncontended)],
            "contended": contended, "modes": modes}
    (out / "results.json").write_text(json.dumps(data, indent=1))
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    print(f"Wrote {out / 'results.md'}, results.json and handoff.png [{time.monotonic() - began:.0f} s]")


if __name__ == "__main__":
    main()
