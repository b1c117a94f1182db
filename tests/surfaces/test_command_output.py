"""``manage.py locks`` on a terminal and in cron: ``run``'s quiet conflict and ``--help``,
the short-ttl warning's one line, ``release --force``'s one line, ``list``'s width and
notes, missing tables."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from django.test import override_settings

from django_locks import locks
from django_locks.management.commands.locks import TABLE_WIDTH
from tests.helpers import ROOT, cli, locks_cmd, subprocess_env
from tests.helpers import locks_process as process

MEMORY = {"BACKEND": "django_locks.backends.memory.MemoryLock"}


# ----------------------------------------------------------------------------- manage.py locks run


def test_run_with_conflict_exit_code_0_is_quiet_in_cron(tmp_path):
    marker = tmp_path / "ran"
    with locks["redis"].lock("nightly", 60_000):
        for verbosity in ("0", "1"):
            quiet = process("run", "nightly", "--ttl", "60000", "--backend", "redis",
                            "--conflict-exit-code", "0", "-v", verbosity, "--", "touch", str(marker))
            assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", ""), quiet
        told = process("run", "nightly", "--ttl", "60000", "--backend", "redis",
                       "--conflict-exit-code", "0", "-v", "2", "--", "touch", str(marker))
        assert told.returncode == 0 and "lock 'nightly' is busy: not running touch" in told.stderr
        busy = process("run", "nightly", "--ttl", "60000", "--backend", "redis", "-v", "0", "--", "true")
        assert busy.returncode == 75 and "busy" in busy.stderr  # a failure is still said
    assert not marker.exists()


def test_run_help_explains_ttl_and_timeout_before_django_options(capsys):
    assert cli("run", "--help").returncode == 0
    text = capsys.readouterr().out  # argparse prints the help itself
    options = text[text.index("options:"):]
    for option, words in (("--ttl MS", "milliseconds"), ("--timeout MS", "milliseconds"),
                          ("--backend ALIAS", "LOCKS alias")):
        block = options[options.index(option):].split("\n  -", 1)[0]
        assert words in block, (option, block)  # has help text
        assert options.index(option) < options.index("--verbosity"), option
    assert options.index("--conflict-exit-code") < options.index("--settings")
    assert options.index("--traceback") > options.index("--grace MS")


# ----------------------------------------------------------------------------- warnings


def test_a_short_ttl_warning_is_the_commands_own_line():
    result = process("try", "k", "--ttl", "30", "--backend", "redis")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: ShortTTLWarning: manage.py locks try 'k': --ttl 30 is 30 "
                                    "milliseconds"), result.stderr
    assert "sys:1" not in result.stderr and len(result.stderr.splitlines()) == 1
    # -W still applies: an error when asked for.
    strict = subprocess.run([sys.executable, "-W", "error::UserWarning", "-m", "django", "locks", "try", "j",
                             "--ttl", "30", "--backend", "redis"], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert strict.returncode != 0 and "ShortTTLWarning" in strict.stderr
    assert locks["redis"].get_lock("j") is None


# ----------------------------------------------------------------------------- release --force


def test_release_force_prints_one_line_without_a_logging_configuration():
    """No handler for the django_locks logger (a project that configured none): the
    library's WARNING record is not printed raw beside the command's own line."""
    holder = locks["redis"].lock("k", 60_000)
    script = textwrap.dedent("""
        import logging
        import django
        django.setup()
        logging.getLogger("django_locks").handlers.clear()  # as if LOGGING said nothing of it
        from django.core.management import execute_from_command_line
        execute_from_command_line(["manage.py", "locks", "release", "k", "--force", "--backend", "redis"])
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "force-released 'k' (every holder)\n"
    assert result.stderr == ""  # before: "lock 'k' force-released (alias=redis)" from logging's lastResort
    assert locks["redis"].get_holders("k") == [] and holder.token


def test_release_force_still_logs_where_logging_is_configured(caplog):
    locks["memory"].lock("k", 60_000)
    with caplog.at_level("WARNING", logger="django_locks"):
        assert locks_cmd("release", "k", "--force", "--backend", "memory").returncode == 0
    assert any("force-released" in record.getMessage() for record in caplog.records)


# ----------------------------------------------------------------------------- manage.py locks list


@override_settings(LOCKS={"default": MEMORY, "memory": MEMORY})
def test_list_names_a_process_local_alias_only_with_v2():
    quiet = cli("list")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet
    assert "(no locks held)" in quiet.stdout
    told = cli("list", "-v", "2")
    assert told.returncode == 0 and "LOCKS['memory'] (MemoryLock) is process-local" in told.stderr


LONG_ALIAS = "an-alias-named-at-length-for-its-team"


@pytest.fixture
def two_memory_aliases():
    """"default" and a long alias on MemoryLock, whose locks outlive an override: cleared after."""
    with override_settings(LOCKS={"default": MEMORY, LONG_ALIAS: MEMORY}):
        try:
            yield
        finally:
            for alias in ("default", LONG_ALIAS):
                locks[alias].clear()


def test_list_fits_120_columns_and_shows_everything_with_v2(two_memory_aliases):
    long_key = "reports/" + "quarterly-sales-" * 8 + "2026"
    long_cid = "worker-7.eu-west-1.internal:pid-31337"
    held = locks["default"].lock(long_key, 600_000, correlation_id=long_cid)
    locks[LONG_ALIAS].lock("nightly", 60_000, limit=3)
    table = locks_cmd("list")
    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= TABLE_WIDTH, lines
    assert lines[0].split() == ["ALIAS", "KEY", "MODE", "TOKEN", "CORRELATION", "ID", "REMAINING",
                                "FENCING", "TOKEN"]
    row = next(line for line in lines if held.token in line)  # tokens are never cut
    assert "…" in row and long_key not in row and row.split()[0] == "default"
    assert str(held.fencing_token) in row
    assert lines[-1].startswith("(… marks a value cut short") and "-v 2" in lines[-1]

    wide = locks_cmd("list", "-v", "2")
    assert long_key in wide.stdout and long_cid in wide.stdout and "…" not in wide.stdout
    assert wide.stdout.splitlines()[0].split()[6:8] == ["ACQUIRED", "EXPIRES"]
    assert held.expires_at.isoformat() in wide.stdout


def test_list_and_show_say_the_tables_are_missing_in_one_line(unmigrated_database):
    setting = {"default": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                           "OPTIONS": {"using": unmigrated_database}}, "memory": MEMORY}
    line = ("LOCKS['default'] (DatabaseLock): the django_locks tables are missing: run "
            "`python manage.py migrate --database fresh`")
    with override_settings(LOCKS=setting):
        every = locks_cmd("list")
        one = locks_cmd("list", "--backend", "default")
        shown = locks_cmd("show", "k")
    assert every.returncode == 3 and line in every.stderr, every
    assert every.stderr.count("LOCKS['default']") == 2  # the line, and the exit's "could not list"
    assert every.stdout.startswith("ALIAS")  # the table of the alias that answered
    for result in (one, shown):
        assert result.returncode == 3 and result.stdout == "", result
        assert result.stderr == f"CommandError: {line}\n"  # one line, no doubled prefix


def test_list_names_the_failed_backend_once():
    result = locks_cmd("list", "--backend", "unreachable")
    assert result.returncode == 3
    assert result.stderr.count("LOCKS['unreachable']") == 1, result.stderr
    assert result.stderr.startswith("CommandError: LOCKS['unreachable'] (CacheLock on cache 'unreachable', "
                                    "RedisCache): backend error: ")
