"""What the fork workers share (tests/support/fork_worker.py, tests/support/redis_fork_worker.py): no
Django, no settings, so a worker imports it before or after django.setup()."""

from __future__ import annotations

import os
import signal
import time


def reap(pids: list[int], seconds: float, interval: float = 0.002) -> dict[int, int | str]:
    """Each child's exit code (``os.waitstatus_to_exitcode``), or "hang" for one still
    running after ``seconds``: killed (SIGKILL) and reaped."""
    deadline = time.monotonic() + seconds
    codes: dict[int, int | str] = {}
    while len(codes) < len(pids):
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        if len(codes) < len(pids):
            if time.monotonic() > deadline:
                for pid in pids:
                    if pid not in codes:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        codes[pid] = "hang"
                break
            time.sleep(interval)
    return codes
