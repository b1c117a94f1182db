"""The repository around the package: its packaging (pyproject.toml, scripts/check-dist, a
brand-new project that installs the wheel) and the benchmarks (scripts/bench)."""
