"""``manage.py locks`` in-process, the subcommands across aliases: ``show`` / ``extend`` /
``list``, process-local aliases refused from the command line, what ``purge`` counts,
``run``'s busy message, the ``--ttl`` warning (more of the command: test_command.py)."""

from __future__ import annotations

import json
import shlex
import sys
import warnings
from datetime import datetime, timezone

import pytest
from django.test import override_settings

from django_locks import locks
from django_locks.exceptions import ShortTTLWarning
from tests import proof
from tests.helpers import cli, locks_cmd, subprocess_env, wait_until

#: Hermetic: also in the unit tier (scripts/test --unit), except the tests marked servers.
pytestmark = pytest.mark.unit

MEMORY = {"BACKEND": "django_locks.backends.memory.MemoryLock"}
LOCMEM_LOCK = {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "locmem"}}


@pytest.fixture(params=["default", "redis", "memory"])
def backend_alias(request) -> str:
    return request.param


# ----------------------------------------------------------------------------- locks show


def test_show_prints_the_holder_or_exits_1_when_free(backend_alias):
    free = locks_cmd("show", "nightly", "--backend", backend_alias)
    assert free.returncode == 1 and "lock 'nightly' is free" in free.stderr and free.stdout == ""

    lease = locks[backend_alias].lock("nightly", 600_000, correlation_id="shell-1")
    shown = locks_cmd("show", "nightly", "--backend", backend_alias)
    assert shown.returncode == 0, shown
    fields = dict(line.split(None, 1) if not line.startswith(("correlation", "fencing")) else
                  line.rsplit(None, 1) for line in shown.stdout.splitlines())
    assert fields["key"] == "nightly" and fields["alias"] == backend_alias
    assert fields["token"] == lease.token
    assert fields["correlation id"] == "shell-1"
    assert fields["fencing token"] == str(lease.fencing_token)
    assert datetime.fromisoformat(fields["expires"]) == lease.expires_at
    assert datetime.fromisoformat(fields["acquired"]) == lease.acquired_at
    assert 590 < float(fields["remaining"].removesuffix(" s")) <= 600

    data = json.loads(locks_cmd("show", "nightly", "--json", "--backend", backend_alias).stdout)
    assert set(data) == {"alias", "key", "token", "correlation_id", "acquired_at", "expires_at",
                         "remaining_ms", "fencing_token", "shared", "limit", "mode", "holders"}
    assert (data["shared"], data["limit"], data["mode"]) == (False, 1, "exclusive")
    assert [holder["token"] for holder in data["holders"]] == [lease.token]
    assert fields["mode"] == "exclusive"
    assert (data["token"], data["fencing_token"], data["alias"]) == (lease.token, lease.fencing_token,
                                                                      backend_alias)
    assert 590_000 < data["remaining_ms"] <= 600_000
    lease.release()
    assert locks_cmd("show", "nightly", "--backend", backend_alias).returncode == 1


# ----------------------------------------------------------------------------- locks extend


