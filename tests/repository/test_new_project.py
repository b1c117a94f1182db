"""A brand-new project, first time: ``django-admin startproject``, the built wheel, the app
added to INSTALLED_APPS with no ``LOCKS`` setting, and ``manage.py test``.

Django's test database for SQLite is in memory: DatabaseLock then keeps the locks in the
process's memory (no other process can see that database), so the project's own tests
pass, and the locks they take exclude each other across threads.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from django.db import connections

from django_locks.backends.database import DatabaseLock
from tests.helpers import ROOT

pytestmark = pytest.mark.unit  # no server: SQLite in a subprocess, and one in memory

PROJECT_TESTS = '''
import threading

from django.http import HttpResponse
from django.test import RequestFactory, TestCase

from django.contrib.auth.models import User
from django_locks import locks
from django_locks.backends.database import DatabaseLock
from django_locks.decorators import lock_view


@lock_view("report:{pk}", ttl=60_000)
def report(request, pk):
    return HttpResponse("ok")


class LocksInANewProject(TestCase):
    def test_the_default_alias_is_a_database_lock_that_excludes(self):
        User.objects.create(username="writer")  # the test's transaction writes first
        backend = locks["default"]
        self.assertIsInstance(backend, DatabaseLock)
        lease = backend.lock("job", 60_000)
        other = []
        thread = threading.Thread(
            target=lambda: other.append(locks["default"].try_acquire_lock(None, "job", 1000)))
        thread.start()
        thread.join()
        self.assertEqual(other, [False])
        lease.release()
        self.assertTrue(backend.try_acquire_lock(None, "job", 1000))

    def test_a_locked_view_answers_423_while_the_key_is_held(self):
        request = RequestFactory().get("/")
        self.assertEqual(report(request, pk=1).status_code, 200)
        with locks["default"].lock("report:1", 60_000):
            self.assertEqual(report(request, pk=1).status_code, 423)
'''


def _build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("django_distributed_locks-*.whl"))


def test_a_new_project_with_the_app_and_no_locks_setting_passes_its_tests(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    settings = tmp_path / "mysite" / "settings.py"
    text = settings.read_text()
    settings.write_text(text.replace("INSTALLED_APPS = [", 'INSTALLED_APPS = [\n    "django_locks",', 1))
    (tmp_path / "mysite" / "tests.py").write_text(textwrap.dedent(PROJECT_TESTS))
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "import django_locks; print(django_locks.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(site)), where  # the wheel's copy, not this checkout
    for command in (["check"], ["test", "mysite", "-v", "2"]):
        run = subprocess.run([sys.executable, "manage.py", *command], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "django_locks.E007" not in run.stderr
    assert "Ran 2 tests" in run.stderr and "OK" in run.stderr


def test_an_in_memory_sqlite_database_keeps_locks_in_this_process(monkeypatch):
    settings = {**connections.settings,
                "mem": {**connections.settings["default"], "NAME": ":memory:", "TEST": {}}}
    monkeypatch.setitem(connections.__dict__, "settings", settings)
    try:
        backend = DatabaseLock("x", {"OPTIONS": {"using": "mem"}})
        assert backend.check() == [] and backend.process_local
        lease = backend.lock("job", 60_000)
        seen: list[bool] = []
        other = threading.Thread(
            target=lambda: seen.append(DatabaseLock("x", {"OPTIONS": {"using": "mem"}})
                                       .try_acquire_lock(None, "job", 1000)))
        other.start()
        other.join()
        assert seen == [False]  # another instance, another thread: excluded
        assert [info.token for info in backend.held_locks()] == [lease.token]
        lease.release()
        assert backend.held_locks() == []
        assert connections["mem"].connection is None  # the database itself was never used
    finally:
        del connections["mem"]
