"""The documentation's figures that come from a run, written from that run, never typed.

``docs/conf.py`` calls :func:`generate` before every build; it writes ``docs/_generated/``
(not committed), which the pages include:

* ``test-run.md``: the test suite's size and the last recorded run, from
  ``docs/_data/test-run.json`` (recorded with ``scripts/docs --record-run``, see below);
* ``listing-table.md``: the listing row's table of the last committed ``--listing`` run.
* ``benchmark-tables.md`` and ``handoff.png``: the tables and the figure that the last
  committed benchmark run wrote (``benchmarks/results/``: ``scripts/bench`` writes them);
* ``command-help.md``: ``manage.py locks --help`` and each subcommand's, from the command's
  own argument parser.

Recording a test run (``python docs/_generate.py record``, or ``scripts/docs --record-run``)::

    scripts/test --junitxml=artifacts/junit.xml      # the run (writes artifacts/proof-report.json)
    scripts/docs --record-run --junit artifacts/junit.xml --proof artifacts/proof-report.json

Without ``--junit`` it records the suite's size only, by collection (``pytest --collect-only``,
the whole suite and the hermetic tier), which needs no server. Commit the JSON it writes.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from contextlib import redirect_stdout
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
OUT = DOCS / "_generated"
TEST_RUN = DOCS / "_data" / "test-run.json"
BENCH = ROOT / "benchmarks" / "results"
TESTS_WEB = "https://github.com/django-locks/django-distributed-locks/tree/{commit}/tests"


def project_version() -> str:
    """The version in pyproject.toml (read as text: tomllib is Python 3.11+)."""
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _write(name: str, text: str) -> None:
    """Write OUT/name unless it already holds ``text`` (Sphinx rebuilds what changed)."""
    path = OUT / name
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _n(value: int) -> str:
    return f"{value:,}"


# ----------------------------------------------------------------------------- the test run


def test_run_page(data: dict | None) -> str:
    if not data:
        return ("No test run is recorded in this copy of the documentation "
                "(`docs/_data/test-run.json`: see {doc}`/contributing`).\n")
    commit = data.get("commit") or "unknown"
    lines = [f"Recorded on {data['recorded'][:10]} from commit `{commit[:12]}` "
             f"(Python {data['python']}, Django {data['django']}, {data['cores']} cores), "
             f"by `scripts/docs --record-run` from `{data['source']}`.", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines.append(f"| tests in the suite | {_n(data['collected'])} |")
    if data.get("unit") is not None:
        lines.append(f"| of which the hermetic tier (`scripts/test --unit`) | {_n(data['unit'])} |")
    run = data.get("run")
    if run:
        lines.append(f"| ran | {_n(run['tests'])}: {_n(run['passed'])} passed, {_n(run['failed'])} failed, "
                     f"{_n(run['errors'])} errors, {_n(run['skipped'])} skipped |")
        lines.append(f"| wall time | {run['seconds'] / 60:.1f} min |")
    proof = data.get("proof")
    if proof:
        runs = proof.get("contention_runs", [])
        lines.append(f"| contention runs | {len(runs)} |")
        lines.append(f"| critical sections | {_n(proof.get('critical_sections', 0))} |")
        lines.append(f"| overlaps found | **{_n(proof.get('overlaps_found', 0))}** |")
        faults = proof.get("faults_injected", {})
        detail = ", ".join(f"{count} {name}" for name, count in sorted(faults.items()))
        lines.append(f"| faults injected | {_n(sum(faults.values()))}{': ' + detail if detail else ''} |")
        bad = proof.get("bad_inputs_tried", {})
        detail = ", ".join(f"{count} {name}" for name, count in sorted(bad.items()))
        lines.append(f"| bad inputs tried | {_n(proof.get('bad_inputs_total', 0))}"
                     f"{' (' + detail + ')' if detail else ''} |")
        steps = proof.get("state_machine_steps", {})
        if steps:
            lines.append(f"| state-machine steps | {_n(sum(steps.values()))} in all |")
    if not run:
        lines += ["", "This record counts the suite by collection: it is no run's outcome. A run's "
                  "outcome and its proof figures are recorded from its JUnit XML and "
                  "`artifacts/proof-report.json` (see {doc}`/contributing`)."]
    return "\n".join(lines) + "\n"


def _pytest_collect(python: str, unit: bool) -> int:
    env = dict(os.environ, DJANGO_LOCKS_TEST_SUFFIX=os.environ.get("DJANGO_LOCKS_TEST_SUFFIX", "_collect"))
    if unit:
        env["DJANGO_LOCKS_TEST_TIER"] = "unit"
    out = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True).stdout
    match = re.search(r"(\d+)(?:/\d+)? tests? collected", out)
    if not match:
        raise SystemExit(f"record: pytest --collect-only printed no count:\n{out[-2000:]}")
    return int(match.group(1))


def _junit(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0}
    for suite in suites:
        total["tests"] += int(suite.get("tests", 0))
        total["failed"] += int(suite.get("failures", 0))
        total["errors"] += int(suite.get("errors", 0))
        total["skipped"] += int(suite.get("skipped", 0))
        total["seconds"] += float(suite.get("time", 0))
    total["passed"] = total["tests"] - total["failed"] - total["errors"] - total["skipped"]
    return total


def record(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/docs --record-run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--junit", type=Path, help="the run's JUnit XML (pytest --junitxml)")
    parser.add_argument("--proof", type=Path, help="the run's artifacts/proof-report.json")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"),
                        help="the test venv's interpreter, to count the suite (default .venv)")
    args = parser.parse_args(argv)
    probe = "import django, platform; print(platform.python_version(), django.get_version())"
    versions = subprocess.run(
        [args.python, "-c", probe],
        capture_output=True, text=True, check=True).stdout.split()
    data = {
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "python": versions[0], "django": versions[1], "cores": os.cpu_count(),
        "machine": platform.machine(),
        "source": "a JUnit XML" if args.junit else "pytest --collect-only",
        "collected": _pytest_collect(args.python, unit=False),
        "unit": _pytest_collect(args.python, unit=True),
    }
    if args.junit:
        data["run"] = _junit(args.junit)
    if args.proof:
        data["proof"] = json.loads(args.proof.read_text())
        data["proof"].pop("deployment_runs", None)
    TEST_RUN.parent.mkdir(parents=True, exist_ok=True)
    TEST_RUN.write_text(json.dumps(data, indent=1) + "\n")
    print(f"record: wrote {TEST_RUN.relative_to(ROOT)}: {data['collected']} tests"
          f"{', a run of ' + str(data['run']['tests']) if args.junit else ''}")
    return 0


# ----------------------------------------------------------------------------- benchmarks


def benchmark_page() -> str:
    results, table = BENCH / "results.json", BENCH / "results.md"
    if not (results.exists() and table.exists()):
        return ("The benchmark results are not in this copy of the documentation "
                "(`benchmarks/results/`, in the repository).\n")
    data = json.loads(results.read_text())
    when = _git("log", "-1", "--format=%cs %h", "--", str(results.relative_to(ROOT)))
    kind = "a quick run (`--quick`)" if data.get("quick") else "a full run"
    header = (f"The tables below are `benchmarks/results/results.md` of the last committed run "
              f"({kind}{', committed ' + when if when else ''}), included as the run wrote it.\n\n")
    return header + table.read_text().strip() + "\n"


def listing_page() -> str:
    table, results = BENCH / "listing.md", BENCH / "listing.json"
    if not table.exists():
        return ("The listing results are not in this copy of the documentation "
                "(`benchmarks/results/listing.md`, in the repository).\n")
    quick = results.exists() and json.loads(results.read_text()).get("quick")
    when = _git("log", "-1", "--format=%cs %h", "--", str(table.relative_to(ROOT)))
    kind = "a quick run (`--quick`)" if quick else "a full run"
    lines = table.read_text().strip().splitlines()
    if lines and lines[0].startswith("#"):  # the page has its own heading
        lines = lines[1:]
    header = (f"`benchmarks/results/listing.md` of the last committed `--listing` run ({kind}"
              f"{', committed ' + when if when else ''}), included as the run wrote it.\n")
    return header + "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- the command


def command_page() -> str:
    from django.core.management import load_command_class

    command = load_command_class("django_locks", "locks")
    parser = command.create_parser("manage.py", "locks")
    sections = [("manage.py locks", parser.format_help())]
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in getattr(action, "choices", {}).items():
            sections.append((f"manage.py locks {name}", sub.format_help()))
    out = io.StringIO()
    with redirect_stdout(out):
        for title, text in sections:
            print(f"## `{title}`\n\n```text\n{text.rstrip()}\n```\n")
    return out.getvalue()


def generate() -> None:
    OUT.mkdir(exist_ok=True)
    data = json.loads(TEST_RUN.read_text()) if TEST_RUN.exists() else None
    _write("test-run.md", test_run_page(data))
    _write("benchmark-tables.md", benchmark_page())
    _write("listing-table.md", listing_page())
    if (BENCH / "handoff.png").exists():
        shutil.copyfile(BENCH / "handoff.png", OUT / "handoff.png")
    _write("command-help.md", command_page())


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        sys.exit(record(sys.argv[2:]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "_settings")
    sys.path[:0] = [str(ROOT), str(DOCS)]
    import django

    django.setup()
    generate()
    print(f"wrote {OUT.relative_to(ROOT)}/")
