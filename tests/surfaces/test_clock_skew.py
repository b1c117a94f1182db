"""An app server whose wall clock is skewed (libfaketime): what it shows of a lock's time
left comes from the backend's clock, in the views' Retry-After (lock_view) and in the
admin's time remaining."""

from __future__ import annotations

import os
import time

import pytest

from django_locks import locks
from tests.helpers import run_python

LIBFAKETIME = next(
    (path for path in (f"/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"
                       for arch in ("x86_64", "aarch64")) if os.path.exists(path)),
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
)


@pytest.mark.parametrize("skew", ["+45s", "-1h"])
# (Not SQLite: its clock is the calling process's own, skewed along with it.)
@pytest.mark.parametrize(("path", "alias"), [("/postgres-report/7/", "postgres"),
                                             ("/async-report/7/", "redis")])
def test_retry_after_ignores_a_skewed_app_server_clock(skew, path, alias):
    """The holder has 30 s left by the backend's clock; the view runs in a process whose
    wall clock is skewed for real (libfaketime; the monotonic clock is left alone)."""
    if not os.path.exists(LIBFAKETIME):
        pytest.fail("libfaketime is not installed (scripts/setup-venv installs Debian's faketime)")
    holder = locks[alias].lock("report:7", 30_000)
    result = run_python(
        "import django, time; django.setup()\n"
        "from django.test import Client\n"
        f"response = Client().get({path!r})\n"
        "print(response.status_code, response['Retry-After'], int(time.time()))\n",
        env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": skew, "DONT_FAKE_MONOTONIC": "1"},
    )
    assert result.returncode == 0, result.stderr
    status, retry_after, app_now = map(int, result.stdout.split())
    assert abs(app_now - time.time()) > 40  # the child's clock really was skewed
    assert status == 423
    assert 25 <= retry_after <= 30, retry_after  # before the fix: 1 (+45 s) or 3630 (-1 h)
    holder.release()


@pytest.mark.parametrize("skew", ["+45s", "-1h"])
@pytest.mark.parametrize("alias", ["postgres", "redis"])
def test_admin_time_remaining_ignores_a_skewed_app_server_clock(skew, alias):
    import re

    from django.contrib.auth.models import User

    from django_locks.admin import detail_url

    User.objects.create_superuser("skewed", "skewed@example.com", "pw")
    holder = locks[alias].lock("report:7", 30_000)
    try:
        result = run_python(
            "import django; django.setup()\n"
            "from django.contrib.auth.models import User\n"
            "from django.test import Client\n"
            "client = Client(); client.force_login(User.objects.get(username='skewed'))\n"
            f"print(client.get({detail_url(alias, 'report:7')!r}).content.decode())\n",
            env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": skew, "DONT_FAKE_MONOTONIC": "1"},
        )
        assert result.returncode == 0, result.stderr
        shown = re.search(r"Time remaining:</label><div class=\"readonly\">([^<]*)<", result.stdout)
        assert shown, result.stdout[-2000:]
        seconds = float(shown.group(1).removesuffix(" s"))  # "29.9 s" (not "1 h 00 min")
        assert 25 <= seconds <= 30, shown.group(1)  # before the fix: 0.0 s / 1 h 00 min
    finally:
        holder.release()
        User.objects.filter(username="skewed").delete()
