"""Helpers of the test suite (import them from here, not from conftest)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

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


def wait_until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.005):
    """Poll ``condition`` until it is truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, on a spare port (6379 is never touched)."""

    def __init__(self, tmp: Path, *options: str) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.options = options  # more redis-server options ("--requirepass", "s3cret")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the suite starts its own for fault tests)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp), *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def accepting() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(accepting, timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


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
