"""The documentation's recipes, run as written: each recipe's file (example_project/recipes/,
the example project's own tests) is shown by a page of docs/ as it is (``literalinclude``),
and is exercised here."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction
from django.test import Client, override_settings

import example_project.tests as example_tests
from django_locks import locks
from django_locks.exceptions import LockTimeoutError
from django_locks.fencing import StaleLeaseError
from example_project.models import Report
from example_project.recipes import fencing, limits, on_commit, rebuild, tasks
from tests.helpers import ROOT, locks_cmd, subprocess_env, wait_until

#: Hermetic: also in the unit tier (scripts/test --unit), except the tests marked servers.
pytestmark = pytest.mark.unit

RECIPES = ROOT / "example_project" / "recipes"
#: This suite's LOCKS and the alias the example's views name ("cache"): lock_view checks
#: its alias when example_project/views.py is imported.
EXAMPLE_LOCKS = {**settings.LOCKS, "cache": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                             "OPTIONS": {"cache": "locmem"}}}


def documented_files() -> set[Path]:
    """The files the documentation includes whole (``literalinclude`` in docs/**/*.md)."""
    found = set()
    for page in (ROOT / "docs").rglob("*.md"):
        for target in re.findall(r"^```\{literalinclude\} (\S+)$", page.read_text(), re.M):
            found.add((page.parent / target).resolve())
    return found


@pytest.mark.parametrize("path", ["tasks.py", "crontab", "api.py", "on_commit.py", "fencing.py",
                                  "limits.py", "rebuild.py",
                                  "../tests.py"])
def test_each_recipe_is_in_the_docs_as_it_is_run(path):
    assert (RECIPES / path).resolve() in documented_files(), \
        f"no page of docs/ includes example_project/recipes/{path} (literalinclude)"


@pytest.fixture
def reports():
    yield
    Report.objects.all().delete()


# ----------------------------------------------------------------------------- a worker's task


def test_a_background_task_runs_once_at_a_time():
    other_worker = locks.create_connection("default")  # another worker process, holding the lock
    lease = other_worker.lock("sync-account:7", 60_000)
    assert tasks.sync_account_task(7) == "account 7 skipped"
    assert tasks.sync_account_task(8) == "account 8 synced"  # other accounts run meanwhile
    lease.release()
    assert tasks.sync_account_task(7) == "account 7 synced"
    assert locks["default"].get_lock("sync-account:7") is None


# ----------------------------------------------------------------------------- cron under locks run


def crontab_locks_arguments() -> list[str]:
    """The ``locks run ...`` arguments of the recipe's crontab line, up to ``--``."""
    line = next(line for line in (RECIPES / "crontab").read_text().splitlines() if not line.startswith("#"))
    words = shlex.split(line)
    start = words.index("manage.py") + 1
    return words[start:words.index("--")]


def test_a_cron_job_never_runs_twice_at_once(tmp_path):
    arguments = crontab_locks_arguments()
    assert arguments[:2] == ["locks", "run"]
    started, release, second = tmp_path / "started", tmp_path / "release", tmp_path / "second"
    job = ["sh", "-c", 'touch "$0"; while [ ! -e "$1" ]; do sleep 0.02; done', str(started), str(release)]
    overlapping = []

    def next_cron_tick() -> None:  # while the first run's job runs (run forwards signals: main thread)
        try:
            wait_until(started.exists)
            overlapping.append(locks_cmd(*arguments[1:], "--", "touch", str(second)))
        finally:
            release.touch()

    tick = threading.Thread(target=next_cron_tick)
    tick.start()
    first = locks_cmd(*arguments[1:], "--", *job)
    tick.join(30)
    assert first.returncode == 0, first
    assert overlapping[0].returncode == 75 and "busy" in overlapping[0].stderr
    assert not second.exists()
    assert locks["default"].get_lock("send-reports") is None


