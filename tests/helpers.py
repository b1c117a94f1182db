"""Helpers of the test suite (import them from here, not from conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from io import StringIO
from itertools import pairwise
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from django_locks.management.commands.locks import Command

# Re-exported: defined where tests/servers.py, plain Python (the benchmarks use it
# too), can use them.
from tests.servers import free_port as free_port
from tests.support.polling import wait_until as wait_until

ROOT = Path(__file__).resolve().parent.parent

#: "unit": the hermetic tier (scripts/test --unit): no server, MemoryLock and LocMemCache only.
TIER = os.environ.get("DJANGO_LOCKS_TEST_TIER", "full")


def _backend_aliases(suffix: str) -> list[str]:
    return [alias for alias, params in settings.LOCKS.items()
            if params["BACKEND"].endswith(suffix) and alias != "unreachable"]


#: Lock aliases whose storage is a database (alias -> database alias).
DATABASE_ALIASES = {
    alias: settings.LOCKS[alias].get("OPTIONS", {}).get("using", "default")
    for alias in _backend_aliases("DatabaseLock")
}
REDIS_ALIASES = [alias for alias in ("django_redis", "redis") if alias in _backend_aliases("CacheLock")]
SHARED_ALIASES = [*DATABASE_ALIASES, *REDIS_ALIASES]  # shared between processes
ALL_ALIASES = [*SHARED_ALIASES, "memory", "locmem"]


def dead_writer_mark(backend, key: str, mode=None) -> str:
    """Leave the writer mark of a waiter that died mid-wait: one refused attempt of a
    waiting (non-shared) call, driven as the wait loop does, which never gives up (a
    waiter that gives up removes its mark). Returns its token."""
    from django_locks.values import EXCLUSIVE, new_token

    token = new_token()
    attempt = backend._try_acquire(key, token, 60_000, None, mode or EXCLUSIVE, True)
    assert attempt.info is None, "the key was free: nothing to wait for"
    return token


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child process using the test settings and test databases."""
    names = {alias: connections[alias].settings_dict["NAME"] for alias in connections}
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJANGO_LOCKS_TEST_DB_NAMES": json.dumps(names),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60):
    """Run Python code in a fresh process with this project's settings."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=subprocess_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------------------- threads


def in_thread(function, *args, **kwargs):
    """Run ``function`` in another thread and return its result (or raise its error)."""
    box: dict = {}

    def run():
        try:
            box["result"] = function(*args, **kwargs)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the thread did not finish within 30 s"
    if "error" in box:
        raise box["error"]
    return box.get("result")


# ----------------------------------------------------------------------------- manage.py locks


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def locks_cmd(*args: str, **options) -> Result:
    """call_command("locks", ...): its exit code (``CommandError.returncode``) and output."""
    out, err = StringIO(), StringIO()
    try:
        call_command("locks", *args, stdout=out, stderr=err, **options)
    except CommandError as e:
        return Result(e.returncode, out.getvalue(), f"{err.getvalue()}CommandError: {e}\n")
    return Result(0, out.getvalue(), err.getvalue())


def cli(*args: str) -> Result:
    """``manage.py locks ARGS`` as from the command line, in this process (``run_from_argv``):
    exit status and output."""
    out, err = StringIO(), StringIO()
    command = Command(stdout=out, stderr=err)
    code = 0
    try:
        command.run_from_argv(["manage.py", "locks", *args])
    except SystemExit as e:
        code = e.code
    return Result(code, out.getvalue(), err.getvalue())


COMMAND = [sys.executable, "-m", "django", "locks"]


def locks_process(*args: str, env: dict[str, str] | None = None, cwd=ROOT, timeout: float = 60):
    """``manage.py locks ARGS`` as a real process (``python -m django locks``, the test
    settings from the environment): its CompletedProcess."""
    return subprocess.run([*COMMAND, *args], cwd=cwd, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- Redis caches of a test's own


CACHE_BACKENDS = {
    "django_redis": ("django_redis.cache.RedisCache", "SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT"),
    "redis": ("django.core.cache.backends.redis.RedisCache", "socket_timeout", "socket_connect_timeout"),
}


def own_cache(redis_alias: str, url: str, socket_timeout: float = 2.0) -> dict:
    backend, timeout_name, connect_name = CACHE_BACKENDS[redis_alias]
    return {
        "BACKEND": backend,
        "LOCATION": url,
        "OPTIONS": {timeout_name: socket_timeout, connect_name: 1.0},
    }


# ----------------------------------------------------------------------------- contention


def size_from_environment(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"{name} must be a whole number >= 1, not {value!r}")
    return int(value)


def overlaps_in(records: list[tuple[int, int, int]]) -> int:
    return sum(1 for (_, leave, _), (enter, _, _) in pairwise(records) if enter < leave)


def check_history(records: list[tuple[int, int, int]], count: int, expected: int) -> int:
    """Asserts one key's history; returns the overlaps (asserted to be 0)."""
    records = sorted(records)
    overlaps = overlaps_in(records)
    assert len(records) == expected
    assert count == expected, "a racy update was lost: two holders at once"
    assert overlaps == 0, "two holders overlapped"
    fencing = [record[2] for record in records]
    assert all(a < b for a, b in pairwise(fencing)), "fencing tokens did not rise"
    return overlaps


def settled_tokens(monkeypatch) -> list[str]:
    """The tokens handed to the settler from now on (recorded, then handed on as usual)."""
    from django_locks.backends import _bookkeeping

    handed: list[str] = []
    add = _bookkeeping.unsettled.add

    def recording(backend, key, token, ttl):
        handed.append(token)
        add(backend, key, token, ttl)

    monkeypatch.setattr(_bookkeeping.unsettled, "add", recording)
    return handed
