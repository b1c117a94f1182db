"""``manage.py locks`` as a real process: exit statuses, signals, token capture in a shell,
and Django's own options (``--settings``...) before or after the subcommand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from django_locks import locks
from tests.helpers import COMMAND, ROOT, locks_process, subprocess_env, wait_until


def test_token_capture_in_a_shell():
    script = (
        f"TOKEN=$({' '.join(COMMAND)} try nightly --ttl 60000) || exit 9\n"
        "echo token=$TOKEN\n"
        f"{' '.join(COMMAND)} release nightly --owner \"$TOKEN\" || exit 8\n"
        "echo released\n"
    )
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("token=") and len(lines[0]) == len("token=") + 32
    assert lines[-1] == "released"
    assert locks["default"].get_lock("nightly") is None


def test_exit_codes_of_the_process():
    with locks["default"].lock("job", 60_000):
        busy = locks_process("try", "job", "--ttl", "1000")
        assert busy.returncode == 1 and "busy" in busy.stderr
        assert locks_process("run", "job", "--ttl", "1000", "--", "true").returncode == 75
        custom = locks_process("run", "job", "--ttl", "1000", "--conflict-exit-code", "9", "--", "true")
        assert custom.returncode == 9 and "busy" in custom.stderr
    usage = locks_process("try", "job", "--ttl", "abc")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    down = locks_process("list", "--backend", "unreachable")
    assert down.returncode == 3 and "backend error" in down.stderr


def test_run_exits_with_the_command_status_and_holds_the_lock_meanwhile():
    inner = f"{' '.join(COMMAND)} try job --ttl 1000; echo inner=$?; exit 7"
    result = locks_process("run", "job", "--ttl", "60000", "--", "bash", "-c", inner)
    assert result.returncode == 7, result.stderr
    assert "inner=1" in result.stdout  # the lock was held while the command ran
    assert locks["default"].get_lock("job") is None  # and released after


def test_run_forwards_sigterm_and_releases_after(tmp_path):
    marker = tmp_path / "got-term"
    child = (
        f"trap 'echo term > {marker}; exit 42' TERM; "
        "echo ready; while true; do sleep 0.05; done"
    )
    process = subprocess.Popen([*COMMAND, "run", "job", "--ttl", "60000", "--", "bash", "-c", child],
                               cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    assert locks["default"].get_lock("job") is not None
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(30) == 42
    assert marker.read_text().strip() == "term"
    wait_until(lambda: locks["default"].get_lock("job") is None, timeout=5)


def test_run_killed_child_exits_128_plus_the_signal():
    result = locks_process("run", "job", "--ttl", "60000", "--", "sh", "-c", "kill -KILL $$")
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    assert locks["default"].get_lock("job") is None


def _without_settings_module() -> dict[str, str]:
    env = subprocess_env()
    del env["DJANGO_SETTINGS_MODULE"]
    return env


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--backend", "default", "--settings=tests.settings"],
        ["list", "--settings", "tests.settings", "-v", "2", "--no-color", "--backend", "default"],
        ["--settings=tests.settings", "list", "--backend", "default"],
        ["--settings=tests.settings", "run", "k", "--ttl", "60000", "--", "true"],
        ["--settings=tests.settings", "-v", "2", "run", "k", "--ttl", "60000", "--", "true"],
        ["run", "k", "--ttl", "60000", "--settings=tests.settings", "-v", "2", "--", "true"],
        ["-v", "2", "run", "k", "--settings=tests.settings", "--ttl", "60000", "--", "true"],
    ],
)
def test_django_options_before_or_after_the_subcommand(args):
    result = locks_process(*args, env=_without_settings_module())
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert locks["default"].get_lock("k") is None


def test_without_settings_option_nor_variable_the_command_is_not_found():
    # The control of the test above: the settings really come from --settings.
    result = locks_process("list", env=_without_settings_module())
    assert result.returncode != 0 and "locks" in result.stderr


@pytest.mark.parametrize("args", [["--pythonpath", str(ROOT), "list", "--backend", "default",
                                   "--settings=tests.settings"],
                                  ["list", "--backend", "default", "--settings=tests.settings",
                                   f"--pythonpath={ROOT}"]])
def test_pythonpath_before_or_after_the_subcommand(args, tmp_path):
    env = _without_settings_module()
    del env["PYTHONPATH"]
    control = locks_process("list", "--settings=tests.settings", env=env, cwd=tmp_path)
    assert control.returncode != 0  # tests.settings is not importable from tmp_path alone
    result = locks_process(*args, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(no locks held)" in result.stdout


@pytest.mark.parametrize("args", [["--traceback", "list", "--backend", "nope"],
                                  ["list", "--backend", "nope", "--traceback"]])
def test_traceback_before_or_after_the_subcommand(args):
    plain = locks_process("list", "--backend", "nope")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    result = locks_process(*args)
    assert "Traceback (most recent call last)" in result.stderr and "CommandError" in result.stderr
    assert result.returncode == 1  # an uncaught exception: --traceback re-raises the error


# A COMMAND that prints its pid, then appends the time to a file every 20 ms.
TICKER = (
    "import os, sys, time\n"
    "print(os.getpid(), flush=True)\n"
    "while True:\n"
    "    with open(sys.argv[1], 'a') as f: f.write(f'{time.time()}\\n')\n"
    "    time.sleep(0.02)\n"
)


@pytest.fixture
def spawned():
    """Processes a test starts (by pid, with their process groups): all ended afterwards,
    also when the test fails, so that nothing keeps running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its new parent) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("alias", ["default", "redis"])