def test_a_shell_script_keeps_its_lock_alive_with_extend(backend_alias):
    taken = locks_cmd("acquire", "nightly", "--ttl", "2000", "--json", "--backend", backend_alias)
    token = json.loads(taken.stdout)["token"]
    extended = locks_cmd("extend", "nightly", "--owner", token, "--ttl", "600000", "--backend", backend_alias)
    assert extended.returncode == 0, extended
    info = locks[backend_alias].get_lock("nightly")
    assert datetime.fromisoformat(extended.stdout.strip()) == info.expires_at
    assert info.token == token
    assert 590 < (info.expires_at - datetime.now(timezone.utc)).total_seconds() <= 600

    data = json.loads(locks_cmd("extend", "nightly", "--owner", token, "--ttl", "900000", "--json",
                                "--backend", backend_alias).stdout)
    assert data == {"key": "nightly", "alias": backend_alias, "token": token,
                    "expires_at": locks[backend_alias].get_lock("nightly").expires_at.isoformat()}

    wrong = locks_cmd("extend", "nightly", "--owner", "f" * 32, "--ttl", "1000", "--backend", backend_alias)
    assert wrong.returncode == 1 and "not held by that owner token" in wrong.stderr
    assert locks[backend_alias].get_lock("nightly").expires_at.isoformat() == data["expires_at"]
    free = locks_cmd("extend", "other", "--owner", token, "--ttl", "1000", "--backend", backend_alias)
    assert free.returncode == 1
    assert locks_cmd("release", "nightly", "--owner", token, "--backend", backend_alias).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["extend", "k", "--ttl", "1000"],  # no --owner
        ["extend", "k", "--owner", "a" * 32],  # no --ttl
        ["extend", "k", "--owner", "not-a-token", "--ttl", "1000"],
        ["extend", "k", "--owner", "a" * 32, "--ttl", "0"],
        ["extend", "k", "--owner", "a" * 32, "--ttl", "1.5"],
        ["extend", "", "--owner", "a" * 32, "--ttl", "1000"],
        ["extend", "k", "--owner", "a" * 32, "--ttl", "1000", "--backend", "nope"],
        ["show"],
        ["show", "a\tb"],
        ["show", "k", "--backend", "nope"],
        ["list", "--backend", "nope"],
    ],
)
def test_bad_arguments_of_the_new_subcommands_exit_2(args):
    held = locks["default"].lock("k", 60_000)
    before = locks["default"].get_lock("k")
    result = locks_cmd(*args)
    proof.record_bad_inputs("manage.py locks")
    assert result.returncode == 2, result
    assert locks["default"].get_lock("k") == before
    held.release()


# ----------------------------------------------------------------------------- locks list


@override_settings(LOCKS={"default": MEMORY, "second": MEMORY, "locmem": LOCMEM_LOCK})
def test_list_shows_every_alias_that_can_enumerate():
    locks["default"].acquire_lock("cid-a", "a", 60_000, 0)
    locks["second"].acquire_lock("cid-b", "b", 30_000, 0)
    locks["locmem"].acquire_lock(None, "c", 30_000, 0)
    try:
        table = locks_cmd("list")
        assert table.returncode == 0, table
        header, *rows = table.stdout.splitlines()
        assert header.split()[:2] == ["ALIAS", "KEY"]
        assert [row.split()[:2] for row in rows] == [["default", "a"], ["second", "b"]]
        assert ("LOCKS['locmem'] (CacheLock on cache 'locmem', LocMemCache) cannot list its locks: it "
                "goes through the generic cache.add fallback") in table.stderr
        assert "locks show KEY --backend locmem" in table.stderr

        data = json.loads(locks_cmd("list", "--json").stdout)
        assert [(row["alias"], row["key"], row["correlation_id"]) for row in data] == [
            ("default", "a", "cid-a"), ("second", "b", "cid-b")]

        narrowed = locks_cmd("list", "--backend", "second", "--json")
        assert [row["key"] for row in json.loads(narrowed.stdout)] == ["b"] and narrowed.stderr == ""
        refused = locks_cmd("list", "--backend", "locmem")
        assert refused.returncode == 2 and "LOCKS['locmem']" in refused.stderr
        assert "cannot list its locks" in refused.stderr
    finally:
        for alias in ("default", "second"):
            locks[alias].clear()


