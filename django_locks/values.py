"""The bottom of django_locks: limits, argument validation and the value types.

Every other module may import this one; it imports nothing of django_locks. The
contract these values serve is described in ``docs/contract.md`` and implemented by
:class:`django_locks.backends.base.BaseLock`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import NamedTuple, TypeVar

#: Longest key, in characters, accepted by every backend.
MAX_KEY_LENGTH = 255
#: Longest correlation id, in characters.
MAX_CORRELATION_ID_LENGTH = 255
#: Largest ttl and timeout accepted, in milliseconds (ten years).
MAX_MILLISECONDS = 10 * 365 * 24 * 3600 * 1000
#: Owner tokens are this many lowercase hex characters (128 random bits).
TOKEN_LENGTH = 32
#: Largest ``limit`` of a counting semaphore.
MAX_LIMIT = 10_000
#: How long (ms) a waiting exclusive acquirer keeps new shared acquisitions of its key
#: waiting behind it after its last attempt: each of its attempts renews the mark, and it
#: attempts at least every :data:`WRITER_RECHECK_MS`; a writer that gave up or died stops
#: holding readers back within this time.
WRITER_MARK_MS = 1000
#: Longest wait (ms) of a waiting exclusive acquirer between two attempts.
WRITER_RECHECK_MS = 250

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(rf"[0-9a-f]{{{TOKEN_LENGTH}}}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- validation


def _check_text(value: object, name: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters, got {len(value)}")
    match = CONTROL_CHARACTERS.search(value)
    if match:
        raise ValueError(
            f"{name} must not contain control characters "
            f"(found U+{ord(match.group()):04X} at position {match.start()})"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no backend can store it
        raise ValueError(
            f"{name} must be encodable as UTF-8 (found the lone surrogate U+{ord(value[e.start]):04X} "
            f"at position {e.start})"
        ) from None
    return value


def validate_key(key: object, name: str = "key") -> str:
    """A key is a non-empty str of at most 255 characters, without control characters,
    encodable as UTF-8 (no lone surrogates)."""
    return _check_text(key, name, MAX_KEY_LENGTH)


#: A duration argument: an int number of milliseconds, or a ``datetime.timedelta``.
Milliseconds = int | timedelta

_ONE_MS = timedelta(milliseconds=1)


def timedelta_to_ms(value: timedelta, name: str) -> int:
    """``value`` in whole milliseconds, rounded up (a lock lives, and a waiter waits, at
    least as long as asked). Negative, or above zero but below one millisecond: ValueError."""
    if value < timedelta(0):
        raise ValueError(f"{name} must not be a negative timedelta, got {value!r}")
    if timedelta(0) < value < _ONE_MS:
        raise ValueError(f"{name} must be at least 1 millisecond, got {value!r}")
    microseconds = value // timedelta(microseconds=1)
    return -(-microseconds // 1000)


def validate_milliseconds(value: object, name: str, *, minimum: int) -> int:
    """An int (not a bool) between ``minimum`` and ten years, in milliseconds, or a
    ``datetime.timedelta`` in that range (converted to whole milliseconds, rounded up)."""
    if isinstance(value, timedelta):
        value = timedelta_to_ms(value, name)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int number of milliseconds or a datetime.timedelta, "
            f"not {type(value).__name__}"
        )
    if value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound} milliseconds, got {value}")
    if value > MAX_MILLISECONDS:
        raise ValueError(f"{name} must be at most {MAX_MILLISECONDS} milliseconds (ten years), got {value}")
    return value


def validate_ttl(ttl: object, name: str = "ttl") -> int:
    return validate_milliseconds(ttl, name, minimum=1)


def validate_timeout(timeout: object, name: str = "timeout") -> int:
    return validate_milliseconds(timeout, name, minimum=0)


def validate_correlation_id(correlation_id: object) -> str | None:
    """``None``, or a str of at most 255 characters without control characters."""
    if correlation_id is None or correlation_id == "":
        return None
    return _check_text(correlation_id, "correlation_id", MAX_CORRELATION_ID_LENGTH)


def validate_owner(owner: object) -> str | None:
    """``None``, or an owner token: 32 lowercase hex characters, as :func:`new_token` makes."""
    if owner is None:
        return None
    _check_text(owner, "owner", TOKEN_LENGTH)
    if not _TOKEN.fullmatch(owner):  # type: ignore[arg-type]
        raise ValueError(f"owner must be an owner token ({TOKEN_LENGTH} lowercase hex characters)")
    return owner  # type: ignore[return-value]


def validate_mode(shared: object, limit: object) -> Mode:
    """``shared`` must be a bool; ``limit`` an int (not a bool) from 1 to
    :data:`MAX_LIMIT`; a shared lock has no limit (``limit`` stays 1)."""
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be True or False, not {type(shared).__name__} {shared!r}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__} {limit!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if shared and limit != 1:
        raise ValueError(
            "shared=True takes no limit (a shared lock admits any number of readers); "
            f"got limit={limit}: use shared=True for readers, or limit=N for a semaphore"
        )
    return SHARED if shared else EXCLUSIVE if limit == 1 else Mode(False, limit)


def validate_acquire_arguments(
    key: object, ttl: object, timeout: object, correlation_id: object
) -> tuple[str, int, int, str | None]:
    """The arguments of an acquisition, checked (``timeout=0``: a single attempt; ``None``
    is refused, since redis-py users read it as "wait forever")."""
    return (
        validate_key(key),
        validate_ttl(ttl),
        validate_timeout(timeout),
        validate_correlation_id(correlation_id),
    )


def new_token() -> str:
    """A fresh random owner token (128 bits, hex)."""
    return secrets.token_hex(TOKEN_LENGTH // 2)


def datetime_from_us(epoch_us: int) -> datetime:
    """An aware UTC datetime from microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=int(epoch_us))


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Mode:
    """How an acquisition shares its key.

    * exclusive (the default, ``limit=1``): alone on the key;
    * ``shared=True``: with any number of shared holders, never with a non-shared one;
    * ``limit=N``: a counting semaphore, admitted while fewer than N holders (of any
      mode) hold the key, by the acquirer's own N.

    One rule covers every mix: a non-shared acquisition with limit N is admitted while
    fewer than N holders hold the key; a shared one while no non-shared holder holds it
    and no non-shared acquirer waits for it (writers are not starved by readers).
    """

    shared: bool = False
    limit: int = 1

    @property
    def exclusive(self) -> bool:
        return not self.shared and self.limit == 1

    def label(self) -> str:
        """"exclusive", "shared" or "semaphore of N"."""
        if self.shared:
            return "shared"
        return "exclusive" if self.limit == 1 else f"semaphore of {self.limit}"


