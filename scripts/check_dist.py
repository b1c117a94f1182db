"""Build the sdist and the wheel of this project, then check what they contain.

Usage: python scripts/check_dist.py OUT_DIR [--no-isolation]

The working tree (without .git, virtualenvs and build leftovers) is copied to OUT_DIR/src and
built there with ``python -m build`` (the sdist, then the wheel from the sdist, as a release
would), so nothing stale of the checkout can slip in. Checked:

* both carry every file of the django_locks package (modules, migrations, templates,
  py.typed) and the LICENSE, and nothing of tests/, benchmarks/ or example_project/;
* the wheel holds the django_locks package alone, the LICENSE under .dist-info/licenses;
* the sdist also carries the documentation's sources (docs/) and CHANGELOG.md;
* the metadata: the distribution name, License-Expression MIT with License-File LICENSE,
  the extras redis, postgres and mysql only (the test and bench dependency groups are not
  published), no playwright, ruff or pottery among the requirements, the Project-URLs;
* the README as PyPI shows it: every link absolute (a relative one would break there), and
  ``twine check --strict`` on both distributions (the long description renders).

Exits 1 with one line per problem; prints what it checked otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "django-distributed-locks"
PACKAGE = "django_locks"
#: Never in a distribution.
FORBIDDEN_TOP = ("tests", "benchmarks", "example_project", "scripts", ".ci")
#: In the sdist besides the package (the documentation's sources ship with it).
SDIST_REQUIRED = ("LICENSE", "README.md", "pyproject.toml", "CHANGELOG.md", "docs/index.md", "docs/conf.py")
#: Never in the sdist: the documentation's build output and generated pages.
SDIST_FORBIDDEN = ("docs/_build/", "docs/_generated/")
#: The Project-URLs the metadata must name.
PROJECT_URLS = ("Homepage", "Documentation", "Changelog", "Issues", "Source")
#: Requirements that must not reach users.
DEV_ONLY = ("playwright", "ruff", "pottery", "pytest", "hypothesis", "python-redis-lock", "matplotlib")
IGNORED = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.pyc", "build", "dist", "*.egg-info",
                                 "artifacts", ".pytest_cache", ".ruff_cache", "*.sqlite3*")


def package_files(source: Path) -> set[str]:
    """Every file of the package in the source tree, relative to the tree (posix)."""
    root = source / PACKAGE
    return {
        path.relative_to(source).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def build(out: Path, isolation: bool = True) -> tuple[Path, Path, set[str]]:
    """Copy the tree, build the sdist and the wheel: (sdist, wheel, the package's files)."""
    source = out / "src"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    command = [sys.executable, "-m", "build", "--outdir", str(out / "dist"), str(source)]
    if not isolation:
        command.insert(3, "--no-isolation")
    subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    [sdist] = (out / "dist").glob("*.tar.gz")
    [wheel] = (out / "dist").glob("*.whl")
    return sdist, wheel, package_files(source)


def check_wheel(wheel: Path, expected: set[str]) -> list[str]:
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    dist_info = metadata_name.rsplit("/", 1)[0]
    problems += [f"wheel: missing {name}" for name in sorted(expected - names)]
    if f"{dist_info}/licenses/LICENSE" not in names:
        problems.append(f"wheel: missing {dist_info}/licenses/LICENSE")
    tops = {name.split("/", 1)[0] for name in names} - {dist_info}
    if tops != {PACKAGE}:
        problems.append(f"wheel: top-level entries other than {PACKAGE}: {sorted(tops - {PACKAGE})}")
    problems += check_metadata("wheel", metadata)
    return problems


def check_sdist(sdist: Path, expected: set[str]) -> list[str]:
    problems = []
    with tarfile.open(sdist) as archive:
        members = [member.name for member in archive.getmembers() if member.isfile()]
        top = members[0].split("/", 1)[0]
        names = {name.split("/", 1)[1] for name in members if "/" in name}
        metadata = Parser().parsestr(archive.extractfile(f"{top}/PKG-INFO").read().decode())
    problems += [f"sdist: missing {name}" for name in sorted(expected - names)]
    for required in SDIST_REQUIRED:
        if required not in names:
            problems.append(f"sdist: missing {required}")
    for name in sorted(names):
        if name.split("/", 1)[0] in FORBIDDEN_TOP or name.startswith(SDIST_FORBIDDEN):
            problems.append(f"sdist: should not contain {name}")
    problems += check_metadata("sdist", metadata)
    return problems


def check_metadata(where: str, metadata) -> list[str]:
    problems = []
    if metadata["Name"] != NAME:
        problems.append(f"{where}: Name is {metadata['Name']!r}, not {NAME!r}")
    if metadata["License-Expression"] != "MIT":
        problems.append(f"{where}: License-Expression is {metadata['License-Expression']!r}, not 'MIT'")
    if "LICENSE" not in (metadata.get_all("License-File") or []):
        problems.append(f"{where}: no License-File: LICENSE")
    extras = set(metadata.get_all("Provides-Extra") or [])
    if extras != {"redis", "postgres", "mysql"}:
        problems.append(f"{where}: extras are {sorted(extras)}, not mysql, postgres, redis")
    urls = {value.split(",", 1)[0].strip() for value in metadata.get_all("Project-URL") or []}
    missing = [name for name in PROJECT_URLS if name not in urls]
    if missing:
        problems.append(f"{where}: no Project-URL for {', '.join(missing)}")
    for requirement in metadata.get_all("Requires-Dist") or []:
        if requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower() in DEV_ONLY:
            problems.append(f"{where}: a development tool among the requirements: {requirement}")
    return problems


#: Markdown links and images, reference definitions, HTML href/src: their targets.
_LINK_TARGETS = re.compile(
    r"\]\(\s*<?([^)\s>]+)"              # [text](target) and ![alt](target)
    r"|^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$"  # [label]: target
    r"|(?:href|src)=[\"']([^\"']+)",        # <a href="..."> and <img src="...">
    re.M,
)


def relative_links(markdown: str) -> list[str]:
    """The link targets of ``markdown`` (code blocks aside) that are not absolute URLs: on
    PyPI, where the README is the project's page, they would lead nowhere."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [next(group for group in match.groups() if group) for match in _LINK_TARGETS.finditer(text)]
    return [target for target in targets if not re.match(r"(https?|mailto):", target)]


def twine_check(paths: list[Path]) -> list[str]:
    """``twine check --strict``: the metadata and long description as PyPI would take them."""
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, paths)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode == 0:
        return []
    output = result.stdout.strip()
    if "No module named twine" in output:
        return ["twine is not installed: run scripts/setup-venv VENV packaging"]
    return [f"twine check: {line}" for line in output.splitlines() if line.strip() and "PASSED" not in line]


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    try:
        sdist, wheel, expected = build(out, isolation="--no-isolation" not in argv)
    except subprocess.CalledProcessError as e:
        print(e.stdout, file=sys.stderr)
        print(f"check-dist: the build failed (exit {e.returncode})", file=sys.stderr)
        return 1
    problems = check_wheel(wheel, expected) + check_sdist(sdist, expected)
    problems += [f"README.md: a relative link (broken on PyPI): {target}"
                 for target in relative_links((ROOT / "README.md").read_text())]
    problems += twine_check([wheel, sdist])
    for problem in problems:
        print(f"check-dist: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-dist: {wheel.name} and {sdist.name}: the {len(expected)} files of {PACKAGE} "
          "(py.typed, migrations, templates), LICENSE, the metadata and Project-URLs; the docs "
          "and CHANGELOG.md in the sdist; nothing of tests/ or benchmarks/; README links absolute; "
          "twine check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
