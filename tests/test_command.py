"""``manage.py locks`` as a subprocess: output, exit codes, token capture, run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from django_locks import locks
from tests import proof
from tests.helpers import ROOT, subprocess_env, wait_until

COMMAND = [sys.executable, "-m", "django", "locks"]


def locks_cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def snapshot():
    return {alias: locks[alias].held_locks() for alias in ("default", "redis")}


@pytest.fixture(params=["default", "redis"])
def backend_alias(request) -> str:
    return request.param


def test_try_prints_the_token_alone_and_release_uses_it(backend_alias):
    first = locks_cmd("try", "nightly", "--ttl", "60000", "--backend", backend_alias,
                      "--correlation-id", "cron-1")
    assert first.returncode == 0, first.stderr
    token = first.stdout.splitlines()[0]
    info = locks[backend_alias].get_lock("nightly")
    assert token == info.token and info.correlation_id == "cron-1"

    busy = locks_cmd("try", "nightly", "--ttl", "60000", "--backend", backend_alias)
    assert busy.returncode == 1 and busy.stdout == "" and "busy" in busy.stderr

    wrong = locks_cmd("release", "nightly", "--owner", "f" * 32, "--backend", backend_alias)
    assert wrong.returncode == 1 and locks[backend_alias].get_lock("nightly").token == token

    released = locks_cmd("release", "nightly", "--owner", token, "--backend", backend_alias)
    assert released.returncode == 0, released.stderr
    assert locks[backend_alias].get_lock("nightly") is None
    again = locks_cmd("release", "nightly", "--owner", token, "--backend", backend_alias)
    assert again.returncode == 1 and "not held" in again.stderr


def test_token_capture_in_a_shell():
    script = (
        f"TOKEN=$({' '.join(COMMAND)} try nightly --ttl 60000) || exit 9\n"
        f"{' '.join(COMMAND)} release nightly --owner \"$TOKEN\" || exit 8\n"
        "echo released $TOKEN\n"
    )
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1].split()
    assert last[0] == "released" and len(last[1]) == 32


def test_acquire_waits_and_json_output():
    holder = locks["default"].lock("job", 300)
    result = locks_cmd("acquire", "job", "--ttl", "60000", "--timeout", "10000", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"key", "token", "fencing_token", "expires_at"}
    assert data["key"] == "job" and data["fencing_token"] > holder.fencing_token
    assert locks["default"].get_lock("job").token == data["token"]
    timed_out = locks_cmd("acquire", "job", "--ttl", "60000", "--timeout", "200")
    assert timed_out.returncode == 1 and "within 200 ms" in timed_out.stderr


def test_force_release_list_and_purge():
    locks["default"].acquire_lock("cid-x", "a", 60_000, 0)
    listed = locks_cmd("list", "--json")
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)
    assert [(r["key"], r["correlation_id"]) for r in rows] == [("a", "cid-x")]
    table = locks_cmd("list")
    assert "cid-x" in table.stdout and "FENCING TOKEN" in table.stdout
    assert locks_cmd("release", "a", "--force").returncode == 0
    assert locks["default"].get_lock("a") is None
    assert locks_cmd("release", "a", "--force").returncode == 1
    purged = locks_cmd("purge")
    assert purged.returncode == 0 and purged.stdout.startswith("purged ")


@pytest.mark.parametrize(
    "args",
    [
        ["try", "k", "--ttl", "0"],
        ["try", "k", "--ttl", "-5"],
        ["try", "k", "--ttl", "abc"],
        ["try", "k"],
        ["try", "--ttl", "1000"],
        ["acquire", "k", "--ttl", "1000", "--timeout", "-1"],
        ["try", "k", "--ttl", "1000", "--backend", "nope"],
        ["try", "", "--ttl", "1000"],
        ["try", "x" * 256, "--ttl", "1000"],
        ["release", "held"],
        ["release", "held", "--owner", "t", "--force"],
        ["run", "k", "--ttl", "1000"],
        ["run", "k", "--ttl", "1000", "--conflict-exit-code", "300", "--", "true"],
        ["list", "--backend", "nope"],
        ["purge", "--backend", ""],
        ["list", "--json", "extra-argument"],
        ["acquire", "k", "--ttl", "1000", "--correlation-id", "a\nb"],
        ["try", "k\x01", "--ttl", "1000"],  # (NUL cannot be in argv at all)
        ["try", "k", "--ttl", "1.5"],
        ["try", "k", "--ttl", str(10**15)],
        ["nosuch"],
        [],
    ],
)
def test_bad_arguments_exit_2_and_touch_nothing(args):
    locks["default"].acquire_lock(None, "held", 60_000, 0)
    before = snapshot()
    result = locks_cmd(*args)
    proof.record_bad_inputs("manage.py locks")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip()
    assert snapshot() == before


@pytest.mark.parametrize("args", [["try", "k", "--ttl", "1000"], ["list"], ["release", "k", "--force"],
                                  ["run", "k", "--ttl", "1000", "--", "true"]])
def test_backend_down_exits_3(args):
    result = locks_cmd(args[0], "--backend", "unreachable", *args[1:])
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "backend error" in result.stderr


def test_run_exits_with_the_command_status_and_holds_the_lock_meanwhile():
    inner = f"{' '.join(COMMAND)} try job --ttl 1000; echo inner=$?; exit 7"
    result = locks_cmd("run", "job", "--ttl", "60000", "--", "bash", "-c", inner)
    assert result.returncode == 7, result.stderr
    assert "inner=1" in result.stdout  # the lock was held while the command ran
    assert locks["default"].get_lock("job") is None  # and released after


def test_run_conflict_exit_code():
    with locks["default"].lock("job", 60_000):
        assert locks_cmd("run", "job", "--ttl", "1000", "--", "true").returncode == 75
        custom = locks_cmd("run", "job", "--ttl", "1000", "--conflict-exit-code", "9", "--", "true")
        assert custom.returncode == 9 and "busy" in custom.stderr


def test_run_forwards_sigterm_and_releases_after(tmp_path):
    marker = tmp_path / "got-term"
    child = (
        f"trap 'echo term > {marker}; exit 42' TERM; "
        "echo ready; while true; do sleep 0.05; done"
    )
    process = subprocess.Popen([*COMMAND, "run", "job", "--ttl", "60000", "--", "bash", "-c", child],
                               cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    assert locks["default"].get_lock("job") is not None
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(30) == 42
    assert marker.read_text().strip() == "term"
    wait_until(lambda: locks["default"].get_lock("job") is None, timeout=5)