EXCLUSIVE = Mode()
SHARED = Mode(shared=True)


@dataclass(frozen=True, slots=True)
class LockInfo:
    """What a backend knows of one held lock.

    Times are kept as microseconds since the Unix epoch (by the backend's clock) and read
    as aware UTC datetimes through ``acquired_at`` and ``expires_at``. ``remaining_ms`` is
    the holder's remaining life as the backend measured it when it answered (its own clock
    on both sides, so an application server's skewed clock cannot distort it); None where
    not measured. It is not part of equality: the same holder read twice is equal.
    """

    key: str
    token: str
    fencing_token: int
    correlation_id: str | None
    acquired_at_us: int
    expires_at_us: int
    remaining_ms: int | None = field(default=None, compare=False)
    #: A shared (read) holder.
    shared: bool = False
    #: The limit this holder was admitted with (1: exclusive or shared).
    limit: int = 1

    @property
    def mode(self) -> Mode:
        return SHARED if self.shared else EXCLUSIVE if self.limit == 1 else Mode(False, self.limit)

    def mode_label(self, holders: int | None = None) -> str:
        """"exclusive", "shared", or for a semaphore "2 of 3" (``holders`` of its limit)
        or "of 3" when the number of holders is not given."""
        if self.shared:
            return "shared"
        if self.limit == 1:
            return "exclusive"
        return f"{holders} of {self.limit}" if holders is not None else f"of {self.limit}"

    @property
    def remaining(self) -> timedelta | None:
        """``remaining_ms`` as a timedelta (None where not measured)."""
        return None if self.remaining_ms is None else timedelta(milliseconds=self.remaining_ms)

    @property
    def acquired_at(self) -> datetime:
        return datetime_from_us(self.acquired_at_us)

    @property
    def expires_at(self) -> datetime:
        return datetime_from_us(self.expires_at_us)


def lock_holder(holders: list[LockInfo]) -> LockInfo | None:
    """The holder ``get_lock()`` answers for a key: its exclusive holder if it has one
    (a semaphore admitted beside it may expire later), else of its holders the one that
    expires last; None if none."""
    exclusive = [info for info in holders if info.mode.exclusive]
    candidates = exclusive or holders
    return max(candidates, key=lambda info: (info.expires_at_us, info.token)) if candidates else None


#: A time left, in whatever unit the caller counts (ms, µs, seconds; ``math.inf``: unknown).
TimeLeft = TypeVar("TimeLeft", int, float)


