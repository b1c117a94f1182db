"""The deployment tier: locks under the servers users deploy with.

Each test starts its servers itself, on a spare loopback port, in a process group of its
own (stopped by that group: SIGTERM, then SIGKILL; the master also dies with the test
run), and checks, from what the locked code recorded, that no two holders ever ran at
once: a racy counter in the database (read, pause, write) that loses no update, the
``time.monotonic_ns()`` intervals of the critical sections (one clock for every process
of the machine) that never overlap, and fencing tokens that rise in that order.

- gunicorn ``--preload``, sync workers and gthread workers, serving ``lock_view`` views;
  gunicorn ``--preload`` with uvicorn's worker, serving the async view;
- uvicorn with 2 workers, serving an ``async def`` view under ``lock_view``;
- a Celery worker with the prefork pool (Redis broker), running a ``locked`` task
  enqueued a few hundred times at once on a few keys.

gunicorn's master (preloaded) and Celery's (``worker_init``) use the lock before they
fork (:mod:`tests.support.deploy.warmup`): the children inherit whatever django_locks opened
there. The numbers of each run are in the terminal summary ("deployment tier").
Select or skip the tier with ``-m deployment`` / ``-m "not deployment"``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from tests import proof
from tests.helpers import ROOT, free_port, subprocess_env, wait_until
from tests.support.deploy import counter, warmup

pytestmark = pytest.mark.deployment

#: Requests per server run (half try-once, half waiting), sent by CONCURRENCY threads.
REQUESTS = 300
CONCURRENCY = 16
#: Celery: tasks enqueued at once, spread over KEYS keys.
TASKS = 240
KEYS = 4
#: How long the tasks may take, all told (s): a passing run takes a few seconds.
TASKS_WITHIN = 60
#: The Redis database of the Celery broker and results (keys under a prefix of the run's own).
BROKER_DB = 1


def _present(*aliases: str) -> list[str]:
    return [alias for alias in aliases if alias in counter.ALIASES]


# ----------------------------------------------------------------------------- servers

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_CHATTER = re.compile(r": (DEBUG|INFO)/")


class Server:
    """A server and its workers in a process group of their own (the master's pid is the
    group's id). Stopped by the group: SIGTERM, then SIGKILL; the master is killed with
    the test run if that dies first."""

    def __init__(self, name: str, argv: list[str], directory: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.pid = self.process.pid

    @property
    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of its log, without the chatter of work that went well (DEBUG
        and INFO lines), so that warnings, errors and tracebacks show."""
        kept = [line for line in self.log().splitlines() if not _CHATTER.search(line)]
        return f"--- {self.name} (pid {self.pid}), last {lines} lines of its log:\n" + "\n".join(
            kept[-lines:])

    def members(self) -> list[int]:
        """The live (not zombie) processes of the group."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, _ppid, pgrp = stat[stat.rfind(")") + 2:].split()[:3]
            if int(pgrp) == self.pid and state != "Z":
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self.process is None:
            return
        for sig, seconds in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                wait_until(lambda: self.process.poll() is not None and not self.members(), seconds,
                           0.02, error=TimeoutError)
                break
            except TimeoutError:
                pass
        left = self.members()
        self.process.wait(timeout=10)
        self.process = None
        if left:
            raise RuntimeError(f"{self.name}: processes {left} of group {self.pid} outlived SIGKILL")


@pytest.fixture
def servers(tmp_path) -> Iterator[Callable[..., Server]]:
    """Starts servers; stops every one it started when the test ends, however it ends."""
    started: list[Server] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> Server:
        server = Server(name, argv, tmp_path, env)
        started.append(server)
        server.start()
        return server

    yield start
    errors = []
    for server in reversed(started):
        try:
            server.stop()
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def counter_table() -> Iterator[Callable[[str, list[str]], None]]:
    """Creates the counter table (rows at 0) in a database; drops it after the test."""
    created: list[str] = []

    def create(using: str, names: list[str]) -> None:
        counter.create(using, names)
        created.append(using)

    yield create
    for using in created:
        counter.drop(using)


def wait_serving(server: Server, port: int, seconds: float = 60) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def serving() -> bool:
        if server.exited:
            pytest.fail(f"{server.name} exited with {server.process.returncode} before serving\n"
                        f"{server.log_tail()}")
        try:
            with opener.open(f"http://127.0.0.1:{port}/deploy/ping/", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(serving, seconds, 0.02, error=TimeoutError)
    except TimeoutError:
        pytest.fail(f"{server.name} did not serve within {seconds} s\n{server.log_tail()}")


def wait_in_log(server: Server, pattern: re.Pattern[str], seconds: float = 60) -> None:
    def found() -> bool:
        if server.exited:
            pytest.fail(f"{server.name} exited with {server.process.returncode}\n{server.log_tail()}")
        return bool(pattern.search(server.log()))

    try:
        wait_until(found, seconds, 0.02, error=TimeoutError)
    except TimeoutError:
        pytest.fail(f"{server.name}: {pattern.pattern!r} not in its log within {seconds} s\n"
                    f"{server.log_tail()}")


WARMUP_LINE = re.compile(r"django_locks deploy warm-up: alias=(\S+) pid=(\d+) waited_ms=(\d+) "
                         r"awaited_ms=(\d+)")


def check_master_used_the_lock(server: Server, alias: str) -> None:
    """The premise of a fork test: the master itself took the lock, waiting for it (sync
    and async), before it forked the workers."""
    lines = [m for m in WARMUP_LINE.finditer(server.log())
             if m[1] == alias and int(m[2]) == server.pid]
    assert lines, f"the master (pid {server.pid}) did not use {alias!r} before forking\n{server.log_tail()}"
    waited, awaited = int(lines[0][3]), int(lines[0][4])
    least = warmup.HELD_FOR * 1000 / 2
    assert waited >= least and awaited >= least, (
        f"the master's waiting acquisitions did not wait ({waited} ms, {awaited} ms)")


# ----------------------------------------------------------------------------- requests


def hammer(url_of: Callable[[str], str], requests: int = REQUESTS) -> list[dict[str, Any]]:
    """``requests`` GETs from CONCURRENCY threads, alternating the "try" and "wait"
    flavors; each answer as {flavor, status, body, retry_after}."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def one(i: int) -> dict[str, Any]:
        flavor = "wait" if i % 2 else "try"
        answer: dict[str, Any] = {"flavor": flavor, "retry_after": None}
        try:
            with opener.open(url_of(flavor), timeout=60) as response:
                answer.update(status=response.status, body=response.read().decode())
        except urllib.error.HTTPError as e:
            answer.update(status=e.code, body=e.read().decode(errors="replace"),
                          retry_after=e.headers.get("Retry-After"))
        except OSError as e:
            answer.update(status=0, body=f"{type(e).__name__}: {e}")
        return answer

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(one, range(requests)))


