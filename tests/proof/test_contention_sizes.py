"""The sizes of the contention runs (test_contention.py) come from the environment."""

from __future__ import annotations

import pytest

#: Hermetic: also in the unit tier (scripts/test --unit), except the tests marked servers.
pytestmark = pytest.mark.unit


def test_contention_sizes_come_from_the_environment(monkeypatch):
    from tests.helpers import size_from_environment

    monkeypatch.delenv("DJANGO_LOCKS_CONTENTION_PROCESSES", raising=False)
    assert size_from_environment("DJANGO_LOCKS_CONTENTION_PROCESSES", 8) == 8
    monkeypatch.setenv("DJANGO_LOCKS_CONTENTION_PROCESSES", "3")
    assert size_from_environment("DJANGO_LOCKS_CONTENTION_PROCESSES", 8) == 3
    monkeypatch.setenv("DJANGO_LOCKS_CONTENTION_PROCESSES", "0")
    with pytest.raises(pytest.UsageError, match="DJANGO_LOCKS_CONTENTION_PROCESSES must be a whole number"):
        size_from_environment("DJANGO_LOCKS_CONTENTION_PROCESSES", 8)
