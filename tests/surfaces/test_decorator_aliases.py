"""A misspelled LOCKS alias in lock_view, locked or LockGuard fails when decorating (and
so ``manage.py check``), not at the first request; aliases of overridden settings count."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

from django_locks.decorators import lock_view, locked
from django_locks.exceptions import InvalidLockBackendError
from django_locks.guard import LockGuard
from tests.helpers import ROOT, subprocess_env

MEMORY = {"BACKEND": "django_locks.backends.memory.MemoryLock"}


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
