"""Packaging: the distribution name, the license, py.typed, the extras and dependency
groups, and what the wheel and the sdist contain (scripts/check_dist.py, which CI runs as
scripts/check-dist)."""

from __future__ import annotations

import importlib.util
import io
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

#: Hermetic: also in the unit tier (scripts/test --unit).
pytestmark = pytest.mark.unit

NAME = "django-distributed-locks"


def load_check_dist():
    spec = importlib.util.spec_from_file_location("check_dist", ROOT / "scripts" / "check_dist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_distribution_name_license_and_build_backend(pyproject):
    project = pyproject["project"]
    assert project["name"] == NAME
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert not any("License ::" in c for c in project["classifiers"])  # PEP 639: the expression only
    assert "Typing :: Typed" in project["classifiers"]
    assert pyproject["build-system"]["requires"] == ["setuptools>=77"]  # the SPDX form needs 77
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["django_locks"]


def test_extras_are_the_backends_and_development_tools_are_groups(pyproject):
    assert set(pyproject["project"]["optional-dependencies"]) == {"redis", "postgres", "mysql"}
    groups = pyproject["dependency-groups"]
    assert set(groups) == {"test", "bench", "packaging", "docs"}
    names = {re.split(r"[<>=\[;]", r)[0] for group in groups.values() for r in group if isinstance(r, str)}
    assert {"pytest", "playwright", "ruff", "pottery", "build", "twine", "sphinx", "myst-parser"} <= names
    assert {"include-group": "packaging"} in groups["test"]
    # A group never names the project itself: pip would fetch it from the index.
    assert not any(NAME in str(r) or "django-locks" in str(r) for group in groups.values() for r in group)


def test_license_and_py_typed_are_in_the_repository():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in license_text
    assert (ROOT / "django_locks" / "py.typed").is_file()


def test_the_scripts_install_groups_not_the_old_extras():
    setup = (ROOT / "scripts" / "setup-venv").read_text()
    assert '--group "$word"' in setup and '"pip>=25.1"' in setup
    assert '.[$extras]' not in setup
    assert 'scripts/setup-venv "$venv" test' in (ROOT / "scripts" / "test").read_text()
    assert 'scripts/setup-venv "$venv" bench' in (ROOT / "scripts" / "bench").read_text()
    assert "scripts/check-dist" in (ROOT / ".ci" / "run").read_text()
    assert "packaging|docs)" in setup
    assert 'scripts/setup-venv "$venv" docs' in (ROOT / "scripts" / "docs").read_text()
    assert "\nscripts/docs\n" in (ROOT / ".ci" / "run").read_text()


def test_metadata_names_the_project_urls_and_the_versions_ci_tests(pyproject):
    project = pyproject["project"]
    assert set(project["urls"]) == {"Homepage", "Documentation", "Changelog", "Issues", "Source"}
    assert all(url.startswith("https://") for url in project["urls"].values())
    assert project["authors"]
    classifiers = set(project["classifiers"])
    assert "Development Status :: 4 - Beta" in classifiers
    assert {f"Framework :: Django :: {v}" for v in ("4.2", "5.2", "6.0")} <= classifiers
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in range(10, 14)} <= classifiers
    # The Django versions CI runs (.ci/run): each has its classifier.
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'DJANGO="django>=4.2,<5.0"' in ci and 'DJANGO="django>=6.0,<7.0"' in ci


def test_every_link_of_the_readme_is_absolute():
    """The README is the project's page on PyPI, where a relative link leads nowhere."""
    check_dist = load_check_dist()
    assert check_dist.relative_links((ROOT / "README.md").read_text()) == []
    found = check_dist.relative_links("[a](docs/x.md)\n![b](x.png)\n[c]: LICENSE\n<a href='#x'>d</a>")
    assert sorted(found) == sorted(["docs/x.md", "x.png", "LICENSE", "#x"])
    assert check_dist.relative_links("`[a](in/code)`\n```\n[b](in/block)\n```\n[c](https://x.org/y)") == []


def test_the_readme_links_into_pages_and_files_that_exist():
    """Its links into the documentation and the repository name real pages and files."""
    readme = (ROOT / "README.md").read_text()
    site = "django-distributed-locks.readthedocs.io/en/latest"
    repository = "django-locks/django-distributed-locks"
    docs = re.findall(rf"https://{re.escape(site)}/([^)\s#]+)\.html", readme)
    files = re.findall(rf"https://github\.com/{re.escape(repository)}/blob/main/([^)\s#]+)", readme)
    assert docs and files
    for page in docs:
        assert (ROOT / "docs" / f"{page}.md").is_file(), page
    for path in files:
        assert (ROOT / path).is_file(), path


def test_the_readme_keeps_its_two_set_up_commands_short():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/run-example   #" in readme and "scripts/test          #" in readme
    assert len(readme.splitlines()) <= 250