def time_until_admitted(
    mode: Mode, holders: Iterable[tuple[TimeLeft, bool]], writer_mark: TimeLeft | None = None
) -> TimeLeft | None:
    """The one admission rule of :class:`Mode`, applied by expiry alone: ``None`` when an
    acquisition in ``mode`` is admitted now, else how long until it is once enough holders
    (and the writer mark) have expired.

    ``holders``: ``(time left, shared)`` of each live holder of the key; ``writer_mark``:
    the time left of the key's writer mark, if one is alive. Any one unit for all of them.
    A non-shared acquisition with limit N is admitted while fewer than N holders hold the
    key (so it waits for the ``len(holders) - N + 1``-th expiry: a full semaphore's first,
    an exclusive acquisition's last); a shared one while no non-shared holder holds it and
    no writer mark is alive.
    """
    if mode.shared:
        blocking = [left for left, shared in holders if not shared]
        if writer_mark is not None:
            blocking.append(writer_mark)
        return max(blocking) if blocking else None
    lefts = sorted(left for left, _ in holders)
    if len(lefts) < mode.limit:
        return None
    return lefts[len(lefts) - mode.limit]


class Attempt(NamedTuple):
    """The outcome of one acquisition attempt by a backend."""

    #: The new lock on success, ``None`` when someone else holds the key.
    info: LockInfo | None
    #: When known, how long the current holder's lock has left, in ms.
    holder_remaining_ms: int | None = None


# --------------------------------------------------------------------------- listing pages

#: Largest ``limit`` of one :meth:`~django_locks.backends.base.BaseLock.list_locks` page.
MAX_PAGE_LIMIT = 10_000


class LockPage(NamedTuple):
    """One page of the locks held now (:meth:`~django_locks.backends.base.BaseLock.list_locks`).

    ``holders``: every live holder of up to ``limit`` keys (each with ``remaining_ms`` as
    the backend measured it), ordered by key where the backend lists keys in order;
    ``next_cursor``: where the next page starts (opaque; None: this was the last page);
    ``total``: how many held keys match the prefix, where the backend counts them cheaply,
    else None.
    """

    holders: list[LockInfo]
    next_cursor: str | None = None
    total: int | None = None


def validate_page_arguments(prefix: object, cursor: object, limit: object) -> tuple[str, str | None, int]:
    """``(prefix, cursor, limit)`` of a listing page, or ``ValueError`` naming the argument
    (``TypeError`` for a value of the wrong type)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix:
        _check_text(prefix, "prefix", MAX_KEY_LENGTH)
    if cursor is not None:
        if not isinstance(cursor, str):
            raise TypeError(f"cursor must be a str or None, not {type(cursor).__name__}")
        decode_cursor(cursor)  # a ValueError naming the cursor if it is not one
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_LIMIT}, got {limit}")
    return prefix, cursor, limit


def encode_cursor(kind: str, *parts: str | int | None) -> str:
    """An opaque cursor: ``kind`` (who made it) and its parts, URL-safe."""
    text = json.dumps([kind, *parts], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str | None = None) -> list[str | int | None]:
    """The parts of a cursor :func:`encode_cursor` made (of ``kind``, if given), or
    ``ValueError`` naming the cursor."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        data = None
    if (not isinstance(data, list) or not data or not isinstance(data[0], str)
            or not all(part is None or isinstance(part, str | int) for part in data)):
        raise ValueError(f"cursor {cursor[:80]!r} is not a cursor a listing returned")
    if kind is not None and data[0] != kind:
        raise ValueError(f"cursor {cursor[:80]!r} was returned by another kind of backend")
    return data[1:]


def key_cursor(cursor: str | None) -> str | None:
    """The last key of the page before, from a cursor of a key-ordered listing."""
    if cursor is None:
        return None
    parts = decode_cursor(cursor, "key")
    if len(parts) != 1 or not isinstance(parts[0], str):
        raise ValueError(f"cursor {cursor[:80]!r} is not a cursor a listing returned")
    return parts[0]


def page_of(holders: Iterable[LockInfo], prefix: str, after: str | None, limit: int) -> LockPage:
    """A page from every live holder (the default listing): the holders of the first
    ``limit`` keys that start with ``prefix``, after key ``after``, in key order."""
    by_key: dict[str, list[LockInfo]] = {}
    for info in holders:
        if info.key.startswith(prefix):
            by_key.setdefault(info.key, []).append(info)
    keys = sorted(by_key)
    total = len(keys)
    if after is not None:
        keys = [key for key in keys if key > after]
    page, more = keys[:limit], len(keys) > limit
    return LockPage(
        [info for key in page for info in sorted(by_key[key], key=lambda i: (i.expires_at_us, i.token))],
        encode_cursor("key", page[-1]) if more else None,
        total,
    )
