"""The example project (example_project/, scripts/run-example): its home page links every
page, and scripts/run-example reads the variables the README documents."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_locks import locks

#: Hermetic: also in the unit tier (scripts/test --unit), except the tests marked servers.
pytestmark = pytest.mark.unit

MEMORY = {"BACKEND": "django_locks.backends.memory.MemoryLock"}
LOCMEM_LOCK = {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "locmem"}}


@override_settings(ROOT_URLCONF="example_project.urls", LOCKS={"default": MEMORY, "cache": LOCMEM_LOCK})
def test_the_example_home_page_links_every_page():
    from django.test import Client

    client = Client()
    home = client.get("/").content.decode()
    for url in ("/reports/1/", "/async-reports/1/", "/export/", "/job/", "/settings/",
                "/api/reports/1/rebuild/", "/admin/"):
        assert f'href="{url}' in home, url
    assert "cannot list its locks" in home  # the LocMemCache alias
    page = client.get("/settings/")
    assert page.status_code == 200 and "<form method=post>" in page.content.decode()
    with locks["default"].lock("settings:None", 60_000):  # another save of this (anonymous) user
        assert client.post("/settings/").status_code == 423
    locks["default"].clear()


def test_run_example_reads_the_variables_the_readme_documents():
    from tests.helpers import ROOT

    script = (ROOT / "scripts" / "run-example").read_text()
    readme = (ROOT / "README.md").read_text()
    for variable in ("ADDRESS", "RUNSERVER_ARGS", "EXAMPLE_DB", "REDIS_URL", "VENV"):
        assert f"`{variable}`" in readme, variable
    assert '"${ADDRESS:-127.0.0.1:8000}" ${RUNSERVER_ARGS:-}' in script
