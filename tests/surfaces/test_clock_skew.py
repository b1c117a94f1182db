"""Hardening: what an outside attack on faults, inputs and resources broke, fixed and kept."""

from __future__ import annotations

import gc
import logging
import os
import time
import tracemalloc

import pytest

from django_locks import locks
from tests import proof
from tests.helpers import run_python, wait_until


def _allocated_by(action) -> int:
    """Bytes still allocated after ``action`` (tracemalloc, after a full collection)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        action()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def test_bookkeeping_of_unreleased_expired_keys_stays_bounded(caplog):
    # pytest keeps every captured log record: DEBUG lines of 5,000 acquisitions would count.
    caplog.set_level(logging.WARNING, logger="django_locks")
    backend = locks["redis"]

    def take_and_abandon(first: int, count: int) -> None:
        for n in range(first, first + count):
            assert backend.try_acquire_lock(None, f"abandoned:{n}", 1)
        wait_until(lambda: backend.get_lock(f"abandoned:{first + count - 1}") is None)

    take_and_abandon(0, 2_000)  # fills the per-instance caches towards their steady size
    grown = _allocated_by(lambda: take_and_abandon(2_000, 20_000))
    proof.record_fault("abandoned keys (22,000 in one run)")
    # Bounded caches (keys' cache keys, holdings) stay under ~0.5 MB whatever the count; before
    # the fix every abandoned key stayed remembered (~120 bytes each: 2.4 MB more here).
    assert grown < 800_000, grown
    # Bookkeeping still works for what is held now.
    assert backend.try_acquire_lock(None, "kept", 60_000)
    backend.release_lock(None, "kept")
    assert backend.get_lock("kept") is None


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