def test_the_readme_installs_the_new_name_and_warns_about_the_old_one():
    readme = (ROOT / "README.md").read_text()
    for extra in ("redis", "postgres", "mysql"):
        assert f'pip install "{NAME}[{extra}]"' in readme
    assert "pip install \"django-locks" not in readme and "pip install django-locks" not in readme
    assert "cannot be installed beside it" in readme


# ----------------------------------------------------------------------------- the checker


def fake_wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def fake_sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"pkg-0.1.0/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


GOOD_METADATA = (f"Metadata-Version: 2.4\nName: {NAME}\nLicense-Expression: MIT\nLicense-File: LICENSE\n"
                 + "".join(f"Project-URL: {name}, https://example.org/{name}\n"
                           for name in ("Homepage", "Documentation", "Changelog", "Issues", "Source"))
                 + "Provides-Extra: redis\nProvides-Extra: postgres\nProvides-Extra: mysql\n"
                 "Requires-Dist: Django>=4.2\nRequires-Dist: redis>=4.5; extra == \"redis\"\n")


def test_the_checker_finds_what_is_missing_or_stray(tmp_path):
    check_dist = load_check_dist()
    expected = {"django_locks/__init__.py", "django_locks/py.typed",
                "django_locks/migrations/0001_initial.py"}
    bad_metadata = (GOOD_METADATA.replace("License-Expression: MIT", "License: MIT")
                    + "Provides-Extra: test\nRequires-Dist: playwright>=1.40; extra == \"test\"\n")
    wheel = fake_wheel(tmp_path / "x.whl", {
        "django_locks/__init__.py": "", "tests/test_x.py": "",
        "x-0.1.0.dist-info/METADATA": bad_metadata,
    })
    problems = check_dist.check_wheel(wheel, expected)
    assert "wheel: missing django_locks/py.typed" in problems
    assert "wheel: missing x-0.1.0.dist-info/licenses/LICENSE" in problems
    assert any("top-level entries other than django_locks: ['tests']" in p for p in problems)
    assert any("License-Expression is None" in p for p in problems)
    assert any("extras are ['mysql', 'postgres', 'redis', 'test']" in p for p in problems)
    assert any("a development tool among the requirements: playwright" in p for p in problems)

    sdist = fake_sdist(tmp_path / "x.tar.gz", {
        "PKG-INFO": GOOD_METADATA, "pyproject.toml": "", "README.md": "",
        **{name: "" for name in expected}, "benchmarks/impls.py": "",
    })
    problems = check_dist.check_sdist(sdist, expected)
    assert problems == ["sdist: missing LICENSE", "sdist: missing CHANGELOG.md",
                        "sdist: missing docs/index.md", "sdist: missing docs/conf.py",
                        "sdist: should not contain benchmarks/impls.py"]

    good = fake_wheel(tmp_path / "good.whl", {**{name: "" for name in expected},
                                              "x-0.1.0.dist-info/METADATA": GOOD_METADATA,
                                              "x-0.1.0.dist-info/licenses/LICENSE": "MIT"})
    assert check_dist.check_wheel(good, expected) == []


def test_the_built_wheel_and_sdist(tmp_path):
    """What CI's scripts/check-dist does, with this venv's setuptools (no download)."""
    import importlib.util

    import setuptools

    # The test dependency group includes the packaging group: scripts/setup-venv installs it.
    if importlib.util.find_spec("build") is None or int(setuptools.__version__.split(".")[0]) < 77:
        pytest.fail("needs the packaging dependency group (build, setuptools>=77): run scripts/setup-venv")
    check_dist = load_check_dist()
    sdist, wheel, expected = check_dist.build(tmp_path, isolation=False)
    assert {"django_locks/py.typed", "django_locks/migrations/0001_initial.py",
            "django_locks/templates/admin/django_locks/lock/change_list.html",
            "django_locks/backends/cache_clients/lua/acquire.lua",
            "django_locks/backends/cache_clients/lua/includes/holders.lua"} <= expected
    # Every Lua script the Redis client loads (lua/*.lua and lua/includes/*.lua) is shipped.
    lua = {path.relative_to(ROOT).as_posix()
           for path in (ROOT / "django_locks/backends/cache_clients/lua").rglob("*.lua")}
    with zipfile.ZipFile(wheel) as archive:
        assert {name for name in archive.namelist() if name.endswith(".lua")} == lua
    assert len(lua) >= 9 and lua <= expected
    assert check_dist.check_wheel(wheel, expected) == []
    assert check_dist.check_sdist(sdist, expected) == []
    # What PyPI would say of the README and the metadata.
    assert check_dist.twine_check([wheel, sdist]) == []
    assert wheel.name == "django_distributed_locks-0.1.0-py3-none-any.whl"
