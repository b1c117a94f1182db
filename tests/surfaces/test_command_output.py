"""What a first project tripped over, each checked where it shows: a misspelled alias in a
decorator, ``manage.py locks`` on a terminal and in cron (``run``'s quiet conflict,
``list``'s width and notes, ``release --force``'s one line, warnings, ``--help``, missing
tables), the admin's pages (headers, fencing tokens, banners, an expired holder, the
removed links of an unreleased version), django_locks.inspection, and ``scripts/bench``'s
output, rounding and caveats."""

from __future__ import annotations

import html
import re
import subprocess
import sys
import textwrap
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, override_settings

from django_locks import locks
from django_locks.decorators import lock_view, locked
from django_locks.exceptions import InvalidLockBackendError
from django_locks.guard import LockGuard
from django_locks.inspection import BACKEND, CONFIGURATION, MISSING_TABLES, list_aliases
from django_locks.management.commands.locks import TABLE_WIDTH
from tests.helpers import ROOT, cli, locks_cmd, subprocess_env, wait_until
from tests.helpers import locks_process as process

MEMORY = {"BACKEND": "django_locks.backends.memory.MemoryLock"}
LOCMEM_LOCK = {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "locmem"}}
LIST = "/admin/django_locks/lock/"


# ----------------------------------------------------------------------------- a misspelled alias


def test_lock_view_with_an_unknown_alias_fails_when_decorating():
    with pytest.raises(InvalidLockBackendError, match=r"backend='defualt'.*configured: 'default', ") as e:
        lock_view("k:{pk}", ttl=30_000, backend="defualt")
    assert "'memory'" in str(e.value)  # every configured alias is named
    with pytest.raises(InvalidLockBackendError, match="backend='defualt'"):
        locked("k", ttl=30_000, backend="defualt")
    with pytest.raises(InvalidLockBackendError, match="backend='defualt'"):
        LockGuard("k", ttl=30_000, backend="defualt")
    lock_view("k:{pk}", ttl=30_000, backend="memory")  # a configured alias is fine


