"""The settings the installation page and the README show pass the system checks of a new
project: no warning for a cause they leave out (a CacheLock on Redis without the Redis cache
it needs gave W001, W002 and W003 at once)."""

from __future__ import annotations

import re

import pytest
from django.conf import settings as django_settings
from django.test import override_settings

from django_locks import locks
from django_locks.checks import check_locks_setting
from tests.helpers import ROOT

pytestmark = pytest.mark.servers  # the example's Redis cache is a real one


def settings_blocks(path: str) -> list[dict]:
    found = []
    for block in re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), re.S):
        if "LOCKS = {" not in block:
            continue
        namespace: dict = {}
        exec(block.replace('[..., "django_locks"]', "[]"), namespace)  # our own docs
        found.append({name: namespace[name] for name in ("CACHES", "LOCKS") if name in namespace})
    return found


@pytest.mark.parametrize("path", ["README.md", "docs/installation.md"])
def test_the_install_settings_pass_the_checks(path):
    blocks = settings_blocks(path)
    assert blocks, f"no LOCKS example in {path}"
    for settings in blocks:
        assert "CACHES" in settings  # the cache a CacheLock alias names is shown
        # This run's Redis, with its own key prefix (the suite's servers, never flushed).
        caches = {alias: {**config, "LOCATION": django_settings.REDIS_URL,
                          "KEY_PREFIX": f"install{django_settings.RUN_SUFFIX}"}
                  for alias, config in settings["CACHES"].items()}
        with override_settings(CACHES=caches, LOCKS=settings["LOCKS"]):
            assert check_locks_setting() == []
            assert locks["redis"].try_acquire_lock(None, "install-example", 1000)
            assert not locks["redis"].try_acquire_lock(None, "install-example", 1000)
            locks["redis"].release_lock(None, "install-example")
            assert locks["redis"].get_lock("install-example") is None