def critical_section_problems(records: list[dict[str, Any]], final: int) -> tuple[int, list[str]]:
    """One key's critical sections (enter, leave, fencing, value): the overlaps, and what
    is wrong with them."""
    records = sorted(records, key=lambda r: r["enter"])
    problems = []
    overlaps = sum(1 for a, b in pairwise(records) if b["enter"] < a["leave"])
    if overlaps:
        problems.append(f"{overlaps} critical sections began before the previous one ended")
    missing = sum(1 for r in records if r["fencing"] < 0)
    if missing:
        problems.append(f"{missing} holders found no holder of their own lock (get_lock: None)")
    falling = sum(1 for a, b in pairwise(records) if not a["fencing"] < b["fencing"])
    if falling:
        problems.append(f"fencing tokens did not rise in critical-section order ({falling} times)")
    seen = [r["value"] for r in records]
    if len(set(seen)) < len(seen):
        problems.append(f"{len(seen) - len(set(seen))} counter values written twice: two holders "
                        "read the same value (lost updates)")
    if final < len(records):
        problems.append(f"the counter is {final} after {len(records)} increments: lost updates")
    elif final > len(records):
        problems.append(f"the counter is {final} after {len(records)} reported increments: "
                        f"{final - len(records)} done by calls that then failed or never answered")
    return overlaps, problems