@pytest.mark.servers  # the unreachable Redis
@override_settings(LOCKS={"default": MEMORY, "unreachable": {
    "BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "unreachable"}}})
def test_list_shows_the_others_when_one_alias_is_down():
    locks["default"].acquire_lock(None, "a", 60_000, 0)
    try:
        result = locks_cmd("list")
        assert result.returncode == 3, result
        assert [row.split()[:2] for row in result.stdout.splitlines()[1:]] == [["default", "a"]]
        assert ("LOCKS['unreachable'] (CacheLock on cache 'unreachable', RedisCache): backend error"
                in result.stderr)
    finally:
        locks["default"].clear()


def test_list_shows_one_page_and_prints_the_next_pages_command(backend_alias):
    backend = locks[backend_alias]
    keys = {f"page:{i}" for i in range(7)} | {"other"}
    for key in keys:
        backend.acquire_lock(None, key, 60_000, 0)
    args = ["list", "--backend", backend_alias, "--limit", "3", "--prefix", "page:", "--json"]
    listed: list[str] = []
    for _ in range(10):  # a bound: three pages are expected
        result = locks_cmd(*args)
        assert result.returncode == 0, result
        page = [row["key"] for row in json.loads(result.stdout)]
        assert 0 < len(set(page)) <= 3
        listed += page
        if "next page: " not in result.stderr:
            assert result.stderr == ""
            break
        assert f"LOCKS[{backend_alias!r}]" in result.stderr and "locks shown" in result.stderr
        command = shlex.split(result.stderr.split("next page: ", 1)[1])
        assert command[:4] == ["python", "manage.py", "locks", "list"]
        args = command[3:]
    assert sorted(listed) == sorted(keys - {"other"})  # each key once, none of another prefix

    everything = locks_cmd("list", "--backend", backend_alias, "--limit", "0", "--json")
    assert sorted(row["key"] for row in json.loads(everything.stdout)) == sorted(keys)
    assert everything.stderr == ""
    first = locks_cmd("list", "--backend", backend_alias, "--limit", "2")
    assert len(first.stdout.splitlines()) == 3  # a header and two rows
    if backend_alias == "default":  # DatabaseLock counts
        assert "2 of 8 locks shown" in first.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--limit", "-1"], "--limit must be between 1 and"),
    (["--limit", "10001"], "--limit must be between 1 and"),
    (["--backend", "default", "--cursor", "garbage"], "--cursor 'garbage' is not a cursor"),
    (["--cursor", "WyJrZXkiLCJhIl0"], "give its --backend too"),
    (["--backend", "default", "--limit", "0", "--cursor", "WyJrZXkiLCJhIl0"], "takes a --limit other than 0"),
    (["--prefix", "a\tb"], "--prefix must not contain control characters"),
])
def test_list_refuses_bad_page_options(args, message):
    result = locks_cmd("list", *args)
    assert result.returncode == 2 and message in result.stderr, result


# ----------------------------------------------------------------------------- process-local aliases


@pytest.mark.parametrize("alias", ["memory", "locmem"])
@pytest.mark.parametrize(
    "args",
    [
        ["try", "k", "--ttl", "60000"],
        ["acquire", "k", "--ttl", "60000", "--timeout", "10"],
        ["extend", "k", "--owner", "a" * 32, "--ttl", "60000"],
        ["run", "k", "--ttl", "60000", "--", "touch", "{marker}"],
    ],
)
def test_process_local_aliases_are_refused_from_the_command_line(alias, args, tmp_path):
    marker = tmp_path / "ran"
    args = [arg.replace("{marker}", str(marker)) for arg in args]
    result = cli(args[0], "--backend", alias, *args[1:])
    assert result.returncode == 2, result
    assert f"LOCKS['{alias}'] (" in result.stderr and "is process-local" in result.stderr
    assert "gone when it exits" in result.stderr and "--backend ALIAS" in result.stderr
    assert result.stdout == "" and not marker.exists()
    assert locks[alias].get_lock("k") is None


@pytest.mark.parametrize("alias", ["memory", "locmem"])
def test_process_local_aliases_may_still_be_read_and_released_from_the_command_line(alias):
    shown = cli("show", "k", "--backend", alias)
    assert shown.returncode == 1 and "is process-local" in shown.stderr
    assert cli("release", "k", "--force", "--backend", alias).returncode == 1  # nothing to release
    assert cli("purge", "--backend", alias).returncode == 0


def test_through_call_command_a_process_local_lock_outlives_the_command():
    # In a process that lives on (a test, a shell session), the lock is real: allowed.
    token = locks_cmd("try", "k", "--ttl", "60000", "--backend", "memory").stdout.strip()
    assert locks["memory"].get_lock("k").token == token


def test_a_shared_alias_is_not_refused_from_the_command_line():
    with override_settings(LOCKS={"default": {"BACKEND": "django_locks.backends.database.DatabaseLock"}}):
        assert locks["default"].process_local is False
    assert locks["memory"].process_local is True and locks["locmem"].process_local is True


@pytest.mark.servers  # a process of its own
def test_process_local_refusal_as_a_process(monkeypatch):
    import subprocess

    result = subprocess.run([sys.executable, "-m", "django", "locks", "try", "k", "--ttl", "60000",
                             "--backend", "memory"], env=subprocess_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result
    assert "LOCKS['memory'] (MemoryLock) is process-local" in result.stderr and result.stdout == ""


# ----------------------------------------------------------------------------- purge, run, --ttl


def test_purge_says_what_it_counts_on_memory():
    for key in ("a", "b"):
        locks["memory"].acquire_lock(None, key, 30, 0)
    wait_until(lambda: locks["memory"].held_locks() == [])  # both expired
    result = locks_cmd("purge", "--backend", "memory")
    assert result.stdout.strip() == ("purged LOCKS['memory'] (MemoryLock): 2 entries removed "
                                     "(locks that expired without a release)")
    locks["memory"].acquire_lock(None, "c", 30, 0)
    wait_until(lambda: locks["memory"].held_locks() == [])
    assert ": 1 entry removed" in locks_cmd("purge", "--backend", "memory").stdout


@pytest.mark.servers  # DatabaseLock
def test_purge_says_what_it_counts_on_a_database(db_alias):
    backend = locks[db_alias]
    for key in ("a", "b"):
        backend.acquire_lock(None, key, 30, 0)
    backend.lock("c", 60_000).release()  # a released row: kept for its fencing counter
    wait_until(lambda: backend.get_lock("a") is None and backend.get_lock("b") is None)
    result = locks_cmd("purge", "--backend", db_alias)
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"purged LOCKS['{db_alias}'] (DatabaseLock): ")
    assert (": 2 expired holders cleared, and rows of locks released or expired over a minute ago"
            in result.stdout)


def test_run_names_the_whole_command_when_busy(tmp_path):
    with locks["default"].lock("job", 60_000):
        result = locks_cmd("run", "job", "--ttl", "60000", "--", "sh", "-c", "echo hi > out")
    assert result.returncode == 75
    assert "lock 'job' is busy: not running sh -c 'echo hi > out'" in result.stderr


def test_a_ttl_under_a_second_warns_on_the_command_line():
    with pytest.warns(ShortTTLWarning, match=r"manage.py locks try 'k': --ttl 30 is 30 milliseconds, under "
                                             r"one second .*for 30 seconds pass --ttl 30000"):
        result = locks_cmd("try", "k", "--ttl", "30", "--backend", "memory")
    assert result.returncode == 0  # a warning, not a refusal
    for args in (["acquire", "j", "--ttl", "999"], ["run", "r", "--ttl", "5", "--", "true"]):
        with pytest.warns(ShortTTLWarning, match=f"'{args[1]}': --ttl {args[3]} is"):
            locks_cmd(*args, "--backend", "memory")
    token = locks["memory"].get_lock("j").token
    with pytest.warns(ShortTTLWarning, match="manage.py locks extend 'j': --ttl 100 is"):
        locks_cmd("extend", "j", "--owner", token, "--ttl", "100", "--backend", "memory")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert locks_cmd("try", "long", "--ttl", "1000", "--backend", "memory").returncode == 0
