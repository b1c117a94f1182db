"""scripts/bench (benchmarks/): where it writes, and its output's rounding and caveats."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_bench_writes_the_committed_results_only_when_asked():
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/local/results.md"], cwd=ROOT)
    assert ignored.returncode == 0  # the default output is untracked
    from benchmarks.__main__ import COMMITTED_RESULTS, LOCAL_RESULTS

    assert LOCAL_RESULTS.parent == COMMITTED_RESULTS
    for args in (["--quick", "--update-results"], ["--out", "/tmp/x", "--update-results"]):
        refused = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode == 2 and "--update-results" in refused.stderr, refused


def test_bench_rounds_its_figures_and_qualifies_quick_ratios():
    from benchmarks.__main__ import _ms, markdown

    assert (_ms(123.695131), _ms(18.23), _ms(0.47123), _ms(None)) == ("124", "18.2", "0.471", "n/a")
    rows = [{"name": "postgres: DatabaseLock", "median_us": 410.0, "p99_us": 900.0, "pairs_per_s": 2400},
            {"name": "postgres: DatabaseLock SQL, raw", "median_us": 1000.0, "p99_us": 1500.0,
             "pairs_per_s": 1000}]
    quick = markdown({"cpu_cores": "2"}, rows, [], [], quick=True)
    full = markdown({"cpu_cores": "2"}, rows, [], [], quick=False)
    assert "A --quick run" in quick and "few samples" in quick and "A --quick run" not in full
    ratio_line = next(line for line in quick.splitlines()
                      if line.startswith("| postgres: DatabaseLock / same SQL"))
    assert "0.41" in ratio_line and "not judged: --quick" in ratio_line
    assert "not judged" not in full


def test_the_listing_row_puts_the_anchor_beside_each_size():
    from benchmarks.listing import SIZES, markdown

    assert SIZES == (1_000, 10_000, 100_000)
    row = {"backend": "DatabaseLock, PostgreSQL", "held": 100_000, "list_locks_s": 0.0218,
           "command_s": 0.0201, "admin_s": 0.063, "admin_kb": 91.2, "held_locks_s": 0.738,
           "list_locks_rss_mb": 0.0,
           "admin_rss_mb": 0.2, "held_locks_rss_mb": 70.7}
    table = markdown([row])
    assert ("| DatabaseLock, PostgreSQL | 100,000 | 21.8 ms | 20.1 ms | 63.0 ms (91 KB) | 738 ms "
            "| 0.0 / 0.2 / 70.7 MB |") in table
    refused = subprocess.run([sys.executable, "-m", "benchmarks", "--listing", "--quick", "--update-results"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--update-results" in refused.stderr, refused
