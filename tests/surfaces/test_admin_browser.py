"""End to end in a real browser: Debian's headless Chromium driven by Playwright, against
``runserver`` on the test databases. A lock held by another process is found in the
admin with its correlation id, force-released through the action form and the
confirmation page, and taken by a new holder; every kind of key is reached by clicking;
the list fits the window without horizontal scrolling, on a desktop with the sidebar open
and on a phone. Screenshots of the list page are saved under ``artifacts/``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from django_locks import locks
from tests.helpers import ROOT, free_port, subprocess_env, wait_until

LIST = "/admin/django_locks/lock/"
ARTIFACTS = Path(os.environ.get("DJANGO_LOCKS_ARTIFACTS", ROOT / "artifacts"))
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "django", *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def live_server_url():
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )

    def accepting() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            assert server.poll() is None, server.stderr.read().decode()
            return False

    wait_until(accepting, timeout=30, interval=0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


@pytest.fixture
def operator():
    """A superuser, made before the browser starts (Playwright's sync API runs an event
    loop, inside which Django refuses ORM calls)."""
    User.objects.create_superuser("operator", "operator@example.com", "s3cret-pass")
    yield "operator", "s3cret-pass"
    User.objects.all().delete()


@pytest.fixture
def browser(operator):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (scripts/setup-venv does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def log_in(browser, live_server_url: str, operator: tuple[str, str], **page_options):
    username, password = operator
    page = browser.new_page(**page_options)
    page.goto(f"{live_server_url}/admin/login/?next={LIST}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#changelist")
    return page


def row_selector(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'tr[data-key="{escaped}"]'


def test_force_release_a_lock_held_by_another_process(live_server_url, operator, browser):
    held = manage("locks", "try", "--backend", "redis", "--correlation-id", "e2e-holder-42",
                  "e2e-report", "--ttl", "600000")
    assert held.returncode == 0, held.stderr
    holder_token = held.stdout.strip()

    page = log_in(browser, live_server_url, operator, viewport={"width": 1280, "height": 800})
    row = page.locator(row_selector("e2e-report"))
    row.wait_for()
    assert "e2e-holder-42" in row.inner_text()
    assert holder_token[:8] in row.inner_text()

    # The admin's action form: tick the row, choose the action, run it.
    row.locator("input[name=_selected_action]").check()
    assert page.inner_text(".action-counter") == "1 of 1 selected"
    page.select_option("select[name=action]", "force_release")
    page.click("button[name=index]")
    page.wait_for_selector("text=Force-release these locks?")
    assert "e2e-report" in page.inner_text("#deleted-objects")
    assert locks["redis"].get_lock("e2e-report").token == holder_token  # not before confirming
    page.click("input[type=submit][value^='Yes']")
    page.wait_for_selector(".messagelist .success")
    assert "Released 'e2e-report' on redis" in page.inner_text(".messagelist")
    assert page.locator(row_selector("e2e-report")).count() == 0
    assert locks["redis"].get_lock("e2e-report") is None

    taken = manage("locks", "try", "--backend", "redis", "e2e-report", "--ttl", "60000")
    assert taken.returncode == 0 and taken.stdout.strip() != holder_token


#: Keys whose detail page and force release must be reachable by clicking (a browser
#: resolves "." and ".." path segments, and reads "?" and "#" as the query and fragment).
TRICKY_KEYS = [".", "..", "a/b", "a%2Fb", "a?b", "a#b", "a b", ("k/.?#%2F: " * 26)[:255]]


def test_every_key_is_reached_by_clicking(live_server_url, operator, browser):
    backend = locks["redis"]
    tokens = {key: backend.lock(key, 600_000, correlation_id=f"cid-{i}").token
              for i, key in enumerate(TRICKY_KEYS)}
    page = log_in(browser, live_server_url, operator, viewport={"width": 1280, "height": 800})
    for i, key in enumerate(TRICKY_KEYS):
        page.goto(f"{live_server_url}{LIST}?alias=redis")
        page.locator(row_selector(key)).locator("a").first.click()
        page.wait_for_selector("fieldset.module")
        assert page.inner_text("fieldset.module h2") == f"redis: {key}"
        assert tokens[key] in page.inner_text("fieldset.module")
        assert f"cid-{i}" in page.inner_text("fieldset.module")
        page.click("input[type=submit][value^='Force release']")
        page.wait_for_selector("text=Force-release these locks?")
        assert key in page.inner_text("#deleted-objects")
        assert backend.get_lock(key).token == tokens[key]  # not before confirming
        page.click("input[type=submit][value^='Yes']")
        page.wait_for_selector(".messagelist .success")
        assert f"Released {key!r} on redis" in page.inner_text(".messagelist")
        assert backend.get_lock(key) is None
    assert backend.held_locks() == []


@pytest.fixture
def expired_database_lock():
    """A DatabaseLock holder that expired without releasing, made before the browser starts."""
    backend = locks["default"]
    backend.acquire_lock("dead-worker", "nightly-invoice-export", 100, 0)
    wait_until(lambda: backend.get_lock("nightly-invoice-export") is None)
    assert [info.key for info in backend.expired_locks()] == ["nightly-invoice-export"]


TABLE_FIT = """() => {
    const table = document.getElementById('result_list');
    const container = table.parentElement;
    const right = container.getBoundingClientRect().right;
    return {
        table: table.scrollWidth,
        container: container.clientWidth,
        page: document.documentElement.scrollWidth,
        viewport: document.documentElement.clientWidth,
        cellsPastTheEdge: Array.from(table.querySelectorAll('th, td')).filter(
            cell => cell.offsetParent !== null && cell.getBoundingClientRect().right > right + 0.5).length,
    };
}"""


def assert_fits(page, label: str) -> None:
    fit = page.evaluate(TABLE_FIT)
    assert fit["table"] <= fit["container"], (label, fit)
    assert fit["page"] <= fit["viewport"], (label, fit)
    assert fit["cellsPastTheEdge"] == 0, (label, fit)


def test_the_list_fits_the_window_without_horizontal_scroll(live_server_url, operator,
                                                            expired_database_lock, browser):
    # Long values without spaces: the worst case for the table's width.
    locks["redis"].acquire_lock("worker-7.eu-west-1.internal:pid-31337:" + "x" * 200,
                                "reports/" + "quarterly-sales-" * 15, 600_000, 0)
    locks["redis"].acquire_lock("e2e-holder-42", "e2e-report", 36_000_000, 0)
    locks["django_redis"].acquire_lock(None, "invoice:17", 90_000, 0)

    page = log_in(browser, live_server_url, operator, viewport={"width": 1280, "height": 800})
    assert page.locator("#result_list tbody tr").count() == 4
    assert page.is_visible("#nav-sidebar"), "the sidebar is open"
    assert page.is_visible("#result_list thead"), "a table with its column headers"
    assert page.is_visible("text=Purge expired locks on default…")
    assert_fits(page, "1280x800, sidebar open")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-locks.png"), full_page=True)
    # And at every width between a phone's and a wide desktop's, the sidebar still open.
    for width in range(360, 1921, 40):
        page.set_viewport_size({"width": width, "height": 800})
        assert page.evaluate("window.innerWidth") == width
        assert_fits(page, f"{width}x800")

    dark = browser.new_page(viewport={"width": 390, "height": 844}, color_scheme="dark")
    dark.context.add_cookies(page.context.cookies())
    dark.goto(f"{live_server_url}{LIST}")
    dark.wait_for_selector("#result_list")
    assert dark.locator("#result_list tbody tr").count() == 4
    assert not dark.is_visible("#result_list thead"), "one block per lock, its fields labelled"
    assert_fits(dark, "390x844")
    dark.screenshot(path=str(ARTIFACTS / "admin-locks-narrow-dark.png"), full_page=True)


def test_force_release_one_holder_of_a_semaphore_then_the_whole_key(live_server_url, operator, browser):
    """Three holders of a semaphore taken by other processes: one row each with its mode;
    the lock's page releases exactly the holder clicked, then the whole key."""
    taken = [manage("locks", "try", "--backend", "redis", "--limit", "3", "sem-report", "--ttl", "600000")
             for _ in range(3)]
    assert [t.returncode for t in taken] == [0, 0, 0], [t.stderr for t in taken]
    tokens = [t.stdout.strip() for t in taken]

    page = log_in(browser, live_server_url, operator, viewport={"width": 1280, "height": 800})
    rows = page.locator(row_selector("sem-report"))
    rows.first.wait_for()
    assert rows.count() == 3
    assert all("3 of 3" in rows.nth(i).inner_text().replace("\u00ad", "") for i in range(3))
    assert_fits(page, "1280x800, a semaphore's holders")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-locks-semaphore.png"), full_page=True)
    rows.first.locator("a").first.click()  # the key: the lock's page, every holder
    page.wait_for_selector("fieldset.lock-holder")
    assert page.locator("fieldset.lock-holder").count() == 3

    target, others = tokens[1], [tokens[0], tokens[2]]
    page.click(f'fieldset[data-token="{target}"] + form input[type=submit]')
    page.wait_for_selector("text=Force-release these locks?")
    listed = page.inner_text("#deleted-objects")
    assert target in listed and not any(token in listed for token in others)
    page.click("input[type=submit][value^='Yes']")
    page.wait_for_selector(".messagelist .success")
    assert f"Released holder {target[:8]}" in page.inner_text(".messagelist")
    assert sorted(info.token for info in locks["redis"].get_holders("sem-report")) == sorted(others)

    page.locator(row_selector("sem-report")).first.locator("a").first.click()
    page.click("input[type=submit][value='Force release every holder…']")
    page.wait_for_selector("text=Held now by 2 holders")
    page.click("input[type=submit][value^='Yes']")
    page.wait_for_selector(".messagelist .success")
    assert "Released every holder of 'sem-report' on redis." in page.inner_text(".messagelist")
    assert locks["redis"].get_holders("sem-report") == []
