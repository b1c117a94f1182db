"""``manage.py locks``: acquire, try, extend, release, show, list, purge and run under a lock.

Exit codes, the same for every subcommand:
0 done; 1 the lock is busy, not held, or held by another token; 2 bad arguments;
3 the backend failed (unreachable, error). ``run`` exits with COMMAND's status, or with
``--conflict-exit-code`` (75, EX_TEMPFAIL) when the lock cannot be had, or with 4 when the
lock was lost while it held it: by default COMMAND is then stopped (SIGTERM to its process
group, SIGKILL after ``--grace`` ms, 5000), unless ``--keep-running-on-loss`` lets it run on
(``run`` then exits with its status). See :mod:`django_locks.management.supervise`.

Every exit code is a ``CommandError(returncode=...)``: ``manage.py`` exits with it, and
``call_command("locks", ...)`` raises it (``run`` with a zero status returns normally).
Django's common options (``--settings``, ``-v``, ``--traceback``...) are accepted before
or after the subcommand.

From the command line, ``acquire``, ``try``, ``extend`` and ``run`` refuse a process-local
alias (MemoryLock, CacheLock on LocMemCache; ``backend.process_local``) with exit 2: the
lock would live in the command's own process, unseen by any other, and die with it.
Through ``call_command`` in a process that lives on (a test, a shell session) they work.
A ``--ttl`` under 1000 warns (``ShortTTLWarning``): it is milliseconds.

``acquire``, ``try`` and ``run`` take ``--shared`` (a shared, read lock) or ``--limit N``
(a place in a counting semaphore of N); the token printed is that holder's own, for
``release``/``extend --owner``, which act on exactly that holder. ``show`` and ``list``
print every holder with its mode: exclusive, shared, or "2 of 3" (holders of the key now,
of the limit the holder was admitted with). Remaining times are the backend's own
measurement (``LockInfo.remaining_ms``), never this machine's clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import partial
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, DjangoHelpFormatter

from django_locks import DEFAULT_LOCK_ALIAS, locks
from django_locks.backends.base import (
    BaseLock,
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
from django_locks.guard import LockGuard, free_in_ms, warn_if_short_ttl
from django_locks.inspection import CONFIGURATION, AliasListing, describe, failed, list_alias, list_aliases
from django_locks.management.supervise import DEFAULT_GRACE_MS, EXIT_LOST, supervise
from django_locks.values import (
    EXCLUSIVE,
    MAX_LIMIT,
    Mode,
    lock_holder,
    validate_mode,
    validate_page_arguments,
)

EXIT_BUSY = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3
EX_TEMPFAIL = 75

#: ``locks list``: the locks per alias one run shows (``--limit``).
DEFAULT_LIST_LIMIT = 100

#: The help of every subcommand's KEY.
KEY_HELP = "the lock's key: any text of 1 to 255 characters, without control characters"

#: Subcommands that take or keep a lock: refused on a process-local alias from the command line.
TAKES_A_LOCK = frozenset({"acquire", "try", "extend", "run"})

#: Django's options of every command that also work after the subcommand.
COMMON_OPTIONS = {"--verbosity", "--settings", "--pythonpath", "--traceback", "--no-color", "--force-color"}


def _usage_error(parser: CommandParser, message: str) -> None:
    """Exit 2 on an argument error: argparse's usage message from the command line, a
    ``CommandError(returncode=2)`` from ``call_command`` (Django's parser raises 1)."""
    if parser.called_from_command_line:
        CommandParser.error(parser, message)  # prints the usage, exits 2
    raise CommandError(f"Error: {message}", returncode=EXIT_USAGE)


class _SubcommandParser(CommandParser):
    """A subcommand's parser. With ``takes_command`` (``run``), everything after the first
    ``--`` is COMMAND, never read as our options: ``argparse.REMAINDER`` after the KEY
    positional would swallow ``--ttl`` and the rest too."""

    def __init__(self, *, takes_command: bool = False, **kwargs: Any) -> None:
        self.takes_command = takes_command
        super().__init__(**kwargs)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if not self.takes_command:
            return super().parse_known_args(args, namespace)
        args = sys.argv[1:] if args is None else list(args)
        command: list[str] = []
        if "--" in args:
            split = args.index("--")
            args, command = args[:split], args[split + 1:]
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.command = command
        return namespace, extras

    def error(self, message: str) -> None:  # type: ignore[override]
        _usage_error(self, message)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def _process_local_refusal(backend: BaseLock) -> str:
    return (
        f"{describe(backend)} is process-local: a lock taken by this command would live in "
        "this command's process only, unseen by every other process, and be gone when it exits. "
        "Use an alias whose backend is shared between processes (DatabaseLock, or CacheLock on "
        "Redis) with --backend ALIAS."
    )


def _mode_of(options: dict) -> Mode:
    """The mode of ``--shared`` / ``--limit N`` (argparse keeps them mutually exclusive)."""
    limit = options.get("limit")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"--limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return validate_mode(bool(options.get("shared")), 1 if limit is None else limit)


def _remaining(info: LockInfo) -> str:
    """The holder's remaining life as the backend measured it (on its own clock)."""
    return "unknown" if info.remaining_ms is None else f"{info.remaining_ms / 1000:.3f} s"


def _holders_phrase(holders: list[LockInfo]) -> str:
    """``held by 2 holders (2 of 2)``: how many hold the key now, and in which modes."""
    labels = ", ".join(dict.fromkeys(info.mode_label(len(holders)) for info in holders))
    return f"held by {len(holders)} holder{'s' if len(holders) != 1 else ''} ({labels})"


def _busy_detail(mode: Mode, holders: list[LockInfo]) -> str:
    """Why an acquisition in ``mode`` was refused, and when expiry alone would admit it."""
    detail = f"; {_holders_phrase(holders)}" if holders else ""
    if mode.shared and all(info.shared for info in holders):
        # Refused with no exclusive holder: a writer waits, and new readers queue behind it.
        return f"{detail}; an exclusive acquirer is waiting for it, and new shared ones wait behind it"
    ms = free_in_ms(mode, holders)
    if ms is not None:
        detail += f"; by expiry alone it could be had in {ms / 1000:.3f} s"
    return detail


#: The widest ``locks list`` table (below -v 2): keys, aliases and correlation ids are
#: shortened to fit, with ELLIPSIS where text was cut.
TABLE_WIDTH = 120
ELLIPSIS = "…"
#: The columns ``locks list`` shortens to fit TABLE_WIDTH, and the width each keeps at least.
SHORTENED = {"ALIAS": 8, "KEY": 16, "CORRELATION ID": 10}
#: Every column of ``locks list``; below -v 2 without ACQUIRED and EXPIRES (REMAINING says it).
COLUMNS = ("ALIAS", "KEY", "MODE", "TOKEN", "CORRELATION ID", "ACQUIRED", "EXPIRES", "REMAINING",
           "FENCING TOKEN")


def _columns(every_column: bool) -> tuple[str, ...]:
    return COLUMNS if every_column else tuple(c for c in COLUMNS if c not in ("ACQUIRED", "EXPIRES"))


def _holder_row(alias: str, info: LockInfo, holders: int, *, every_column: bool) -> dict[str, str]:
    row = {
        "ALIAS": alias, "KEY": info.key, "MODE": info.mode_label(holders), "TOKEN": info.token,
        "CORRELATION ID": info.correlation_id or "-", "ACQUIRED": _iso(info.acquired_at),
        "EXPIRES": _iso(info.expires_at), "REMAINING": _remaining(info),
        "FENCING TOKEN": str(info.fencing_token),
    }
    return {column: row[column] for column in _columns(every_column)}


def _elide(text: str, width: int) -> str:
    """``text`` in ``width`` characters: its start and its end, ELLIPSIS between them."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + ELLIPSIS + (text[-tail:] if tail else "")


def _table(columns: tuple[str, ...], rows: list[dict[str, str]], width: int | None) -> list[str]:
    """The lines of a table with a header, columns two spaces apart; with ``width``, the
    SHORTENED columns (widest first) cut down until the lines fit it, or each is at its
    least, and a last line saying so when a value was cut."""
    widths = {c: max([len(c), *(len(row[c]) for row in rows)]) for c in columns}
    shortened = [c for c in columns if c in SHORTENED]
    if width is not None:
        while sum(widths.values()) + 2 * (len(columns) - 1) > width:
            room = [c for c in shortened if widths[c] > max(SHORTENED[c], len(c))]
            if not room:
                break
            widest = max(room, key=lambda c: widths[c])
            widths[widest] -= 1
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    cut = False
    for row in rows:
        cells = []
        for c in columns:
            cell = _elide(row[c], widths[c])
            cut = cut or cell != row[c]
            cells.append(cell.ljust(widths[c]))
        lines.append("  ".join(cells).rstrip())
    if cut:
        lines.append(f"({ELLIPSIS} marks a value cut short to fit {width} columns: -v 2 or --json shows "
                     "every value in full)")
    return lines


@contextlib.contextmanager
def _log_records_off_the_console() -> Iterator[None]:
    """While the command says itself what it did: the library's log records reach the
    handlers the project configured, but with none configured for them, they are not
    printed on stderr by Python's last-resort handler (a raw copy of the command's line).
    Only around the calls it reports itself, and only for this command's process."""
    logger = logging.getLogger("django_locks")
    if logger.hasHandlers():
        yield
        return
    quiet = logging.NullHandler()
    logger.addHandler(quiet)
    try:
        yield
    finally:
        logger.removeHandler(quiet)


