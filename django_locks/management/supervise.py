"""``locks run``'s supervision: COMMAND runs while its lock is held, and no longer.

**The process.** COMMAND runs in a process group of its own. SIGTERM, SIGINT, SIGHUP and
SIGQUIT sent to ``run`` go to that group (when ``run`` runs in the main thread: signal
handlers live there). On Linux COMMAND also gets ``PR_SET_PDEATHSIG`` = SIGKILL: if ``run``
dies without a chance to act (SIGKILL, a crash), COMMAND is killed with it.

**The lease.** A :class:`LeaseKeeper` thread extends the lease to its full ttl every third
of the ttl, at most :data:`MAX_RENEW_INTERVAL` (1 s) apart, so a force release or a
takeover is seen within a second. It knows, by this machine's monotonic clock, until when
the lease is surely held: the ttl counted from the start of the last extension that
succeeded (or of the acquisition; the backend counts from a later moment). The lease is
*lost* when an extension finds it gone (:class:`LockNotHeldError`), or when that moment
passes without a successful extension (backend errors, or a call that hangs): the backend
may have let it expire by then, and given it to someone else.

**A loss.** By default COMMAND is stopped: SIGTERM to its process group, then SIGKILL to
the group once the grace period (:data:`DEFAULT_GRACE_MS`) has passed while any process of
the group still lives; ``run`` exits with :data:`EXIT_LOST`. With ``keep_running``
COMMAND runs on, and ``run`` exits with its status.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django_locks.exceptions import LockBackendError, LockNotHeldError
from django_locks.lease import Lease

logger = logging.getLogger("django_locks")

#: ``run``'s exit status when its lock was lost while it held it (COMMAND stopped, or not
#: started): next to the command's 0 done, 1 busy, 2 bad arguments, 3 backend error.
EXIT_LOST = 4
#: How long COMMAND's process group has after SIGTERM before SIGKILL (``--grace``).
DEFAULT_GRACE_MS = 5000
#: The longest time between two renewals (a third of the ttl when that is shorter).
MAX_RENEW_INTERVAL = 1.0
#: Signals that ``run`` passes on to COMMAND's process group.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
#: After SIGKILL, how long ``run`` waits for the group's processes to be gone (zombies that
#: nobody reaps and processes stuck in the kernel are not waited for longer).
KILL_WAIT = 5.0
#: How often the group is looked at once COMMAND itself has exited, during a stop.
GROUP_POLL = 0.02

_PR_SET_PDEATHSIG = 1
try:  # Linux: prctl(PR_SET_PDEATHSIG) ties the child's life to this process's
    _LIBC: Any = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


class LeaseKeeper:
    """Renews ``lease`` in a daemon thread and says whether it is lost (see the module).

    ``held_since``: the monotonic time the acquisition was asked for. ``on_lost`` is
    called once, from whichever thread finds the loss.
    """

    def __init__(self, lease: Lease, held_since: float, on_lost: Callable[[], None]) -> None:
        self.lease = lease
        self.ttl = lease.ttl / 1000
        self.interval = min(self.ttl / 3, MAX_RENEW_INTERVAL)
        self._held_since = held_since
        self._last_error: LockBackendError | None = None
        self._on_lost = on_lost
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        #: Why the lease is lost; None while it is held.
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"locks run renewer {lease.key!r}",
                                        daemon=True)

    @property
    def deadline(self) -> float:
        """Until when (monotonic) the lease is surely held."""
        with self._mutex:
            return self._held_since + self.ttl

    @property
    def due(self) -> bool:
        """Whether a renewal is due now (an acquisition that waited longer than the interval)."""
        with self._mutex:
            return time.monotonic() >= self._held_since + self.interval

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """No more renewals. ``wait``: give a renewal in progress a second to end."""
        self._stop.set()
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def renew(self) -> bool:
        """One extension to the full ttl. False when it found the lease gone."""
        attempt = time.monotonic()
        try:
            self.lease.extend()
        except LockNotHeldError:  # extend() logged it and sent lock_lost
            self._lose("it is no longer held: force-released, expired or taken over")
            return False
        except LockBackendError as e:
            with self._mutex:
                self._last_error = e
                left = self._held_since + self.ttl - time.monotonic()
            logger.error(
                "could not renew lock %r, retrying (%.1f s of its ttl left by this machine's "
                "clock): %s (alias=%s, correlation_id=%s)",
                self.lease.key, max(left, 0.0), e, self.lease.alias, self.lease.correlation_id,
            )
            return True
        with self._mutex:
            self._held_since = max(self._held_since, attempt)
            self._last_error = None
        return True

    def check(self) -> str | None:
        """Why the lease is lost, or None. Declares it lost once the ttl has passed, by this
        machine's monotonic clock, since the start of the last extension that succeeded."""
        if self.lost is None:
            now = time.monotonic()
            with self._mutex:
                overdue = now >= self._held_since + self.ttl
                error = self._last_error
            if overdue:
                why = f"; the last error: {error}" if error is not None else " (a renewal hangs)"
                self._lose(f"no renewal succeeded for its whole ttl ({self.ttl:g} s){why}; "
                           "another may hold it now")
        return self.lost

    def _lose(self, why: str) -> None:
        with self._mutex:
            if self.lost is not None:
                return
            self.lost = why
        self._on_lost()

    def _run(self) -> None:
        with self._mutex:
            next_at = self._held_since + self.interval
        try:
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                next_at = time.monotonic() + self.interval
                if not self.renew():
                    return
        except Exception:
            logger.exception("lock renewer of locks run for %r failed (alias=%s, correlation_id=%s)",
                             self.lease.key, self.lease.alias, self.lease.correlation_id)
        finally:
            self.lease.backend.close()  # what this thread opened (a database connection)