def check_requests(server: Server, label: str, alias: str, answers: list[dict[str, Any]],
                   final: int, seconds: float, *, workers_at_least: int = 1) -> None:
    statuses = Counter(answer["status"] for answer in answers)
    served = [answer for answer in answers if answer["status"] == 200]
    records = [json.loads(answer["body"]) for answer in served]
    pids = {record["pid"] for record in records}
    overlaps, problems = critical_section_problems(records, final)
    locked = [answer for answer in answers if answer["status"] == 423]
    run = {"server": label, "alias": alias, "requests": len(answers), "200": len(served),
           "423": len(locked), "423_of_waiting": sum(a["flavor"] == "wait" for a in locked),
           "other": len(answers) - len(served) - len(locked), "worker_pids": len(pids),
           "overlaps": overlaps, "seconds": round(seconds, 1)}
    proof.record_deployment(run)
    others = [(a["flavor"], a["status"], a["body"][:300]) for a in answers if a["status"] not in (200, 423)]
    if others:
        problems.append(f"{len(others)} answers neither 200 nor 423 {dict(statuses)}, e.g. {others[:3]}")
    if not served:
        problems.append("no request got the lock")
    if run["423_of_waiting"]:
        problems.append(f"{run['423_of_waiting']} requests that wait up to 20 s got 423")
    if any(not (a["retry_after"] or "").isdigit() for a in locked):
        problems.append("a 423 without a Retry-After")
    if server.pid in pids:
        problems.append("the master answered a request (not a worker)")
    if len(pids) < workers_at_least:
        problems.append(f"served by {len(pids)} worker processes, expected {workers_at_least} or more")
    if problems:
        pytest.fail(f"{label} on {alias!r}: {run}\n" + "\n".join(problems) + f"\n{server.log_tail()}")


# ----------------------------------------------------------------------------- gunicorn

GUNICORN_WORKERS = {
    "sync": ["--worker-class", "sync", "--workers", "4"],
    "gthread": ["--worker-class", "gthread", "--workers", "2", "--threads", "4"],
}


def _gunicorn(servers, label: str, alias: str, app: str, options: list[str], port: int) -> Server:
    return servers(label, [
        sys.executable, "-m", "gunicorn", app, "--preload", *options,
        "--bind", f"127.0.0.1:{port}", "--timeout", "60", "--graceful-timeout", "5",
        "--log-level", "warning", "--error-logfile", "-",
    ], subprocess_env(**{warmup.ENV: alias}))


@pytest.mark.parametrize(("worker", "lock_alias"), [
    *(("sync", alias) for alias in _present("postgres", "mysql", "django_redis", "redis")),
    *(("gthread", alias) for alias in _present("postgres", "mysql", "redis")),
])
def test_gunicorn_preload(worker, lock_alias, counter_table, servers):
    """gunicorn --preload: the master imported the app and used the lock, then forked
    the workers; a sync lock_view increments the counter under the lock."""
    using = counter.database_of(lock_alias)
    counter_table(using, [lock_alias])
    options = GUNICORN_WORKERS[worker]
    port, started = free_port(), time.monotonic()
    label = f"gunicorn-{worker}"
    server = _gunicorn(servers, label, lock_alias, "tests.support.deploy.wsgi:application", options, port)
    wait_serving(server, port)
    check_master_used_the_lock(server, lock_alias)
    answers = hammer(lambda flavor: f"http://127.0.0.1:{port}/deploy/{lock_alias}/sync/{flavor}/")
    final = counter.values(using)[lock_alias]
    server.stop()
    # Four sync workers cannot all be idle while 16 requests wait on a key: several serve.
    check_requests(server, label, lock_alias, answers, final, time.monotonic() - started,
                   workers_at_least=2 if worker == "sync" else 1)


@pytest.mark.parametrize("lock_alias", _present("postgres", "django_redis"))
def test_gunicorn_preload_uvicorn_worker(lock_alias, counter_table, servers):
    """gunicorn --preload with uvicorn's worker class: forked workers, each with an event
    loop, serving the async view under lock_view."""
    using = counter.database_of(lock_alias)
    counter_table(using, [lock_alias])
    port, started = free_port(), time.monotonic()
    label = "gunicorn-uvicorn-worker"
    server = _gunicorn(servers, label, lock_alias, "tests.support.deploy.asgi:application",
                       ["--worker-class", "uvicorn.workers.UvicornWorker", "--workers", "2"], port)
    wait_serving(server, port)
    check_master_used_the_lock(server, lock_alias)
    answers = hammer(lambda flavor: f"http://127.0.0.1:{port}/deploy/{lock_alias}/async/{flavor}/")
    final = counter.values(using)[lock_alias]
    server.stop()
    check_requests(server, label, lock_alias, answers, final, time.monotonic() - started)


# ----------------------------------------------------------------------------- uvicorn


@pytest.mark.parametrize("lock_alias", _present("postgres", "redis"))
def test_uvicorn_workers(lock_alias, counter_table, servers):
    """uvicorn --workers 2 (spawned workers): an ``async def`` view under lock_view."""
    using = counter.database_of(lock_alias)
    counter_table(using, [lock_alias])
    port, started = free_port(), time.monotonic()
    server = servers("uvicorn", [
        sys.executable, "-m", "uvicorn", "tests.support.deploy.asgi:application", "--workers", "2",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ], subprocess_env())
    wait_serving(server, port)
    answers = hammer(lambda flavor: f"http://127.0.0.1:{port}/deploy/{lock_alias}/async/{flavor}/")
    final = counter.values(using)[lock_alias]
    server.stop()
    check_requests(server, "uvicorn", lock_alias, answers, final, time.monotonic() - started)