class Command(BaseCommand):
    help = (
        "Acquire, try, release, list and purge locks, or run a command under a lock. "
        "Exit codes: 0 done, 1 busy / not held, 2 bad arguments, 3 backend error; run: COMMAND's, "
        "75 busy, 4 lock lost."
    )
    requires_system_checks: list[str] = []
    #: call_command("locks", "run", KEY, "--ttl", MS, command=[...]) as well as "--", ...
    stealth_options = ("command",)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        self._common_options: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.error = partial(_usage_error, parser)  # type: ignore[method-assign]
        return parser

    def add_base_argument(self, parser: CommandParser, *args: str, **kwargs: Any) -> None:
        super().add_base_argument(parser, *args, **kwargs)
        if COMMON_OPTIONS.intersection(args):
            self._common_options.append((args, kwargs))

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand", required=True, metavar="SUBCOMMAND", parser_class=_SubcommandParser
        )
        #: Each subcommand's parser, and the default and help of its --backend (added last).
        made: list[tuple[CommandParser, str | None, str]] = []

        def subcommand(name: str, help_text: str, backend_help: str = 'the LOCKS alias (default "default")',
                       backend: str | None = DEFAULT_LOCK_ALIAS, **kwargs: Any) -> CommandParser:
            sub = subcommands.add_parser(name, help=help_text, description=help_text,
                                         formatter_class=DjangoHelpFormatter, **kwargs)
            made.append((sub, backend, backend_help))
            return sub

        ttl_help = ("how long the lock lives unless it is extended or released, in milliseconds "
                    "(a value under 1000 warns: 30 is 30 ms, not 30 s)")
        timeout_help = "how long to wait for the lock, in milliseconds (default 0: one attempt)"

        for name, help_text in (
            ("acquire", "Wait up to --timeout ms for KEY and hold it for --ttl ms."),
            ("try", "One attempt to take KEY for --ttl ms (acquire with --timeout 0)."),
        ):
            take = subcommand(name, help_text)
            take.add_argument("key", metavar="KEY", help=KEY_HELP)
            take.add_argument("--ttl", type=int, required=True, metavar="MS", help=ttl_help)
            if name == "acquire":
                take.add_argument("--timeout", type=int, default=0, metavar="MS", help=timeout_help)
            take.add_argument("--json", action="store_true", help="print one JSON object")
            self._mode_arguments(take)

        extend = subcommand("extend", "Reset the life of KEY, held by --owner TOKEN, to --ttl MS from now; "
                                      "prints the new expiry.")
        extend.add_argument("key", metavar="KEY", help=KEY_HELP)
        extend.add_argument("--owner", required=True, metavar="TOKEN",
                            help="the owner token acquire or try printed")
        extend.add_argument("--ttl", type=int, required=True, metavar="MS",
                            help="the lock's new life from now, in milliseconds")
        extend.add_argument("--json", action="store_true", help="print one JSON object")

        release = subcommand("release", "Release KEY held by --owner TOKEN, or whoever (--force).")
        release.add_argument("key", metavar="KEY", help=KEY_HELP)
        who = release.add_mutually_exclusive_group(required=True)
        who.add_argument("--owner", metavar="TOKEN", help="the owner token acquire or try printed")
        who.add_argument("--force", action="store_true", help="release every holder of KEY")

        show = subcommand("show", "The holder of KEY (exit 1 when it is free).")
        show.add_argument("key", metavar="KEY", help=KEY_HELP)
        show.add_argument("--json", action="store_true", help="print one JSON object")

        listing = subcommand("list", "The locks held now on every alias that can list them "
                                     f"(a table of at most {TABLE_WIDTH} columns; -v 2: every column, "
                                     "every value in full).",
                             backend_help="list this LOCKS alias only (default: every alias)", backend=None)
        listing.add_argument("--json", action="store_true", help="print a JSON array")
        listing.add_argument("--limit", type=int, default=DEFAULT_LIST_LIMIT, dest="page_limit", metavar="N",
                             help=f"the holders of at most N locks per alias (default {DEFAULT_LIST_LIMIT}; "
                                  "0: every lock held); the next page's command is printed on stderr")
        listing.add_argument("--prefix", default="", metavar="P", help="only keys that start with P")
        listing.add_argument("--cursor", default=None, metavar="C",
                             help="the page that starts at C, as the page before printed (needs --backend)")

        subcommand("purge", "Remove expired lock state, printing how many entries.")

        run = subcommand(
            "run", "Run COMMAND (everything after --) while holding KEY, renewed, like flock(1).",
            takes_command=True,
            usage="%(prog)s KEY --ttl MS [--timeout MS] [--shared | --limit N] "
                  "[--conflict-exit-code N] [--keep-running-on-loss] [--grace MS] [options] "
                  "-- COMMAND [ARG ...]",
        )
        run.add_argument("key", metavar="KEY", help=KEY_HELP)
        run.add_argument("--ttl", type=int, required=True, metavar="MS",
                         help="the lock's life in milliseconds, renewed while COMMAND runs: how long "
                              "a crashed run could keep it (a value under 1000 warns)")
        run.add_argument("--timeout", type=int, default=0, metavar="MS", help=timeout_help)
        run.add_argument("--conflict-exit-code", type=int, default=EX_TEMPFAIL, metavar="N",
                         help="exit status when the lock cannot be had (default 75); with 0 the "
                              "busy message is shown at -v 2 only, so that cron mails nothing")
        run.add_argument("--keep-running-on-loss", action="store_true",
                         help=f"when the lock is lost, let COMMAND run on and exit with its status "
                              f"(default: stop COMMAND and exit {EXIT_LOST})")
        run.add_argument("--grace", type=int, default=DEFAULT_GRACE_MS, metavar="MS",
                         help="when the lock is lost, the time COMMAND's process group has between "
                              f"SIGTERM and SIGKILL (default {DEFAULT_GRACE_MS})")
        self._mode_arguments(run)

        # After each subcommand's own options: --backend, --correlation-id, and Django's
        # options again, so that they work after the subcommand too (DjangoHelpFormatter
        # lists Django's last). SUPPRESS keeps a value given before the subcommand (or the
        # default) when absent here.
        for sub, backend, backend_help in made:
            sub.add_argument("--backend", default=backend, metavar="ALIAS", help=backend_help)
            sub.add_argument("--correlation-id", default=None, metavar="ID",
                             help="a trace id, logged and stored with the lock")
            for names, base in self._common_options:
                BaseCommand.add_base_argument(self, sub, *names, **{**base, "default": argparse.SUPPRESS})

    @staticmethod
    def _mode_arguments(sub: CommandParser) -> None:
        mode = sub.add_mutually_exclusive_group()
        mode.add_argument("--shared", action="store_true",
                          help="a shared (read) lock: held with other shared holders, never with "
                               "an exclusive one")
        mode.add_argument("--limit", type=int, default=None, metavar="N",
                          help=f"a counting semaphore: admitted while fewer than N (1-{MAX_LIMIT}) "
                               "hold KEY")

    # ----------------------------------------------------------------------- dispatch

    def handle(self, *args: Any, **options: Any) -> None:
        if not self._called_from_command_line:
            # Python code (call_command) gets Python's warnings, to filter or record.
            self._handle(options)
            return
        with warnings.catch_warnings():
            # On a terminal, as the command's own lines ("warning: ShortTTLWarning: ..."),
            # not Python's "sys:1: ShortTTLWarning: ..."; the filters (-W) still apply.
            warnings.showwarning = self._show_warning
            self._handle(options)

    def _show_warning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
        self.stderr.write(f"warning: {category.__name__}: {message}")

    def _handle(self, options: dict[str, Any]) -> None:
        subcommand = options["subcommand"]
        try:
            correlation_id = validate_correlation_id(options["correlation_id"])
            if "key" in options:
                validate_key(options["key"])
            if "ttl" in options:
                validate_ttl(options["ttl"], "--ttl")
                # No source line of the caller's to show (handle() formats it on a terminal).
                warn_if_short_ttl(options["ttl"], f"manage.py locks {subcommand} {options['key']!r}",
                                  option="--ttl", stacklevel=1000)
            if "timeout" in options:
                validate_timeout(options["timeout"], "--timeout")
            if options.get("owner") is not None:
                validate_owner(options["owner"])
            mode = _mode_of(options) if "limit" in options else EXCLUSIVE
            if subcommand == "list":
                _check_list_options(options)
            if subcommand == "run":
                if not options.get("command"):
                    raise ValueError("run needs a COMMAND after --")
                if not 0 <= options["conflict_exit_code"] <= 255:
                    raise ValueError(
                        f"--conflict-exit-code must be 0-255, got {options['conflict_exit_code']}"
                    )
                validate_timeout(options["grace"], "--grace")
        except (TypeError, ValueError) as e:
            raise CommandError(str(e), returncode=EXIT_USAGE) from None
        try:
            backend = locks[options["backend"]] if options["backend"] is not None else None
        except InvalidLockBackendError as e:
            raise CommandError(str(e), returncode=EXIT_USAGE) from None
        if (subcommand in TAKES_A_LOCK and backend is not None and backend.process_local
                and self._called_from_command_line):
            raise CommandError(_process_local_refusal(backend), returncode=EXIT_USAGE)
        if mode.shared and backend is not None and not backend.supports_shared:
            raise CommandError(f"{describe(backend)} cannot take shared locks (--shared): use an alias "
                               "whose backend can (DatabaseLock, CacheLock on Redis, MemoryLock)",
                               returncode=EXIT_USAGE)
        handler = self.handle_acquire if subcommand == "try" else getattr(self, f"handle_{subcommand}")
        options["mode"] = mode
        try:
            handler(backend, correlation_id, options)
        except LockBackendError as e:
            # One line: the alias, its backend, what failed (the missing tables said so).
            listing = failed(backend, e)
            raise CommandError(f"{listing.label}: {listing.message()}", returncode=EXIT_BACKEND) from None
        except NotImplementedError as e:  # a backend without shared locks or semaphores
            raise CommandError(f"{describe(backend)} cannot take a {mode.label()} lock: {e}",
                               returncode=EXIT_USAGE) from None

    # ----------------------------------------------------------------------- subcommands

    def handle_acquire(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        """``acquire``, and ``try`` (which has no --timeout: one attempt)."""
        key, timeout, mode = options["key"], options.get("timeout", 0), options["mode"]
        try:
            lease = backend.lock(key, options["ttl"], timeout, correlation_id,
                                 shared=mode.shared, limit=mode.limit)
        except LockTimeoutError:
            detail = _busy_detail(mode, backend.get_holders(key))
            wait = f" within {timeout} ms" if timeout else ""
            raise CommandError(
                f"lock {key!r} is busy: not acquired{wait}{detail}", returncode=EXIT_BUSY
            ) from None
        if options["json"]:
            self.stdout.write(json.dumps({
                "key": lease.key,
                "token": lease.token,
                "fencing_token": lease.fencing_token,
                "expires_at": _iso(lease.expires_at),
                "correlation_id": lease.correlation_id,
                "alias": lease.alias,
                "shared": lease.shared,
                "limit": lease.limit,
            }))
        else:
            self.stdout.write(lease.token)

    def handle_release(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        key = options["key"]
        if options["force"]:
            with _log_records_off_the_console():
                released = backend.force_release(key)
            if not released:
                raise CommandError(f"lock {key!r} is not held", returncode=EXIT_BUSY)
            self.stdout.write(f"force-released {key!r} (every holder)")
            return
        try:
            backend.release_lock(correlation_id, key, owner=options["owner"])
        except LockNotHeldError:
            raise CommandError(
                f"lock {key!r} is not held by that owner token (released, expired or taken over)",
                returncode=EXIT_BUSY,
            ) from None
        self.stdout.write(f"released {key!r}")

    def handle_extend(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        key = options["key"]
        try:
            expires_at = backend.extend_lock(correlation_id, key, options["ttl"], owner=options["owner"])
        except LockNotHeldError:
            raise CommandError(
                f"lock {key!r} is not held by that owner token (released, expired or taken over): "
                "not extended",
                returncode=EXIT_BUSY,
            ) from None
        if options["json"]:
            self.stdout.write(json.dumps({"key": key, "alias": backend.alias, "token": options["owner"],
                                          "expires_at": _iso(expires_at)}))
        else:
            self.stdout.write(_iso(expires_at))

    def handle_show(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        key = options["key"]
        holders = backend.get_holders(key)  # soonest expiry first
        if not holders:
            why = ""
            if backend.process_local and self._called_from_command_line:
                why = (f" ({describe(backend)} is process-local: this command's process holds none "
                       "of its locks)")
            raise CommandError(f"lock {key!r} is free on LOCKS[{backend.alias!r}]{why}",
                               returncode=EXIT_BUSY)
        count = len(holders)
        if options["json"]:
            # The object is the holder get_lock() answers (as before shared locks), and
            # "holders" lists every holder.
            data = {"alias": backend.alias, **_info_json(lock_holder(holders), count),
                    "holders": [_info_json(info, count) for info in holders]}
            self.stdout.write(json.dumps(data))
            return
        for number, info in enumerate(holders):
            if number:
                self.stdout.write("")
            rows = [
                ("key", info.key),
                ("alias", backend.alias),
                ("mode", info.mode_label(count)),
                ("token", info.token),
                ("correlation id", info.correlation_id or "-"),
                ("acquired", _iso(info.acquired_at)),
                ("expires", _iso(info.expires_at)),
                ("remaining", _remaining(info)),
                ("fencing token", str(info.fencing_token)),
            ]
            for name, value in rows:
                self.stdout.write(f"{name:<16}{value}")

    def handle_list(self, backend: BaseLock | None, correlation_id: str | None, options: dict) -> None:
        """Every alias that can enumerate (``--backend``: that alias only). An alias that
        cannot, or whose backend is down, is named on stderr with the reason; a backend
        error exits 3 after the others are shown. A process-local alias (its locks live in
        each process: this one holds none) is named with -v 2."""
        verbose = options["verbosity"] >= 2
        page = {"prefix": options["prefix"], "limit": options["page_limit"] or None}
        try:
            listings = ([list_alias(backend.alias, cursor=options["cursor"], **page)]
                        if backend is not None else list_aliases(**page))
        except (TypeError, ValueError) as e:  # a cursor of another alias's backend, say
            raise CommandError(str(e), returncode=EXIT_USAGE) from None
        held: list[tuple[str, LockInfo]] = []
        failures: list[AliasListing] = []
        for listing in listings:
            if listing.note is not None:  # cannot enumerate
                if backend is not None:
                    raise CommandError(f"{listing.label} {listing.message()}", returncode=EXIT_USAGE)
                self.stderr.write(f"{listing.label} {listing.message()}")
                continue
            if listing.error is not None:
                if backend is not None:
                    code = EXIT_USAGE if listing.error_kind == CONFIGURATION else EXIT_BACKEND
                    raise CommandError(f"{listing.label}: {listing.message()}", returncode=code)
                self.stderr.write(f"{listing.label}: {listing.message()}")
                failures.append(listing)
                continue
            if listing.process_local and self._called_from_command_line and verbose:
                self.stderr.write(f"{listing.label} is process-local: this command's process "
                                  "holds none of its locks, and no other process's show here")
            held += [(listing.alias, info) for info in listing.holders]
        counts = Counter((alias, info.key) for alias, info in held)  # holders per key
        if options["json"]:
            self.stdout.write(json.dumps([{"alias": alias, **_info_json(info, counts[alias, info.key])}
                                          for alias, info in held], indent=2))
        elif len(failures) < len(listings) or not listings:  # a table only of aliases that answered
            rows = [_holder_row(alias, info, counts[alias, info.key], every_column=verbose)
                    for alias, info in held]
            for line in _table(_columns(verbose), rows, width=None if verbose else TABLE_WIDTH):
                self.stdout.write(line)
            if not held:
                self.stdout.write("(no locks held)")
        for listing in listings:
            if listing.listed and listing.next_cursor is not None:
                of = f" of {listing.total}" if listing.total is not None else ""
                shown = f"{listing.lock_count}{of}"
                self.stderr.write(f"{listing.label}: {shown} locks shown; next page: "
                                  f"{_next_page_command(listing, options)}")
        if failures:
            raise CommandError(f"could not list {', '.join(f'LOCKS[{f.alias!r}]' for f in failures)}",
                               returncode=EXIT_BACKEND)

    def handle_purge(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        """Says what the count is: purge() returns entries cleared or removed."""
        holders = len(backend.expired_locks()) if backend.keeps_expired_state else 0
        count = backend.purge()
        entries = f"{count} {'entry' if count == 1 else 'entries'}"
        if backend.keeps_expired_state:
            self.stdout.write(
                f"purged {describe(backend)}: {entries}: {holders} expired "
                f"{'holder' if holders == 1 else 'holders'} cleared, and rows of locks released or "
                "expired over a minute ago deleted (a row keeps its key's fencing counter until then)"
            )
        else:
            self.stdout.write(
                f"purged {describe(backend)}: {entries} removed (locks that expired without a release)"
            )

    def handle_run(self, backend: BaseLock, correlation_id: str | None, options: dict) -> None:
        """COMMAND under the lock, renewed while it runs and stopped when the lock is lost
        (see :mod:`django_locks.management.supervise`)."""
        command, key, conflict = list(options["command"]), options["key"], options["conflict_exit_code"]
        keep_running: bool = options["keep_running_on_loss"]
        mode: Mode = options["mode"]
        # The one locking core; run renews the lease itself (it must know when it is lost).
        guard = LockGuard(key, ttl=options["ttl"], timeout=options["timeout"], backend=backend.alias,
                          correlation_id=correlation_id, shared=mode.shared, limit=mode.limit)
        asked = time.monotonic()
        try:
            lease = guard.acquire(key)
        except LockTimeoutError:
            detail = _busy_detail(mode, backend.get_holders(key))
            busy = f"lock {key!r} is busy: not running {shlex.join(command)}{detail}"
            if conflict == 0:
                # Not a failure, as asked: quiet (cron mails any output), told with -v 2.
                if options["verbosity"] >= 2:
                    self.stderr.write(busy)
                return
            raise CommandError(busy, returncode=conflict) from None
        outcome = supervise(lease, command, held_since=asked, keep_running=keep_running,
                            grace_ms=options["grace"], warn=self.stderr.write)
        lost = outcome.lost
        if outcome.held:
            try:
                lease.release()
            except LockNotHeldError:  # lost after the last renewal: extend() or release() logged it
                lost = "found when releasing it: it expired, was taken over or was force-released"
        status = outcome.status
        if status is None:
            raise CommandError(f"lock {key!r} was lost before {command[0]!r} started ({lost}): not "
                               "running it", returncode=EXIT_LOST)
        if lost is not None and not keep_running:
            what = (f"stopped it (status {status})" if outcome.stopped
                    else f"it had ended with status {status}")
            raise CommandError(f"lock {key!r} was lost while {command[0]!r} ran ({lost}); {what}",
                               returncode=EXIT_LOST)
        if lost is not None:
            self.stderr.write(f"warning: lock {key!r} was lost while {command[0]!r} ran ({lost}); "
                              f"it ran on (--keep-running-on-loss) and ended with status {status}")
        if status:
            raise CommandError(f"{command[0]!r} exited with status {status}", returncode=status)


def _check_list_options(options: dict[str, Any]) -> None:
    """``locks list``: a ValueError for a bad --limit, --prefix or --cursor."""
    if options["page_limit"] != 0:
        try:
            validate_page_arguments(options["prefix"], options["cursor"], options["page_limit"])
        except ValueError as e:
            raise ValueError(f"--{e}") from None  # "limit must be ..." -> "--limit must be ..."
    elif options["cursor"] is not None:
        raise ValueError("--cursor pages a listing: it takes a --limit other than 0")
    elif options["prefix"]:
        validate_page_arguments(options["prefix"], None, 1)
    if options["cursor"] is not None and options["backend"] is None:
        raise ValueError("--cursor is the cursor of one alias's page: give its --backend too")


def _next_page_command(listing: AliasListing, options: dict[str, Any]) -> str:
    """The ``manage.py locks list`` that shows the page after ``listing``'s."""
    command = ["python", "manage.py", "locks", "list", "--backend", listing.alias]
    if options["page_limit"] != DEFAULT_LIST_LIMIT:
        command += ["--limit", str(options["page_limit"])]
    if options["prefix"]:
        command += ["--prefix", options["prefix"]]
    if options["json"]:
        command.append("--json")
    command += ["--cursor", listing.next_cursor or ""]
    return shlex.join(command)


def _info_json(info: LockInfo, holders: int) -> dict[str, Any]:
    """One holder; ``holders``: how many hold its key now (for the mode's "2 of 3")."""
    return {
        "key": info.key,
        "token": info.token,
        "correlation_id": info.correlation_id,
        "acquired_at": _iso(info.acquired_at),
        "expires_at": _iso(info.expires_at),
        "remaining_ms": info.remaining_ms,  # the backend's own measurement
        "fencing_token": info.fencing_token,
        "shared": info.shared,
        "limit": info.limit,
        "mode": info.mode_label(holders),
    }
