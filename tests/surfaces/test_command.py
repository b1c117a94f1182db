"""``manage.py locks`` in-process, through ``call_command``: output, exit codes, run.

(The command as a real process, ``manage.py``'s own option handling and signals, are in
test_command_process.py.)
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from django_locks import locks
from django_locks.management.commands.locks import Command
from django_locks.management.supervise import EXIT_LOST, MAX_RENEW_INTERVAL
from tests import proof
from tests.helpers import locks_cmd, subprocess_env, wait_until

#: Hermetic: also in the unit tier (on MemoryLock), except the tests marked servers.
pytestmark = pytest.mark.unit


def snapshot():
    return {alias: locks[alias].held_locks() for alias in ("default", "redis", "memory")}


@pytest.fixture(params=["default", "redis", "memory"])
def backend_alias(request) -> str:
    return request.param


def test_try_prints_the_token_alone_and_release_uses_it(backend_alias):
    first = locks_cmd("try", "nightly", "--ttl", "60000", "--backend", backend_alias,
                      "--correlation-id", "cron-1")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 1
    token = first.stdout.strip()
    info = locks[backend_alias].get_lock("nightly")
    assert token == info.token and info.correlation_id == "cron-1"

    busy = locks_cmd("try", "nightly", "--ttl", "60000", "--backend", backend_alias)
    assert busy.returncode == 1 and busy.stdout == "" and "busy" in busy.stderr
    assert "within" not in busy.stderr  # try is one attempt

    wrong = locks_cmd("release", "nightly", "--owner", "f" * 32, "--backend", backend_alias)
    assert wrong.returncode == 1 and locks[backend_alias].get_lock("nightly").token == token

    released = locks_cmd("release", "nightly", "--owner", token, "--backend", backend_alias)
    assert released.returncode == 0, released.stderr
    assert locks[backend_alias].get_lock("nightly") is None
    again = locks_cmd("release", "nightly", "--owner", token, "--backend", backend_alias)
    assert again.returncode == 1 and "not held" in again.stderr


def test_acquire_waits_and_json_output():
    holder = locks["default"].lock("job", 300)
    result = locks_cmd("acquire", "job", "--ttl", "60000", "--timeout", "10000", "--json",
                       "--correlation-id", "cid-j")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"key", "token", "fencing_token", "expires_at", "correlation_id", "alias",
                         "shared", "limit"}
    assert (data["shared"], data["limit"]) == (False, 1)
    assert data["key"] == "job" and data["fencing_token"] > holder.fencing_token
    assert (data["alias"], data["correlation_id"]) == ("default", "cid-j")
    assert locks["default"].get_lock("job").token == data["token"]
    timed_out = locks_cmd("acquire", "job", "--ttl", "60000", "--timeout", "200")
    assert timed_out.returncode == 1 and "within 200 ms" in timed_out.stderr
    assert locks["default"].get_lock("job").token == data["token"]


def test_try_json_output():
    result = locks_cmd("try", "job", "--ttl", "60000", "--json", "--backend", "memory")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token"] == locks["memory"].get_lock("job").token


def test_force_release_list_and_purge():
    locks["default"].acquire_lock("cid-x", "a", 60_000, 0)
    listed = locks_cmd("list", "--json", "--backend", "default")
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)
    assert [(r["key"], r["correlation_id"]) for r in rows] == [("a", "cid-x")]
    table = locks_cmd("list", "--backend", "default")
    assert "cid-x" in table.stdout and "FENCING TOKEN" in table.stdout
    assert locks_cmd("release", "a", "--force").returncode == 0
    assert locks["default"].get_lock("a") is None
    assert locks_cmd("release", "a", "--force").returncode == 1
    assert "(no locks held)" in locks_cmd("list", "--backend", "default").stdout
    purged = locks_cmd("purge")
    assert purged.returncode == 0 and purged.stdout.startswith("purged LOCKS['default']")


@pytest.mark.parametrize(
    "args",
    [
        ["try", "k", "--ttl", "0"],
        ["try", "k", "--ttl", "-5"],
        ["try", "k", "--ttl", "abc"],
        ["try", "k"],
        ["try", "--ttl", "1000"],
        ["try", "k", "--ttl", "1000", "--timeout", "5"],  # try has no --timeout
        ["acquire", "k", "--ttl", "1000", "--timeout", "-1"],
        ["try", "k", "--ttl", "1000", "--backend", "nope"],
        ["try", "", "--ttl", "1000"],
        ["try", "x" * 256, "--ttl", "1000"],
        ["release", "held"],
        ["release", "held", "--owner", "t", "--force"],
        ["release", "held", "--owner", "a\tb"],
        ["run", "k", "--ttl", "1000"],
        ["run", "k", "--ttl", "1000", "--"],
        ["run", "--ttl", "1000", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "1000", "--conflict-exit-code", "300", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "1000", "--conflict-exit-code", "-1", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "0", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "1000", "--backend", "nope", "--", "touch", "{marker}"],
        ["list", "--backend", "nope"],
        ["list", "--backend", "locmem"],  # a generic cache cannot enumerate
        ["purge", "--backend", ""],
        ["list", "--json", "extra-argument"],
        ["list", "-v", "7"],
        ["list", "--settings"],
        ["acquire", "k", "--ttl", "1000", "--correlation-id", "a\nb"],
        ["try", "k\x01", "--ttl", "1000"],  # (NUL cannot be in argv at all)
        ["try", "k", "--ttl", "1.5"],
        ["try", "k", "--ttl", str(10**15)],
        ["try", "k", "--ttl", "1000", "--limit", "0"],
        ["try", "k", "--ttl", "1000", "--limit", "-1"],
        ["try", "k", "--ttl", "1000", "--limit", "10001"],
        ["try", "k", "--ttl", "1000", "--limit", "x"],
        ["try", "k", "--ttl", "1000", "--limit", "2.5"],
        ["try", "k", "--ttl", "1000", "--limit"],
        ["acquire", "k", "--ttl", "1000", "--shared", "--limit", "2"],
        ["try", "k", "--ttl", "1000", "--shared", "yes"],
        ["release", "held", "--owner", "f" * 32, "--limit", "2"],  # release has no mode
        ["run", "k", "--ttl", "1000", "--limit", "0", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "1000", "--limit", "2", "--shared", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "1000", "--grace", "-1", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "1000", "--grace", "1.5", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "1000", "--grace", "--", "touch", "{marker}"],
        ["run", "k", "--ttl", "1000", "--keep-running-on-loss", "yes", "--", "touch", "{marker}"],
        ["nosuch"],
        [],
    ],
)
def test_bad_arguments_exit_2_and_touch_nothing(args, tmp_path):
    marker = tmp_path / "ran"
    locks["default"].acquire_lock(None, "held", 60_000, 0)
    locks["memory"].acquire_lock(None, "held", 60_000, 0)
    before = snapshot()
    result = locks_cmd(*(arg.replace("{marker}", str(marker)) for arg in args))
    proof.record_bad_inputs("manage.py locks")
    assert result.returncode == 2, result
    assert result.stderr.strip()
    assert snapshot() == before
    assert not marker.exists()


@pytest.mark.servers  # a process of its own, or the unreachable Redis
@pytest.mark.parametrize("args", [["try", "k", "--ttl", "1000"], ["list"], ["release", "k", "--force"],
                                  ["release", "k", "--owner", "f" * 32],
                                  ["run", "k", "--ttl", "1000", "--", "touch", "{marker}"]])
def test_backend_down_exits_3(args, tmp_path):
    marker = tmp_path / "ran"
    args = [arg.replace("{marker}", str(marker)) for arg in args]
    result = locks_cmd(args[0], "--backend", "unreachable", *args[1:])
    assert result.returncode == 3, result
    assert "backend error" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--settings=tests.settings", "-v", "2", "--traceback", "--no-color", "--pythonpath", "/x",
         "run", "k", "--ttl", "60000", "--", "true"],
        ["run", "k", "--settings=tests.settings", "-v", "2", "--traceback", "--no-color", "--pythonpath",
         "/x", "--ttl", "60000", "--", "true"],
        ["run", "k", "--ttl", "60000", "--verbosity=2", "--no-color", "--settings", "tests.settings",
         "--pythonpath=/x", "--traceback", "--", "true"],
    ],
)
def test_django_common_options_before_or_after_the_subcommand(argv):
    options = Command().create_parser("manage.py", "locks").parse_args(argv)
    assert (options.settings, options.pythonpath, options.verbosity, options.traceback,
            options.no_color) == ("tests.settings", "/x", 2, True, True)
    assert (options.subcommand, options.key, options.ttl, options.command) == ("run", "k", 60000, ["true"])


def test_django_common_options_defaults_and_the_later_one_wins():
    parser = Command().create_parser("manage.py", "locks")
    plain = parser.parse_args(["list"])
    assert (plain.settings, plain.pythonpath, plain.verbosity, plain.traceback, plain.no_color,
            plain.force_color) == (None, None, 1, False, False, False)
    assert parser.parse_args(["-v", "0", "list", "-v", "3"]).verbosity == 3
    assert parser.parse_args(["-v", "0", "list"]).verbosity == 0
    assert locks_cmd("list", "-v", "0", "--no-color", "--traceback", "--backend", "default").returncode == 0


# ----------------------------------------------------------------------------------- run


def test_run_returns_for_status_0_and_raises_the_status_otherwise(backend_alias):
    ok = locks_cmd("run", "job", "--ttl", "60000", "--backend", backend_alias, "--", "true")
    assert ok.returncode == 0, ok.stderr
    assert locks[backend_alias].get_lock("job") is None
    failed = locks_cmd("run", "job", "--ttl", "60000", "--backend", backend_alias, "--",
                       "sh", "-c", "exit 7")
    assert failed.returncode == 7, failed
    assert locks[backend_alias].get_lock("job") is None


def test_run_command_options_are_not_ours(tmp_path):
    # Everything after the first "--" reaches COMMAND as it is, options and "--" too.
    received = tmp_path / "argv"
    rest = ["--backend", "nope", "--ttl", "x", "--", "-l", "--settings=y"]
    result = locks_cmd("run", "k", "--ttl", "60000", "--", "sh", "-c", 'printf "%s\\n" "$@" > "$0"',
                       str(received), *rest)
    assert result.returncode == 0, result
    assert received.read_text().splitlines() == rest
    assert locks["default"].get_lock("k") is None


def test_run_command_as_a_keyword_of_call_command():
    result = locks_cmd("run", "k", "--ttl", "60000", command=["sh", "-c", "exit 6"])
    assert result.returncode == 6, result


def test_run_from_another_thread_runs_the_command_under_the_lock(tmp_path):
    """call_command("locks", "run", ...) from a thread other than the main one (where
    signal handlers cannot be set): COMMAND runs under the lock, which is released after
    it ends. (It raised ValueError from signal.signal() with COMMAND already started, and
    released the lock while COMMAND ran on.)"""
    import threading

    marker = tmp_path / "done"
    outcome: dict = {}
    code = f"import pathlib, time; time.sleep(0.2); pathlib.Path({str(marker)!r}).write_text('ok')"

    def run() -> None:
        outcome["result"] = locks_cmd("run", "threaded", "--ttl", "60000", "--",
                                      sys.executable, "-c", code)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert outcome["result"].returncode == 0, outcome["result"]
    assert marker.read_text() == "ok"  # COMMAND ran to its end, then run returned
    assert locks["default"].get_lock("threaded") is None


@pytest.mark.servers  # a process of its own, or the unreachable Redis
def test_run_holds_the_lock_while_the_command_runs(monkeypatch, capfd):
    # The command is `manage.py locks try` in a process of its own: busy (1) while run holds.
    for name, value in subprocess_env().items():
        monkeypatch.setenv(name, value)
    inner = [sys.executable, "-m", "django", "locks", "try", "job", "--ttl", "1000"]
    result = locks_cmd("run", "job", "--ttl", "60000", "--", *inner)
    assert result.returncode == 1, result
    assert "busy" in capfd.readouterr().err
    assert locks["default"].get_lock("job") is None


def test_run_conflict_exit_code(tmp_path):
    marker = tmp_path / "ran"
    with locks["default"].lock("job", 60_000) as holder:
        default = locks_cmd("run", "job", "--ttl", "1000", "--", "touch", str(marker))
        assert default.returncode == 75 and "busy" in default.stderr
        custom = locks_cmd("run", "job", "--ttl", "1000", "--conflict-exit-code", "9", "--",
                           "touch", str(marker))
        assert custom.returncode == 9 and "busy" in custom.stderr
        waited = locks_cmd("run", "job", "--ttl", "1000", "--timeout", "200", "--", "touch", str(marker))
        assert waited.returncode == 75
        zero = locks_cmd("run", "job", "--ttl", "1000", "--conflict-exit-code", "0", "--",
                         "touch", str(marker))
        assert zero.returncode == 0 and zero.stderr == ""  # quiet: cron mails nothing
        told = locks_cmd("run", "job", "--ttl", "1000", "--conflict-exit-code", "0", "-v", "2", "--",
                         "touch", str(marker))
        assert told.returncode == 0 and "busy" in told.stderr
        assert not marker.exists()
        assert locks["default"].get_lock("job").token == holder.token


def test_run_waits_for_the_lock_with_timeout():
    locks["memory"].lock("job", 300)
    result = locks_cmd("run", "job", "--ttl", "60000", "--timeout", "10000", "--backend", "memory",
                       "--", "true")
    assert result.returncode == 0, result  # not 75: it waited for the holder to expire
    assert locks["memory"].get_lock("job") is None


def test_run_a_command_that_cannot_start_exits_127():
    result = locks_cmd("run", "job", "--ttl", "60000", "--", "/nonexistent/command")
    assert result.returncode == 127 and "cannot run" in result.stderr
    assert locks["default"].get_lock("job") is None


@pytest.mark.servers  # a process of its own, or the unreachable Redis
@pytest.mark.parametrize("keep_running", [False, True])
def test_run_when_the_command_itself_loses_the_lock(monkeypatch, keep_running):
    # COMMAND force-releases the lock it runs under, then exits 6 at once: whether run's
    # renewal or its release finds the loss, run exits 4 (the lock was lost), or with
    # --keep-running-on-loss COMMAND's status with a warning.
    for name, value in subprocess_env().items():
        monkeypatch.setenv(name, value)
    steal = [sys.executable, "-m", "django", "locks", "release", "job", "--force"]
    options = ["--keep-running-on-loss"] if keep_running else []
    result = locks_cmd("run", "job", "--ttl", "60000", *options, "--", "sh", "-c", '"$@" && exit 6', "sh",
                       *steal)
    assert result.returncode == (6 if keep_running else EXIT_LOST), result
    assert "lock 'job' was lost" in result.stderr
    assert ("ran on (--keep-running-on-loss)" in result.stderr) is keep_running


def test_run_stops_the_command_when_the_lock_is_force_released(tmp_path):
    """In-process, from a thread other than the main one (no signal forwarding there): the
    force release is seen at the next renewal, COMMAND gets SIGTERM, and run exits 4."""
    import os
    import threading
    import time

    pid_file = tmp_path / "pid"
    code = ("import os, pathlib, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))\n"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
            "time.sleep(60)\n")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=locks_cmd(
        "run", "job", "--ttl", "60000", "--backend", "memory", "--", sys.executable, "-c", code)))
    thread.start()
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    pid = int(pid_file.read_text())
    assert locks["memory"].force_release("job")
    released = time.monotonic()
    thread.join(30)
    assert time.monotonic() - released < MAX_RENEW_INTERVAL + 2.0
    result = outcome["result"]
    assert result.returncode == EXIT_LOST, result
    assert "stopped it (status 5)" in result.stderr  # its SIGTERM handler ran
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass  # gone, and reaped
    else:
        pytest.fail(f"COMMAND {pid} is still there")
    assert locks_cmd("run", "job", "--ttl", "60000", "--backend", "memory", "--", "true").returncode == 0


def test_run_renews_before_the_command_starts_when_the_acquisition_waited_longer_than_the_ttl():
    # The lease's ttl is counted from when the acquisition was asked for; a wait longer than
    # the ttl would leave none of it: run extends the lease before COMMAND starts.
    locks["memory"].lock("job", 1500)
    result = locks_cmd("run", "job", "--ttl", "1000", "--timeout", "10000", "--backend", "memory",
                       "--", "true")
    assert result.returncode == 0, result
    assert "lost" not in result.stderr
    assert locks["memory"].get_lock("job") is None


# ----------------------------------------------------------------------------- shared and limit


def test_limit_n_holders_each_with_its_own_token_and_release_owner_acts_on_one():
    first = locks_cmd("try", "pdf", "--ttl", "60000", "--limit", "2", "--backend", "memory")
    second = locks_cmd("acquire", "pdf", "--ttl", "30000", "--limit", "2", "--json",
                       "--backend", "memory", "--correlation-id", "render-2")
    assert (first.returncode, second.returncode) == (0, 0), (first, second)
    data = json.loads(second.stdout)
    assert (data["shared"], data["limit"]) == (False, 2)
    tokens = {first.stdout.strip(), data["token"]}
    assert len(tokens) == 2  # each holder's own token
    assert {info.token for info in locks["memory"].get_holders("pdf")} == tokens

    full = locks_cmd("try", "pdf", "--ttl", "60000", "--limit", "2", "--backend", "memory")
    assert full.returncode == 1 and full.stdout == "" and "busy" in full.stderr
    assert "held by 2 holders (2 of 2)" in full.stderr
    # By the backend's measure, the holder that expires first frees a place (in about 30 s).
    assert re.search(r"could be had in (2\d|30)\.\d{3} s", full.stderr), full.stderr

    shown = locks_cmd("show", "pdf", "--backend", "memory")
    blocks = [dict(line.split(None, 1) if not line.startswith(("correlation", "fencing")) else
                   line.rsplit(None, 1) for line in block.splitlines())
              for block in shown.stdout.strip().split("\n\n")]
    assert [block["mode"] for block in blocks] == ["2 of 2", "2 of 2"]
    assert [block["token"] for block in blocks] == [data["token"], first.stdout.strip()]  # soonest first
    assert blocks[0]["correlation id"] == "render-2"

    # extend and release --owner: exactly that holder, never the other.
    other = locks["memory"].get_holders("pdf")[1]
    assert locks_cmd("extend", "pdf", "--owner", data["token"], "--ttl", "90000",
                     "--backend", "memory").returncode == 0
    holders = {info.token: info for info in locks["memory"].get_holders("pdf")}
    assert holders[other.token].expires_at == other.expires_at
    assert holders[data["token"]].remaining_ms > 80_000
    released = locks_cmd("release", "pdf", "--owner", data["token"], "--backend", "memory")
    assert released.returncode == 0, released
    assert [info.token for info in locks["memory"].get_holders("pdf")] == [first.stdout.strip()]
    assert "1 of 2" in locks_cmd("show", "pdf", "--backend", "memory").stdout
    assert locks_cmd("try", "pdf", "--ttl", "60000", "--limit", "2", "--backend", "memory").returncode == 0
    forced = locks_cmd("release", "pdf", "--force", "--backend", "memory")
    assert forced.returncode == 0 and "every holder" in forced.stdout
    assert locks["memory"].get_holders("pdf") == []


def test_shared_holders_and_a_writer_in_show_and_list():
    readers = [locks_cmd("try", "catalog", "--ttl", "60000", "--shared", "--backend", "memory")
               for _ in range(3)]
    assert [r.returncode for r in readers] == [0, 0, 0]
    writer = locks_cmd("acquire", "catalog", "--ttl", "60000", "--timeout", "100", "--backend", "memory")
    assert writer.returncode == 1 and "held by 3 holders (shared)" in writer.stderr
    locks["memory"].lock("solo", 60_000)
    locks["memory"].lock("sem", 60_000, limit=3)
    listed = json.loads(locks_cmd("list", "--json", "--backend", "memory").stdout)
    modes = {(row["key"], row["token"]): row["mode"] for row in listed}
    assert sorted(modes.values()) == ["1 of 3", "exclusive", "shared", "shared", "shared"]
    assert {row["token"] for row in listed if row["key"] == "catalog"} == {r.stdout.strip() for r in readers}
    table = locks_cmd("list", "--backend", "memory").stdout.splitlines()
    assert table[0].split()[:3] == ["ALIAS", "KEY", "MODE"]
    assert sorted(line.split()[2] for line in table[1:]) == ["1", "exclusive", "shared", "shared", "shared"]
    assert any(line.split()[2:5] == ["1", "of", "3"] for line in table[1:])
    shown = json.loads(locks_cmd("show", "catalog", "--json", "--backend", "memory").stdout)
    assert [h["mode"] for h in shown["holders"]] == ["shared"] * 3
    assert shown["token"] in {h["token"] for h in shown["holders"]} and shown["mode"] == "shared"


def test_a_reader_refused_because_a_writer_waits_is_told_so():
    import threading

    from tests.helpers import wait_until

    reader = locks["memory"].lock("catalog", 60_000, shared=True)
    backend_of_the_writer: list = []

    def writer():
        backend = locks["memory"]  # this thread's instance
        backend_of_the_writer.append(backend)
        with backend.lock("catalog", 60_000, timeout=20_000):
            pass

    thread = threading.Thread(target=writer)
    thread.start()
    wait_until(lambda: backend_of_the_writer and "catalog" in backend_of_the_writer[0]._store.marks)
    refused = locks_cmd("try", "catalog", "--ttl", "60000", "--shared", "--backend", "memory")
    assert refused.returncode == 1
    assert "held by 1 holder (shared); an exclusive acquirer is waiting for it" in refused.stderr, refused
    reader.release()
    thread.join(20)
    assert not thread.is_alive() and locks["memory"].get_holders("catalog") == []


def test_a_bad_limit_names_the_option():
    for value, needle in [("0", "--limit must be between 1 and 10000, got 0"),
                          ("x", "argument --limit: invalid int value: 'x'")]:
        result = locks_cmd("try", "k", "--ttl", "1000", "--limit", value, "--backend", "memory")
        assert result.returncode == 2 and needle in result.stderr, result
    both = locks_cmd("try", "k", "--ttl", "1000", "--limit", "2", "--shared", "--backend", "memory")
    assert both.returncode == 2 and "--limit" in both.stderr and "--shared" in both.stderr


def test_run_with_a_limit_shares_the_key_with_other_holders(tmp_path):
    marker = tmp_path / "ran"
    locks["memory"].lock("imports", 60_000, limit=2)
    ok = locks_cmd("run", "imports", "--ttl", "60000", "--limit", "2", "--backend", "memory", "--",
                   "touch", str(marker))
    assert ok.returncode == 0 and marker.exists(), ok
    locks["memory"].lock("imports", 60_000, limit=2)
    marker.unlink()
    full = locks_cmd("run", "imports", "--ttl", "60000", "--limit", "2", "--backend", "memory", "--",
                     "touch", str(marker))
    assert full.returncode == 75 and "busy" in full.stderr and "2 of 2" in full.stderr
    assert not marker.exists()
    shared = locks_cmd("run", "readers", "--ttl", "60000", "--shared", "--backend", "memory", "--",
                       "touch", str(marker))
    assert shared.returncode == 0 and marker.exists()
    assert len(locks["memory"].get_holders("imports")) == 2 and locks["memory"].get_holders("readers") == []


def test_a_backend_without_shared_locks_exits_2(monkeypatch):
    from django_locks.backends.memory import MemoryLock

    def refuse(self, key, token, ttl, correlation_id, mode, waiter):
        raise NotImplementedError("shared locks: not on this backend")

    monkeypatch.setattr(MemoryLock, "_try_acquire", refuse)
    result = locks_cmd("try", "k", "--ttl", "1000", "--shared", "--backend", "memory")
    assert result.returncode == 2 and "cannot take a shared lock" in result.stderr, result


def test_shared_on_a_backend_that_refuses_shared_locks_exits_2_before_trying(monkeypatch):
    from django_locks.backends.memory import MemoryLock

    monkeypatch.setattr(MemoryLock, "supports_shared", False)
    result = locks_cmd("try", "k", "--ttl", "1000", "--shared", "--backend", "memory")
    assert result.returncode == 2 and "cannot take shared locks (--shared)" in result.stderr, result
    assert locks["memory"].get_holders("k") == []


def test_show_and_list_use_the_backend_measured_remaining_life(monkeypatch):
    """Not this machine's clock: a holder whose expires_at (by a skewed backend clock) has
    passed still shows the remaining time the backend measured."""
    from django_locks.backends.memory import MemoryLock
    from django_locks.values import LockInfo

    skewed = LockInfo("k", "a" * 32, 1, None, 0, 1_000_000, remaining_ms=7_200, limit=3)
    monkeypatch.setattr(MemoryLock, "_holders", lambda self, key: [skewed])
    monkeypatch.setattr(MemoryLock, "_held", lambda self: [skewed])
    shown = locks_cmd("show", "k", "--backend", "memory")
    assert "remaining       7.200 s" in shown.stdout and "1 of 3" in shown.stdout
    assert json.loads(locks_cmd("show", "k", "--json", "--backend", "memory").stdout)["remaining_ms"] == 7200
    assert "7.200 s" in locks_cmd("list", "--backend", "memory").stdout