@pytest.mark.servers  # processes of their own on the shared DatabaseLock
def test_a_cron_job_never_runs_twice_at_once_as_processes(tmp_path):
    arguments = crontab_locks_arguments()
    started, release = tmp_path / "started", tmp_path / "release"
    job = ["sh", "-c", 'touch "$0"; while [ ! -e "$1" ]; do sleep 0.02; done', str(started), str(release)]
    manage = [sys.executable, "-m", "django", *arguments, "--"]
    first = subprocess.Popen([*manage, *job], env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_until(started.exists, timeout=30)
        second = subprocess.run([*manage, "touch", str(tmp_path / "second")], env=subprocess_env(),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 75, second.stderr
        assert "not running touch" in second.stderr and not (tmp_path / "second").exists()
    finally:
        release.touch()
        first.wait(30)
    assert first.returncode == 0, first.stderr.read()


# ----------------------------------------------------------------------------- an API view


@override_settings(ROOT_URLCONF="example_project.urls", LOCKS=EXAMPLE_LOCKS)
def test_a_class_based_api_view():
    client = Client()
    with locks.create_connection("default").lock("report:7", 20_000):
        busy = client.post("/api/reports/7/rebuild/")
    assert busy.status_code == 409 and busy.json() == {"detail": "report 7 is being rebuilt"}
    assert 1 <= int(busy["Retry-After"]) <= 20
    done = client.post("/api/reports/7/rebuild/")
    assert (done.status_code, done.json()) == (202, {"report": 7, "rebuilt": True})
    assert client.get("/api/reports/7/rebuild/").json() == {"report": 7}
    assert locks["default"].get_lock("report:7") is None


def test_the_example_projects_own_tests():
    """example_project/tests.py, the README's "your own tests" example, run by unittest as
    ``manage.py test example_project`` would (outside this suite's fixtures' LOCKS)."""
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(example_tests.ReportLockTests)
    with override_settings(ROOT_URLCONF="example_project.urls", LOCKS=EXAMPLE_LOCKS):
        result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    assert result.testsRun == 2
    assert result.wasSuccessful(), result.failures + result.errors


# ----------------------------------------------------------------------------- transaction.on_commit


def test_publish_after_commit(reports):
    report = Report(name="q3")
    on_commit.save_and_publish(report)
    report.refresh_from_db()
    assert report.published
    assert locks["default"].get_lock(f"publish:{report.pk}") is None


def test_a_rolled_back_save_publishes_nothing(reports):
    with pytest.raises(RuntimeError), transaction.atomic():
        on_commit.save_and_publish(Report(name="rolled back"))
        raise RuntimeError("the outer transaction fails")
    assert not Report.objects.exists()


def test_publish_waits_for_another_publisher(reports):
    report = Report.objects.create(name="busy")
    other = locks.create_connection("default").lock(f"publish:{report.pk}", 60_000)
    threading.Timer(0.3, other.release).start()
    started = time.monotonic()
    on_commit.save_and_publish(report)
    assert time.monotonic() - started >= 0.25
    report.refresh_from_db()
    assert report.published


# ----------------------------------------------------------------------------- fencing tokens


def test_a_lost_lease_cannot_overwrite_a_newer_holder(reports, tmp_path):
    report = Report.objects.create(name="fenced")
    bucket = tmp_path / "bucket"
    lost = locks.create_connection("default").lock(f"report:{report.pk}", 100)  # it will pause too long
    wait_until(lambda: locks["default"].get_lock(f"report:{report.pk}") is None)  # past its ttl
    fencing.rebuild_report(bucket, report.pk, "new body")
    report.refresh_from_db()
    assert report.body == "new body" and report.fencing_token > lost.fencing_token

    with pytest.raises(StaleLeaseError):
        fencing.save_report(lost, report.pk, "stale body")  # the database refuses it
    report.refresh_from_db()
    assert report.body == "new body"
    fencing.store_report(lost, bucket, report.pk, "stale body")  # the object store takes it...
    assert fencing.latest_report(bucket, report.pk)["body"] == "new body"  # ...but it is never read
    assert len(list((bucket / f"reports/{report.pk}").iterdir())) == 2


def test_the_same_lease_may_write_twice(reports):
    report = Report.objects.create(name="twice")
    with locks["default"].lock(f"report:{report.pk}", 30_000) as lease:
        fencing.save_report(lease, report.pk, "one")
        fencing.save_report(lease, report.pk, "two")
    report.refresh_from_db()
    assert (report.body, report.fencing_token) == ("two", lease.fencing_token)


def test_recipes_have_no_short_ttl():
    # Each recipe is imported by this module: none warns (timedeltas, or ms >= 1000).
    assert Path(tasks.__file__).parent == RECIPES


# ----------------------------------------------------------------------------- shared and limits


def test_a_concurrency_limited_view_admits_three_then_423():
    from django.test import RequestFactory

    other = locks.create_connection("default")  # three renders in progress elsewhere
    renders = [other.lock("pdf-render", 60_000, limit=3) for _ in range(2)]
    response = limits.render_pdf(RequestFactory().get("/"), pk=7)
    assert response.status_code == 200 and response.content == b"%PDF- report 7"
    renders.append(other.lock("pdf-render", 60_000, limit=3))
    busy = limits.render_pdf(RequestFactory().get("/"), pk=8)
    assert busy.status_code == 423
    assert 1 <= int(busy["Retry-After"]) <= 60
    for lease in renders:
        lease.release()
    assert limits.render_pdf(RequestFactory().get("/"), pk=9).status_code == 200


def test_a_rebuild_waits_for_readers_and_holds_new_ones_back():
    from django.core.cache import cache

    cache.set("catalog:items", ["old"], None)
    assert rebuild.read_catalog() == ["old"]
    reader = locks.create_connection("default").lock("catalog", 30_000, shared=True)  # reading
    done = threading.Event()
    writer = threading.Thread(target=lambda: (rebuild.rebuild_catalog(["b", "a"]), done.set()))
    writer.start()
    probe = locks.create_connection("default")

    def readers_held_back() -> bool:
        try:
            probe.lock("catalog", 1_000, shared=True).release()
        except LockTimeoutError:
            return True
        return False

    wait_until(readers_held_back, timeout=10)  # the rebuild waits, new readers wait behind it
    assert not done.is_set()  # it waits for the reader in it
    reader.release()
    writer.join(30)
    assert done.is_set()
    assert rebuild.read_catalog() == ["a", "b"]
    cache.delete("catalog:items")
