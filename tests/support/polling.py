"""The suite's one polling helper, in plain Python: tests/servers.py (which the benchmarks
use without pytest) polls with it too. Tests import it from tests.helpers."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.005, *,
               error: type[Exception] | None = None, what: str = "",
               retry_on: tuple[type[Exception], ...] = ()):
    """Poll ``condition`` until it is truthy and return its value; fail the test at the
    deadline. Code that runs without pytest (or wants to go on) passes ``error``, the
    exception class raised at the deadline instead, with ``what`` in its message; the
    exceptions of ``retry_on`` that ``condition`` raises count as "not yet" (a server
    still starting refuses connections)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
        except retry_on as e:
            last_error = e
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            if error is None:
                import pytest

                pytest.fail(f"condition not met within {timeout} s: {condition}")
            raise error(f"{what or condition}: not reached within {timeout} s (last error: {last_error})")
        time.sleep(interval)
