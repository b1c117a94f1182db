"""Tallies of the proof suite (contention, faults, bad input), written at the end of a run
to artifacts/proof-report.json and summed up in pytest's terminal summary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

contention: list[dict[str, Any]] = []
faults: Counter[str] = Counter()
bad_inputs: Counter[str] = Counter()
state_machine_steps: Counter[str] = Counter()
#: The deployment tier's server runs (tests/topologies/test_deployment.py): one dict each.
deployment: list[dict[str, Any]] = []


def record_contention(test: str, alias: str, processes: int, iterations: int, keys: int,
                      sections: int, overlaps: int) -> None:
    contention.append({"test": test, "alias": alias, "processes": processes,
                       "iterations": iterations, "keys": keys, "critical_sections": sections,
                       "overlaps": overlaps})


def record_fault(name: str, count: int = 1) -> None:
    faults[name] += count


def record_bad_inputs(entry_point: str, count: int = 1) -> None:
    bad_inputs[entry_point] += count


def record_deployment(run: dict[str, Any]) -> None:
    deployment.append(run)


def summary() -> dict[str, Any]:
    return {
        "contention_runs": contention,
        "critical_sections": sum(run["critical_sections"] for run in contention),
        "overlaps_found": sum(run["overlaps"] for run in contention),
        "faults_injected": dict(faults),
        "bad_inputs_tried": dict(bad_inputs),
        "bad_inputs_total": sum(bad_inputs.values()),
        "state_machine_steps": dict(state_machine_steps),
        "deployment_runs": deployment,
    }


def write(path: Path) -> dict[str, Any]:
    data = summary()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return data