def test_manage_py_check_fails_on_a_view_with_an_unknown_alias(tmp_path, monkeypatch):
    """The URLconf that ``check`` imports decorates the view: the typo stops it, not the
    first request."""
    (tmp_path / "typo_urls.py").write_text(textwrap.dedent("""
        from django.http import HttpResponse
        from django.urls import path

        from django_locks.decorators import lock_view


        @lock_view("k:{pk}", ttl=30_000, backend="defualt")
        def view(request, pk):
            return HttpResponse("never")


        urlpatterns = [path("k/<int:pk>/", view)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with override_settings(ROOT_URLCONF="typo_urls"):
        with pytest.raises(InvalidLockBackendError, match="backend='defualt'"):
            call_command("check", stdout=StringIO(), stderr=StringIO())
    sys.modules.pop("typo_urls", None)


def test_an_alias_of_the_overridden_settings_is_accepted_under_override_settings():
    """A module imported for the first time inside a test that overrides LOCKS keeps its
    decorators: the project's own aliases stay valid for them, and the override's too."""
    with override_settings(LOCKS={"default": MEMORY, "extra": MEMORY}):
        locked("k", ttl=30_000, backend="redis")  # the project's (this suite's) alias
        locked("k", ttl=30_000, backend="extra")  # the override's
        with pytest.raises(InvalidLockBackendError, match="backend='neither'"):
            locked("k", ttl=30_000, backend="neither")


def test_before_settings_are_configured_the_alias_is_left_to_the_first_use():
    script = textwrap.dedent("""
        from django.conf import settings
        from django_locks.decorators import locked

        guard = locked("k", ttl=30_000, backend="nope")
        assert not settings.configured  # not configured by the check either
        print("decorated")
    """)
    env = {**subprocess_env(), "DJANGO_SETTINGS_MODULE": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "decorated"


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


# ----------------------------------------------------------------------------- inspection


def test_inspection_lists_every_alias_in_order_with_why_it_shows_nothing():
    held = locks["redis"].lock("job", 60_000)
    listings = {listing.alias: listing for listing in list_aliases()}
    assert list(listings) == list(locks)
    assert [info.token for info in listings["redis"].holders] == [held.token]
    assert listings["redis"].listed and listings["redis"].message() is None
    assert listings["locmem"].note.startswith("cannot list its locks: it goes through the generic cache.add")
    assert listings["locmem"].message().endswith("look up a known key with "
                                                 "`manage.py locks show KEY --backend locmem`")
    down = listings["unreachable"]
    assert down.error_kind == BACKEND and down.error.startswith("backend error: ")
    assert "LOCKS[" not in down.error  # the surface names the alias, once
    assert listings["memory"].process_local and not listings["redis"].process_local
    assert listings["default"].can_purge and not listings["redis"].can_purge


def test_inspection_reports_configuration_and_missing_tables(unmigrated_database):
    with override_settings(LOCKS={"broken": {"BACKEND": "nope.Nope"},
                                  "fresh": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                                            "OPTIONS": {"using": unmigrated_database}}}):
        broken, fresh = list_aliases()
    assert (broken.error_kind, broken.backend_name) == (CONFIGURATION, "?")
    assert "could not import BACKEND" in broken.error
    assert fresh.error_kind == MISSING_TABLES and fresh.holders == []
    assert fresh.message(code=str) == ("the django_locks tables are missing: run "
                                       "python manage.py migrate --database fresh")


# ----------------------------------------------------------------------------- the admin


@pytest.fixture
def admin_client_():
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(User.objects.get(username="root"))
    yield client
    User.objects.all().delete()


def test_admin_headers_are_never_hyphenated_and_one_fencing_format(admin_client_):
    lease = locks["default"].lock("job", 60_000, correlation_id="cid-1")
    listing = admin_client_.get(LIST).content.decode()
    assert "&shy;" not in listing and "\u00ad" not in listing
    assert "hyphens: manual" in listing
    assert re.search(r"<span>Correlation id</span>", listing) and "<span>Time remaining</span>" in listing
    token = str(lease.fencing_token)
    assert len(token) > 6  # a token long enough that grouping or cutting would show
    detail = admin_client_.get(f"{LIST}default_3Ajob/").content.decode()
    holder = admin_client_.get(f"{LIST}default_3Ajob/{lease.token}/").content.decode()
    for page in (listing, detail, holder):
        assert f">{token}<" in page
        assert "\u2009" not in page and f"{lease.fencing_token:,}" not in page
        assert f"…{token[-6:-3]}" not in page


def test_admin_banners_have_no_backticks(admin_client_, unmigrated_database):
    setting = {"default": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                           "OPTIONS": {"using": unmigrated_database}}, "locmem": LOCMEM_LOCK}
    with override_settings(LOCKS=setting):
        page = admin_client_.get(LIST).content.decode()
        detail = admin_client_.get(f"{LIST}default_3Ajob/").content.decode()
    notices = re.search(r'<ul class="messagelist locks-notices">.*?</ul>', page, re.S).group(0)
    assert "`" not in notices and "`" not in detail
    assert "<code>manage.py locks show KEY --backend locmem</code>" in notices
    assert ("the django_locks tables are missing: run <code>python manage.py migrate --database fresh</code>"
            in notices)
    assert "the django_locks tables are missing" in detail


def test_an_expired_holders_page_says_it_expired(admin_client_):
    backend = locks["default"]
    backend.acquire_lock("dead-worker", "nightly", 100, 0)
    wait_until(lambda: backend.get_lock("nightly") is None)
    [expired] = backend.expired_locks()
    holder = html.unescape(admin_client_.get(f"{LIST}default_3Anightly/{expired.token}/").content.decode())
    assert "every holder (0)" not in holder
    assert "This holder's lock expired without a release" in holder
    assert "The lock has no live holders" in holder
    lock_page = html.unescape(admin_client_.get(f"{LIST}default_3Anightly/").content.decode())
    assert "No live holders: the lock expired without a release" in lock_page


def test_links_of_the_unreleased_first_version_are_gone(admin_client_):
    locks["default"].lock("job", 60_000)
    assert admin_client_.get(f"{LIST}default/job/", follow=True).status_code == 404
    assert admin_client_.get(f"{LIST}default/job/change/").status_code == 404
    assert admin_client_.get(f"{LIST}default_3Ajob/").status_code == 200
    # The admin log's links (the change URL of "alias:key" and of "alias") still arrive.
    assert admin_client_.get(f"{LIST}default_3Ajob/change/", follow=True).status_code == 200
    purge_log = admin_client_.get(f"{LIST}default/change/")
    assert purge_log.status_code == 302 and purge_log["Location"].endswith("?alias=default")


# ----------------------------------------------------------------------------- scripts/bench


def test_bench_writes_the_committed_results_only_when_asked():
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/local/results.md"], cwd=ROOT)
    assert ignored.returncode == 0  # the default output is untracked
    from benchmarks.__main__ import COMMITTED_RESULTS, LOCAL_RESULTS

    assert LOCAL_RESULTS.parent == COMMITTED_RESULTS
    for args in (["--quick", "--update-results"], ["--out", "/tmp/x", "--update-results"]):
        refused = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode == 2 and "--update-results" in refused.stderr, refused


def test_bench_rounds_its_figures_and_qualifies_quick_ratios():
    from benchmarks.__main__ import _ms, markdown

    assert (_ms(123.695131), _ms(18.23), _ms(0.47123), _ms(None)) == ("124", "18.2", "0.471", "n/a")
    rows = [{"name": "postgres: DatabaseLock", "median_us": 410.0, "p99_us": 900.0, "pairs_per_s": 2400},
            {"name": "postgres: DatabaseLock SQL, raw", "median_us": 1000.0, "p99_us": 1500.0,
             "pairs_per_s": 1000}]
    quick = markdown({"cpu_cores": "2"}, rows, [], [], quick=True)
    full = markdown({"cpu_cores": "2"}, rows, [], [], quick=False)
    assert "A --quick run" in quick and "few samples" in quick and "A --quick run" not in full
    ratio_line = next(line for line in quick.splitlines()
                      if line.startswith("| postgres: DatabaseLock / same SQL"))
    assert "0.41" in ratio_line and "not judged: --quick" in ratio_line
    assert "not judged" not in full
