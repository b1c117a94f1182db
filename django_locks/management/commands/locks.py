"""``manage.py locks``: acquire, try, release, list, purge and run under a lock.

Exit codes, the same for every subcommand:
0 done; 1 the lock is busy, not held, or held by another token; 2 bad arguments;
3 the backend failed (unreachable, error). ``run`` exits with COMMAND's status, or with
``--conflict-exit-code`` (75, EX_TEMPFAIL) when the lock cannot be had.
"""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import datetime, timezone
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_locks import DEFAULT_LOCK_ALIAS, locks
from django_locks.backends.base import (
    BaseLock,
    Lease,
    LockInfo,
    validate_correlation_id,
    validate_key,
    validate_owner,
    validate_timeout,
    validate_ttl,
)
from django_locks.exceptions import (
    InvalidLockBackendError,
    LockBackendError,
    LockNotHeldError,
    LockTimeoutError,
)

EXIT_BUSY = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3
EX_TEMPFAIL = 75


class _SubcommandParser(CommandParser):
    """Argument errors of a subcommand exit 2, as argparse does, on every Django."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if getattr(self, "called_from_command_line", False):
            super().error(message)
        raise CommandError(f"Error: {message}", returncode=EXIT_USAGE)


def _exit(code: int, message: str) -> CommandError:
    return CommandError(message, returncode=code)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


class Command(BaseCommand):
    help = (
        "Acquire, try, release, list and purge locks, or run a command under a lock. "
        "Exit codes: 0 done, 1 busy / not held, 2 bad arguments, 3 backend error."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand", required=True, metavar="SUBCOMMAND", parser_class=_SubcommandParser
        )

        def subcommand(name: str, help_text: str) -> CommandParser:
            sub = subcommands.add_parser(name, help=help_text, description=help_text)
            sub.add_argument("--backend", default=DEFAULT_LOCK_ALIAS, metavar="ALIAS",
                             help='the LOCKS alias (default "default")')
            sub.add_argument("--correlation-id", default=None, metavar="ID",
                             help="a trace id, logged and stored with the lock")
            return sub

        acquire = subcommand("acquire", "Wait up to --timeout ms for KEY and hold it for --ttl ms.")
        acquire.add_argument("key", metavar="KEY")
        acquire.add_argument("--ttl", type=int, required=True, metavar="MS")
        acquire.add_argument("--timeout", type=int, default=0, metavar="MS")
        acquire.add_argument("--json", action="store_true", help="print one JSON object")

        attempt = subcommand("try", "One attempt to take KEY for --ttl ms.")
        attempt.add_argument("key", metavar="KEY")
        attempt.add_argument("--ttl", type=int, required=True, metavar="MS")
        attempt.add_argument("--json", action="store_true", help="print one JSON object")

        release = subcommand("release", "Release KEY held by --owner TOKEN, or whoever (--force).")
        release.add_argument("key", metavar="KEY")
        who = release.add_mutually_exclusive_group(required=True)
        who.add_argument("--owner", metavar="TOKEN")
        who.add_argument("--force", action="store_true")

        listing = subcommand("list", "The locks held now.")
        listing.add_argument("--json", action="store_true", help="print a JSON array")

        subcommand("purge", "Remove expired lock state, printing how many entries.")

        run = subcommand(
            "run", "Run COMMAND (everything after --) while holding KEY, renewed, like flock(1)."
        )
        run.add_argument("key", metavar="KEY")
        run.add_argument("--ttl", type=int, required=True, metavar="MS")
        run.add_argument("--timeout", type=int, default=0, metavar="MS")
        run.add_argument("--conflict-exit-code", type=int, default=EX_TEMPFAIL, metavar="N",
                         help="exit status when the lock cannot be had (default 75)")

    def run_from_argv(self, argv: list[str]) -> None:
        # ``run KEY ... -- COMMAND [ARGS...]``: everything after the first "--" is the
        # command, kept away from argparse (which would read its options as ours).
        self.run_command: list[str] = []
        if len(argv) > 2 and argv[2] == "run" and "--" in argv:
            split = argv.index("--")
            argv, self.run_command = argv[:split], argv[split + 1:]
        super().run_from_argv(argv)

    # ----------------------------------------------------------------------- dispatch

    def handle(self, *args: Any, **options: Any) -> None:
        subcommand = options["subcommand"]
        try:
            correlation_id = validate_correlation_id(options["correlation_id"])
            if "key" in options:
                validate_key(options["key"])
            if "ttl" in options:
                validate_ttl(options["ttl"], "--ttl")
            if "timeout" in options:
                validate_timeout(options["timeout"], "--timeout")
            if options.get("owner") is not None:
                validate_owner(options["owner"])
        except (TypeError, ValueError) as e:
            raise _exit(EXIT_USAGE, str(e)) from None
        try:
            backend = locks[options["backend"]]
        except InvalidLockBackendError as e:
            raise _exit(EXIT_USAGE, str(e)) from None
        handler = getattr(self, f"handle_{subcommand}")
        try:
            handler(backend, correlation_id, options)
        except LockBackendError as e:
            raise _exit(EXIT_BACKEND, f"backend error: {e}") from None

    # ----------------------------------------------------------------------- subcommands

    def _print_lease(self, lease: Lease, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps({
                "key": lease.key,
                "token": lease.token,
                "fencing_token": lease.fencing_token,
                "expires_at": _iso(lease.expires_at),
                "correlation_id": lease.correlation_id,
                "alias": lease.alias,
            }))
        else:
            self.stdout.write(lease.token)

    def _busy(self, backend: BaseLock, key: str, waited: int) -> CommandError:
        holder = backend.get_lock(key)
        until = f", held until {_iso(holder.expires_at)}" if holder else ""
        wait = f" within {waited} ms" if waited else ""
        return _exit(EXIT_BUSY, f"lock {key!r} is busy: not acquired{wait}{until}")

    def handle_acquire(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        key, timeout = options["key"], options["timeout"]
        try:
            lease = backend.lock(key, options["ttl"], timeout, correlation_id)
        except LockTimeoutError:
            raise self._busy(backend, key, timeout) from None
        self._print_lease(lease, options["json"])

    def handle_try(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        try:
            lease = backend.lock(options["key"], options["ttl"], 0, correlation_id)
        except LockTimeoutError:
            raise self._busy(backend, options["key"], 0) from None
        self._print_lease(lease, options["json"])

    def handle_release(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        key = options["key"]
        if options["force"]:
            if not backend.force_release(key):
                raise _exit(EXIT_BUSY, f"lock {key!r} is not held")
            self.stdout.write(f"force-released {key!r}")
            return
        try:
            backend.release_lock(correlation_id, key, owner=options["owner"])
        except LockNotHeldError:
            raise _exit(
                EXIT_BUSY, f"lock {key!r} is not held by that owner token (released, expired or "
                "taken over)"
            ) from None
        self.stdout.write(f"released {key!r}")

    def handle_list(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        if not backend.supports_enumeration:
            raise _exit(EXIT_USAGE, f"{backend!r} cannot list its locks (a generic cache)")
        held = backend.held_locks()
        if options["json"]:
            self.stdout.write(json.dumps([_info_json(info) for info in held], indent=2))
            return
        rows = [("KEY", "TOKEN", "CORRELATION ID", "ACQUIRED", "EXPIRES", "FENCING TOKEN")]
        rows += [
            (info.key, info.token, info.correlation_id or "-", _iso(info.acquired_at),
             _iso(info.expires_at), str(info.fencing_token))
            for info in held
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())
        if not held:
            self.stdout.write("(no locks held)")

    def handle_purge(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        self.stdout.write(f"purged {backend.purge()} expired lock entries")

    def handle_run(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        command = list(options.get("command") or getattr(self, "run_command", []))
        if not command:
            raise _exit(EXIT_USAGE, "run needs a COMMAND after --")
        conflict = options["conflict_exit_code"]
        if not 0 <= conflict <= 255:
            raise _exit(EXIT_USAGE, f"--conflict-exit-code must be 0-255, got {conflict}")
        key = options["key"]
        try:
            lease = backend.lock(key, options["ttl"], options["timeout"], correlation_id)
        except LockTimeoutError:
            self.stderr.write(f"lock {key!r} is busy: not running {command[0]!r}")
            raise SystemExit(conflict) from None
        lease.start_renewing()
        try:
            status = self._run_child(command)
        finally:
            try:
                lease.release()
            except LockNotHeldError:
                self.stderr.write(f"warning: lock {key!r} was lost while {command[0]!r} ran")
        if status:
            raise SystemExit(status)

    def _run_child(self, command: list[str]) -> int:
        try:
            child = subprocess.Popen(command)
        except OSError as e:
            self.stderr.write(f"cannot run {command[0]!r}: {e}")
            return 127
        forwarded = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, lambda sig, _: child.send_signal(sig)) for sig in forwarded}
        try:
            status = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 128 - status if status < 0 else status


def _info_json(info: LockInfo) -> dict[str, Any]:
    return {
        "key": info.key,
        "token": info.token,
        "correlation_id": info.correlation_id,
        "acquired_at": _iso(info.acquired_at),
        "expires_at": _iso(info.expires_at),
        "fencing_token": info.fencing_token,
    }
