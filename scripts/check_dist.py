"""Build the sdist and the wheel of this project, then check what they contain.

Usage: python scripts/check_dist.py OUT_DIR [--no-isolation]

The working tree (without .git, virtualenvs and build leftovers) is copied to OUT_DIR/src and
built there with ``python -m build`` (the sdist, then the wheel from the sdist, as a release
would), so nothing stale of the checkout can slip in. Checked:

* both carry every file of the django_locks package (modules, migrations, templates,
  py.typed) and the LICENSE, and nothing of tests/, benchmarks/ or example_project/;
* the wheel holds the django_locks package alone, the LICENSE under .dist-info/licenses;
* the metadata: the distribution name, License-Expression MIT with License-File LICENSE,
  the extras redis, postgres and mysql only (the test and bench dependency groups are not
  published), no playwright, ruff or pottery among the requirements.

Exits 1 with one line per problem; prints what it checked otherwise.
"""

from __future__ import annotations

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
FORBIDDEN_TOP = ("tests", "benchmarks", "example_project", "scripts", ".ci", "docs")
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
    for required in ("LICENSE", "README.md", "pyproject.toml"):
        if required not in names:
            problems.append(f"sdist: missing {required}")
    for name in sorted(names):
        if name.split("/", 1)[0] in FORBIDDEN_TOP:
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
    for requirement in metadata.get_all("Requires-Dist") or []:
        if requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower() in DEV_ONLY:
            problems.append(f"{where}: a development tool among the requirements: {requirement}")
    return problems


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
    for problem in problems:
        print(f"check-dist: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-dist: {wheel.name} and {sdist.name}: the {len(expected)} files of {PACKAGE} "
          "(py.typed, migrations, templates), LICENSE, the metadata; nothing of tests/ or benchmarks/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