@dataclass
class Outcome:
    #: COMMAND's exit status as a shell reports it (128+N: ended by signal N; 127: it could
    #: not be started); None: not started, the lock was lost first.
    status: int | None
    #: Why the lock was lost while run held it, or None.
    lost: str | None
    #: Whether run stopped COMMAND because of the loss.
    stopped: bool
    #: Whether the lease is still surely held (not lost, its ttl not run out): release it.
    held: bool


def supervise(lease: Lease, command: list[str], *, held_since: float, keep_running: bool,
              grace_ms: int, warn: Callable[[str], None]) -> Outcome:
    """Run ``command`` while ``lease`` is renewed; stop it when the lease is lost (unless
    ``keep_running``). ``held_since``: when the acquisition was asked for (monotonic)."""
    wake = threading.Event()  # COMMAND exited, or the lease was found lost
    keeper = LeaseKeeper(lease, held_since, on_lost=wake.set)
    if keeper.due:  # the acquisition waited: renew before COMMAND starts, so its ttl is whole
        keeper.renew()
    if keeper.check() is not None:
        return Outcome(None, keeper.lost, stopped=False, held=False)
    try:
        status, stopped = _run_child(command, keeper, wake, keep_running=keep_running,
                                     grace=grace_ms / 1000, warn=warn)
    finally:
        keeper.stop(wait=keeper.lost is None)  # a renewal that hangs is not waited for
    held = not lease.released and time.monotonic() < keeper.deadline
    return Outcome(status, keeper.lost, stopped, held)


def _run_child(command: list[str], keeper: LeaseKeeper, wake: threading.Event, *, keep_running: bool,
               grace: float, warn: Callable[[str], None]) -> tuple[int, bool]:
    """COMMAND's status, and whether it was stopped because the lease was lost."""
    started: list[subprocess.Popen] = []
    early: list[int] = []  # signals that came before COMMAND started: passed on then

    def forward(sig: int, _frame: Any) -> None:
        if not started:
            early.append(sig)
            return
        _signal_group(started[0].pid, sig)

    # Signal handlers belong to the main thread (signals are delivered there, and
    # signal.signal() raises elsewhere): call_command from another thread runs COMMAND
    # without forwarding, still tied to this process's life. They are in place before
    # COMMAND starts, so a signal sent once it is running is never this process's death.
    # (A handled signal is reset to its default action by exec: COMMAND does not inherit
    # an ignored SIGINT or SIGHUP from the shell that started run.)
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS} if main else {}
    try:
        try:
            # Started before the renewer thread: no thread of ours runs during the fork.
            child = subprocess.Popen(command, preexec_fn=partial(_tie_to_parent, os.getpid()))
        except OSError as e:
            warn(f"cannot run {command[0]!r}: {e}")
            return 127, False
        started.append(child)
        keeper.start()
        threading.Thread(target=lambda: (child.wait(), wake.set()), daemon=True,
                         name=f"locks run waiter {child.pid}").start()
        for sig in early:
            forward(sig, None)
        stopped = _wait(child, keeper, wake, name=command[0], keep_running=keep_running, grace=grace,
                        warn=warn)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    status = child.returncode
    return (128 - status if status < 0 else status), stopped


def _wait(child: subprocess.Popen, keeper: LeaseKeeper, wake: threading.Event, *, name: str,
          keep_running: bool, grace: float, warn: Callable[[str], None]) -> bool:
    """Wait for COMMAND; on a loss, stop its process group (unless ``keep_running``).
    Returns whether it was stopped."""
    group = child.pid
    reported = False
    term_at: float | None = None  # when SIGTERM went to the group
    kill_at: float | None = None  # when SIGKILL did
    while True:
        wake.clear()
        done = child.returncode is not None
        now = time.monotonic()
        lost = keeper.check()
        if lost is not None and not reported:
            reported = True
            if done:  # COMMAND ended meanwhile: handle_run says it
                pass
            elif keep_running:
                warn(f"warning: lock {keeper.lease.key!r} was lost ({lost}); {name!r} runs on "
                     "(--keep-running-on-loss)")
            else:
                keeper.stop(wait=False)
                warn(f"lock {keeper.lease.key!r} was lost ({lost}): stopping {name!r} (SIGTERM to its "
                     f"process group {group}, SIGKILL after {grace:g} s)")
                _signal_group(group, signal.SIGTERM)
                term_at = now
        if term_at is None:
            if done:
                return False
            timeout = None if reported else max(0.0, keeper.deadline - now)
        else:
            alive = _group_alive(group) if done else True
            if done and not alive:
                return True
            if kill_at is None and now >= term_at + grace:
                _signal_group(group, signal.SIGKILL)
                kill_at = now
            if done and kill_at is not None and now >= kill_at + KILL_WAIT:
                warn(f"warning: processes of {name!r}'s process group {group} are still there "
                     f"{KILL_WAIT:g} s after SIGKILL (zombies nobody reaps, or stuck in the kernel)")
                return True
            if done or kill_at is not None:
                timeout = GROUP_POLL
            else:
                timeout = max(0.0, term_at + grace - now)
        wake.wait(timeout)


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass


def _group_alive(group: int) -> bool:
    """Whether a process of the process group ``group`` still lives (zombies do not count,
    on Linux: /proc says which processes are zombies)."""
    if sys.platform.startswith("linux"):
        try:
            entries = os.listdir("/proc")
        except OSError:
            entries = []
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):  # gone meanwhile
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                return True
        if entries:
            return False
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tie_to_parent(parent_pid: int) -> None:
    """Runs in COMMAND's process between fork and exec: its own process group, and on
    Linux death with the parent (checked once more, in case the parent died already)."""
    os.setpgid(0, 0)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:
            os._exit(1)