def test_command_never_outlives_a_killed_run(tmp_path, alias, spawned):
    """SIGKILL the `locks run` process: COMMAND is gone within a second, and a second run
    (once the lock expires) never overlaps the first (timestamps both write)."""
    import time

    from tests import proof

    first_log, second_log = tmp_path / "first", tmp_path / "second"
    first = subprocess.Popen(
        [*COMMAND, "run", "job", "--ttl", "3000", "--backend", alias, "--",
         sys.executable, "-c", TICKER, str(first_log)],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, text=True,
    )
    spawned.append(first.pid)
    child_pid = int(first.stdout.readline())
    spawned.append(child_pid)
    wait_until(lambda: first_log.exists() and first_log.read_text().count("\n") >= 3)
    os.kill(first.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    first.wait(10)
    wait_until(lambda: not _pid_alive(child_pid), timeout=5)
    assert time.monotonic() - killed_at < 1.0  # gone within a second
    proof.record_fault("SIGKILL of locks run")
    second = subprocess.Popen(
        [*COMMAND, "run", "job", "--ttl", "3000", "--timeout", "20000", "--backend", alias, "--",
         sys.executable, "-c", TICKER, str(second_log)],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, text=True,
    )
    spawned.append(second.pid)
    second_child = int(second.stdout.readline())  # it got the lock (after the ttl ran out)
    spawned.append(second_child)
    wait_until(lambda: second_log.exists() and second_log.read_text().count("\n") >= 3)
    os.kill(second.pid, signal.SIGTERM)
    second.wait(30)
    wait_until(lambda: not _pid_alive(second_child), timeout=5)
    last_of_first = max(map(float, first_log.read_text().split()))
    first_of_second = min(map(float, second_log.read_text().split()))
    assert first_of_second > last_of_first  # never both at once


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
def test_run_handles_sighup_and_sigquit_like_sigterm(tmp_path, sig, spawned):
    # (Not bash: it ignores SIGQUIT.)
    process = subprocess.Popen([*COMMAND, "run", "job", "--ttl", "60000", "--",
                                sys.executable, "-c", TICKER, str(tmp_path / "ticks")],
                               cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    spawned.append(process.pid)
    spawned.append(int(process.stdout.readline()))
    os.kill(process.pid, sig)
    assert process.wait(30) == 128 + sig  # COMMAND got the signal; run exits with its status
    wait_until(lambda: locks["default"].get_lock("job") is None, timeout=5)  # and released


def test_a_key_that_is_not_utf8_exits_2_and_touches_nothing():
    from tests import proof

    before = locks["default"].held_locks()
    result = subprocess.run([*COMMAND, "try", b"job\xff", "--ttl", "1000"], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, timeout=60)
    proof.record_bad_inputs("manage.py locks")
    assert result.returncode == 2, result.stderr
    assert b"key must be encodable as UTF-8" in result.stderr
    assert locks["default"].held_locks() == before


# A COMMAND that writes its pid to argv[1] once it runs, then waits (deadline 60 s) until
# the file argv[2] exists: the test decides when each run ends.
HOLD_UNTIL_OPENED = (
    "import os, sys, time\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(sys.argv[2]):\n"
    "    if time.monotonic() > deadline: sys.exit(3)\n"
    "    time.sleep(0.01)\n"
)


# `manage.py locks ARGV...` in a process whose "waiting up to ... for lock" debug record
# (the first failed attempt of a waiter) creates the file argv[1].
ANNOUNCE_WAITING = (
    "import logging, sys\n"
    "from django.core.management import execute_from_command_line\n"
    "class Announce(logging.Handler):\n"
    "    def emit(self, record):\n"
    "        if record.getMessage().startswith('waiting up to'):\n"
    "            open(sys.argv[1], 'w').close()\n"
    "logging.getLogger().addHandler(Announce())  # django_locks records propagate to the root\n"
    "execute_from_command_line(['manage.py', 'locks', *sys.argv[2:]])\n"
)


@pytest.mark.parametrize("alias", ["default", "postgres", "redis"])
def test_run_with_limit_2_lets_two_runs_overlap_and_a_third_waits_or_refuses(tmp_path, alias, spawned):
    """Three `locks run --limit 2` processes: two are inside COMMAND at once, the third is
    refused (--timeout 0, exit 75) or waits (--timeout) until one of the two ends."""
    if alias not in list(locks):
        pytest.skip(f"LOCKS[{alias!r}] is not configured in this run")

    def start(name: str, *options: str, announce_waiting: bool = False) -> subprocess.Popen:
        argv = ["run", "imports", "--ttl", "60000", "--limit", "2", "--backend", alias, *options,
                "--", sys.executable, "-c", HOLD_UNTIL_OPENED, str(tmp_path / f"{name}.in"),
                str(tmp_path / f"{name}.open")]
        launcher = [*COMMAND, *argv]
        if announce_waiting:  # `locks run` with a log handler that marks the start of its wait
            launcher = [sys.executable, "-c", ANNOUNCE_WAITING, str(tmp_path / f"{name}.waiting"), *argv]
        process = subprocess.Popen(launcher, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        spawned.append(process.pid)
        return process

    def inside(name: str) -> bool:
        return (tmp_path / f"{name}.in").exists()

    first, second = start("first"), start("second")
    wait_until(lambda: inside("first") and inside("second"), timeout=30)  # both at once
    holders = locks[alias].get_holders("imports")
    assert len(holders) == 2 and {h.limit for h in holders} == {2}

    refused = start("refused")  # --timeout 0: one attempt
    assert refused.wait(30) == 75, refused.stderr.read()
    assert "busy" in refused.stderr.read() and not inside("refused")

    waiting = start("waiting", "--timeout", "30000", announce_waiting=True)
    wait_until(lambda: (tmp_path / "waiting.waiting").exists(), timeout=30)  # refused, now waiting
    assert waiting.poll() is None and not inside("waiting")
    assert len(locks[alias].get_holders("imports")) == 2
    (tmp_path / "first.open").touch()
    assert first.wait(30) == 0
    wait_until(lambda: inside("waiting"), timeout=30)  # it took the place the first gave back
    assert inside("second") and second.poll() is None  # the second is still inside
    assert len(locks[alias].get_holders("imports")) == 2
    for name in ("second", "waiting"):
        (tmp_path / f"{name}.open").touch()
    assert second.wait(30) == 0 and waiting.wait(30) == 0
    wait_until(lambda: locks[alias].get_holders("imports") == [], timeout=5)


# ------------------------------------------------------------------ the lock lost while COMMAND runs

# A COMMAND (role "command") that starts a helper (role "helper") in its process group, then
# waits (deadline 120 s). Each writes "ROLE PID" to OUT.term when it gets SIGTERM, then
# exits ("polite") or carries on ("stubborn"). The command writes "PID HELPER_PID" to
# OUT.pids once both handlers are in place.
VICTIM = """\
import os, signal, subprocess, sys, time
role, out, manner = sys.argv[1:4]

def on_term(sig, frame):
    with open(out + ".term", "a") as f:
        f.write(f"{role} {os.getpid()}\\n")
    if manner == "polite":
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
if role == "command":
    helper = subprocess.Popen([sys.executable, __file__, "helper", out, manner], stdout=subprocess.PIPE)
    helper.stdout.readline()  # its handler is in place
    with open(out + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {helper.pid}")
    os.replace(out + ".tmp", out + ".pids")
else:
    print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(3)
"""


def _group_members(group: int) -> list[int]:
    """The live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry))
    return members


class Victim:
    """`locks run` of VICTIM, its pids, and the SIGTERMs its processes recorded."""

    def __init__(self, tmp_path, spawned, alias: str, *options: str, manner: str = "polite",
                 env: dict[str, str] | None = None) -> None:
        script = tmp_path / "victim.py"
        script.write_text(VICTIM)
        self.out = tmp_path / "victim"
        self.stderr = tmp_path / "run.stderr"
        with open(self.stderr, "w") as stderr:
            self.process = subprocess.Popen(
                [*COMMAND, "run", "job", "--ttl", "60000", "--backend", alias, *options, "--",
                 sys.executable, str(script), "command", str(self.out), manner],
                cwd=ROOT, env=env or subprocess_env(), stderr=stderr, text=True,
            )
        spawned.append(self.process.pid)
        pids = tmp_path / "victim.pids"
        wait_until(pids.exists, timeout=30)
        self.command, self.helper = map(int, pids.read_text().split())
        spawned.append(self.command)  # the process group too (the fixture kills both)

    def terms(self) -> set[str]:
        path = self.out.with_suffix(".term")
        return set(path.read_text().splitlines()) if path.exists() else set()

    def message(self) -> str:
        return self.stderr.read_text()


def _lock_aliases(*aliases: str) -> list:
    return [pytest.param(alias, marks=pytest.mark.skipif(alias not in list(locks),
                                                          reason=f"LOCKS[{alias!r}] is not configured"))
            for alias in aliases]


@pytest.mark.parametrize("alias", _lock_aliases("default", "postgres", "redis"))
def test_a_force_release_stops_the_command_and_its_process_group(tmp_path, alias, spawned):
    """The lock of a running `locks run` is force-released: COMMAND and the helper it
    started get SIGTERM within a renewal interval, the whole group is gone when run exits
    with 4, and a second run can start."""
    import time

    from django_locks.management.supervise import EXIT_LOST, MAX_RENEW_INTERVAL

    victim = Victim(tmp_path, spawned, alias)
    assert locks[alias].force_release("job")
    released = time.monotonic()
    assert victim.process.wait(30) == EXIT_LOST, victim.message()
    elapsed = time.monotonic() - released
    assert elapsed < MAX_RENEW_INTERVAL + 2.0, elapsed  # seen at the next renewal, not the ttl's third
    assert victim.terms() == {f"command {victim.command}", f"helper {victim.helper}"}
    assert _group_members(victim.command) == []
    message = victim.message()
    assert "lock 'job' was lost" in message and "stopping" in message and "stopped it (status 0)" in message
    second = locks_process("run", "job", "--ttl", "60000", "--backend", alias, "--", "true")
    assert second.returncode == 0, second.stderr


@pytest.mark.parametrize("alias", _lock_aliases("default", "redis"))
def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, alias, spawned):
    """COMMAND and its helper record SIGTERM and carry on: SIGKILL reaches the whole group
    once --grace has passed."""
    import time

    from django_locks.management.supervise import EXIT_LOST, MAX_RENEW_INTERVAL

    victim = Victim(tmp_path, spawned, alias, "--grace", "1500", manner="stubborn")
    assert locks[alias].force_release("job")
    released = time.monotonic()
    wait_until(lambda: len(victim.terms()) == 2, timeout=MAX_RENEW_INTERVAL + 2.0)
    assert victim.process.poll() is None and len(_group_members(victim.command)) == 2  # the grace
    assert victim.process.wait(30) == EXIT_LOST, victim.message()
    elapsed = time.monotonic() - released
    assert 1.5 <= elapsed < MAX_RENEW_INTERVAL + 1.5 + 2.0, elapsed  # SIGKILL 1.5 s after SIGTERM
    assert victim.terms() == {f"command {victim.command}", f"helper {victim.helper}"}
    assert _group_members(victim.command) == []
    assert "SIGKILL after 1.5 s" in victim.message()
    assert f"stopped it (status {128 + signal.SIGKILL})" in victim.message()


@pytest.mark.parametrize("alias", _lock_aliases("default", "redis"))
def test_keep_running_on_loss_lets_the_command_run_on_and_exits_with_its_status(tmp_path, alias, spawned):
    script = tmp_path / "hold.py"
    script.write_text(HOLD_UNTIL_OPENED + "sys.exit(7)\n")
    stderr_path = tmp_path / "run.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [*COMMAND, "run", "job", "--ttl", "60000", "--backend", alias, "--keep-running-on-loss",
             "--", sys.executable, str(script), str(tmp_path / "in"), str(tmp_path / "open")],
            cwd=ROOT, env=subprocess_env(), stderr=stderr,
        )
    spawned.append(process.pid)
    # The file exists before its pid is written: wait for the pid itself (a CI rehearsal
    # once read it empty).
    written = wait_until(lambda: (tmp_path / "in").exists() and (tmp_path / "in").read_text().strip(),
                         timeout=30)
    child = int(written)
    spawned.append(child)
    assert locks[alias].force_release("job")
    wait_until(lambda: "runs on (--keep-running-on-loss)" in stderr_path.read_text(), timeout=5)
    assert process.poll() is None and _pid_alive(child)
    with locks[alias].lock("job", 60_000) as other:  # the lock is free for others meanwhile
        (tmp_path / "open").touch()
        assert process.wait(30) == 7  # COMMAND's status
        assert "ran on (--keep-running-on-loss) and ended with status 7" in stderr_path.read_text()
        assert locks[alias].get_lock("job").token == other.token  # run left the other's lock alone


@pytest.mark.parametrize("fault", ["SIGSTOP", "killed"])
def test_a_backend_failing_for_a_whole_ttl_counts_as_a_loss(tmp_path, fault, spawned):
    """Redis (a server of the test's own) stops answering (SIGSTOP) or is gone: the renewals
    fail, and once no renewal has succeeded for a whole ttl by run's monotonic clock,
    COMMAND is stopped and run exits 4 (not before: the lock may still be held until then)."""
    import time

    from django_locks.management.supervise import EXIT_LOST, MAX_RENEW_INTERVAL
    from tests import proof
    from tests.servers import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        script = tmp_path / "victim.py"
        script.write_text(VICTIM)
        out, stderr_path = tmp_path / "victim", tmp_path / "run.stderr"
        with open(stderr_path, "w") as stderr:
            process = subprocess.Popen(
                [*COMMAND, "run", "job", "--ttl", "3000", "--backend", "redis", "--",
                 sys.executable, str(script), "command", str(out), "polite"],
                cwd=ROOT, env=subprocess_env(REDIS_URL=server.url), stderr=stderr,
            )
        spawned.append(process.pid)
        wait_until((tmp_path / "victim.pids").exists, timeout=30)
        command, helper = map(int, (tmp_path / "victim.pids").read_text().split())
        spawned.append(command)
        if fault == "SIGSTOP":
            os.kill(server.process.pid, signal.SIGSTOP)
        else:
            server.stop()
        failed = time.monotonic()
        proof.record_fault(f"Redis {fault} under locks run")
        assert process.wait(30) == EXIT_LOST, stderr_path.read_text()
        elapsed = time.monotonic() - failed
        # The last renewal that succeeded began at most one interval before the fault.
        assert 3.0 - MAX_RENEW_INTERVAL - 0.1 <= elapsed < 3.0 + 2.0, elapsed
        assert set((tmp_path / "victim.term").read_text().splitlines()) == {f"command {command}",
                                                                            f"helper {helper}"}
        assert _group_members(command) == []
        assert "no renewal succeeded for its whole ttl (3 s)" in stderr_path.read_text()
    finally:
        if server.process is not None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


# Prints which of SIGINT and SIGHUP it ignores, then waits (deadline 60 s).
IGNORED_SIGNALS = """\
import signal, sys, time
ignored = int(next(line for line in open("/proc/self/status") if line.startswith("SigIgn:")).split()[1], 16)
print(" ".join(f"{sig.name}={bool(ignored >> (sig - 1) & 1)}" for sig in (signal.SIGINT, signal.SIGHUP)),
      flush=True)
time.sleep(60)
sys.exit(3)
"""


def test_command_does_not_inherit_ignored_sigint_from_the_shell(spawned):
    """A shell that runs `locks run` with SIGINT and SIGHUP ignored (a background job, nohup):
    run forwards them, and COMMAND has their default action (exec resets handled signals;
    an ignored one would be inherited), so a forwarded SIGINT ends it."""
    launcher = ["sh", "-c", "trap '' INT HUP; exec \"$@\"", "sh", *COMMAND, "run", "job", "--ttl", "60000",
                "--", sys.executable, "-c", IGNORED_SIGNALS]
    control = subprocess.run([*launcher[:4], sys.executable, "-c", "import signal; "
                              "print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"],
                             capture_output=True, text=True, timeout=30)
    assert control.stdout.strip() == "True"  # the launcher does make SIGINT ignored
    process = subprocess.Popen(launcher, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    spawned.append(process.pid)
    assert process.stdout.readline().split() == ["SIGINT=False", "SIGHUP=False"]
    os.kill(process.pid, signal.SIGINT)  # (sh exec'd run: same pid)
    assert process.wait(30) == 128 + signal.SIGINT
    wait_until(lambda: locks["default"].get_lock("job") is None, timeout=5)