# ----------------------------------------------------------------------------- Celery


@pytest.fixture
def celery_broker() -> Iterator[dict[str, str]]:
    """The run's own queue and key prefix on Redis database BROKER_DB; its keys are
    deleted after the test."""
    run = uuid.uuid4().hex[:12]
    url = urllib.parse.urlsplit(settings.REDIS_URL)._replace(path=f"/{BROKER_DB}").geturl()
    names = {"broker_url": url, "queue": f"django_locks_deploy{settings.RUN_SUFFIX}_{run}",
             "prefix": f"django_locks_deploy{settings.RUN_SUFFIX}_{run}:", "run": run}
    yield names
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        for name in client.scan_iter(match=f"{names['prefix']}*", count=1000):
            client.delete(name)
    finally:
        client.close()


@pytest.mark.parametrize("lock_alias", _present("postgres", "mysql", "django_redis"))
def test_celery_prefork(lock_alias, counter_table, celery_broker, servers):
    """A Celery worker, prefork pool of 4 (forked after worker_init used the lock), runs a
    ``locked`` task enqueued TASKS times at once over KEYS keys: per key, never two at once."""
    from celery import Celery
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tests.support.deploy import celery_app

    keys = [f"k{i}" for i in range(KEYS)]
    using = counter.database_of(lock_alias)
    counter_table(using, [f"{lock_alias}:{key}" for key in keys])
    started = time.monotonic()
    worker = servers("celery", [
        sys.executable, "-m", "celery", "-A", "tests.support.deploy.celery_app", "worker",
        "--pool", "prefork", "--concurrency", "4", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"deploy-{celery_broker['run']}@%h",
    ], subprocess_env(**{
        warmup.ENV: lock_alias, celery_app.BROKER_ENV: celery_broker["broker_url"],
        celery_app.QUEUE_ENV: celery_broker["queue"], celery_app.PREFIX_ENV: celery_broker["prefix"],
    }))
    wait_in_log(worker, re.compile(r"\bready\."))
    check_master_used_the_lock(worker, lock_alias)

    client = Celery("django_locks_deploy_client", set_as_current=False)
    client.conf.update(celery_app.config(celery_broker["broker_url"], celery_broker["queue"],
                                         celery_broker["prefix"]))
    try:
        results = [client.send_task(f"deploy.increment.{lock_alias}", kwargs={"key": keys[i % KEYS]})
                   for i in range(TASKS)]
        deadline = time.monotonic() + TASKS_WITHIN
        outcomes: list[Any] = []
        for result in results:
            try:
                outcomes.append(result.get(timeout=max(deadline - time.monotonic(), 0.1),
                                           propagate=False))
            except CeleryTimeout:
                break
    finally:
        client.close()
    finals = counter.values(using)
    worker.stop()

    failed = [outcome for outcome in outcomes if not isinstance(outcome, dict)]
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for outcome in outcomes:
        if isinstance(outcome, dict):
            by_key[outcome["key"]].append(outcome)
    problems, overlaps = [], 0
    if len(outcomes) < TASKS:
        problems.append(f"only {len(outcomes)} of {TASKS} tasks done within {TASKS_WITHIN} s")
    for key in keys:
        key_overlaps, key_problems = critical_section_problems(by_key[key], finals[f"{lock_alias}:{key}"])
        overlaps += key_overlaps
        problems += [f"key {key}: {problem}" for problem in key_problems]
    pids = {outcome["pid"] for outcome in outcomes if isinstance(outcome, dict)}
    run = {"server": "celery-prefork", "alias": lock_alias, "tasks": TASKS, "keys": KEYS,
           "done": len(outcomes), "failed": len(failed), "worker_pids": len(pids),
           "overlaps": overlaps, "seconds": round(time.monotonic() - started, 1)}
    proof.record_deployment(run)
    if failed:
        problems.append(f"{len(failed)} tasks failed, e.g. {[repr(f)[:300] for f in failed[:3]]}")
    if worker.pid in pids:
        problems.append("the master ran a task (not a pool process)")
    if problems:
        pytest.fail(f"celery prefork on {lock_alias!r}: {run}\n" + "\n".join(problems)
                    + f"\n{worker.log_tail()}")
