"""Redis used natively, through the raw redis-py client of django-redis or of Django's
own ``RedisCache`` (one server, a Sentinel-managed master, or a Redis Cluster).

Every operation on a lock is one Lua script (``lua/*.lua``, run by SHA:
:mod:`~django_locks.backends.cache_clients.redis_scripts`), one round trip, on the keys
of that lock alone, which share a cluster hash slot (:func:`hash_tag`). A waiter blocks
on the lock's wake-up list (BLPOP), bounded by the holder's remaining life, so it is woken
by a release at once and by an expiry on time. How commands and waits reach the server:
:mod:`~django_locks.backends.cache_clients.redis_connections`. The design (data layout,
which script runs when, wake-ups, cluster routing): docs/internals/redis.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from django_locks.backends._acquire import AnsweredAfterCancel
from django_locks.backends.cache_clients import redis_scripts as scripts
from django_locks.backends.cache_clients.base import CacheLockClient, LockKeys
from django_locks.backends.cache_clients.redis_connections import (
    BLOCKING_POOLS,
    FAILURES,
    TRANSIENT_ERRORS,
    Held,
    PoolAccess,
    RedisError,
    RedisTimeoutError,
    ReplyAfterCancel,
    async_client_like,
    blpop_reply,
    checkout,
    client_id,
    direct_pool,
    give_back,
    idle_connection,
    inherited,
    is_cluster,
    node_command,
    node_of,
    pool_command,
    pool_executor,
    raw_client_getter,
    readable,
    script_reply,
    send_blpop,
    socket_timeout_of,
    unblock,
)
from django_locks.backends.cache_clients.redis_scripts import Script
from django_locks.exceptions import LockBackendError
from django_locks.values import WRITER_MARK_MS, Attempt, LockInfo, Mode, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from django_locks.backends.cache import CacheLock
    from django_locks.values import LockPage

__all__ = [
    "BLOCK_TIMEOUT_SLACK",
    "FENCE_GRACE_MS",
    "MAX_BLOCK_SECONDS",
    "TRANSIENT_ERRORS",
    "WAKE_HOPS",
    "WAKE_TTL_MS",
    "RedisLockClient",
    "async_client_like",
    "hash_tag",
    "is_cluster",
    "node_command",
    "node_of",
    "raw_client_getter",
    "socket_timeout_of",
]

logger = logging.getLogger("django_locks")

#: A fencing counter outlives its lock by this much (ms). After that the server clock
#: (microseconds) is the floor of the next token, which is above every earlier one.
FENCE_GRACE_MS = 60_000
#: Life of an unconsumed wake-up (ms): covers a waiter between two attempts.
WAKE_TTL_MS = 5_000
#: Longest single block of a waiter (s), a bound for a lost wake-up.
MAX_BLOCK_SECONDS = 0.5
#: How many times one wake-up is passed on by woken waiters that cannot proceed (see
#: mode_acquire.lua): enough to reach a waiter that can behind a few that cannot, few
#: enough that waiters that all cannot stop passing it round soon.
WAKE_HOPS = 8

#: The wake-up a waiter of this context (thread, or asyncio task: sync_to_async runs the
#: next attempt in a copy of it) was woken by: (wake-up list, its hop count), or None.
_woken: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "django_locks_woken", default=None
)
#: Redis ends a blocking command's timeout up to one server tick (1/hz, 100 ms by
#: default) late; a block is kept this much shorter than the client's socket timeout.
BLOCK_TIMEOUT_SLACK = 0.15

#: Earlier names, kept importable: the scripts' texts (now ``lua/*.lua``), and the
#: connection helpers (now in redis_connections).
ACQUIRE_SCRIPT = scripts.ACQUIRE.source
MODE_ACQUIRE_SCRIPT = scripts.MODE_ACQUIRE.source
RELEASE_SCRIPT = scripts.RELEASE.source
EXTEND_SCRIPT = scripts.EXTEND.source
FORCE_RELEASE_SCRIPT = scripts.FORCE_RELEASE.source
UNMARK_SCRIPT = scripts.UNMARK.source
PASS_ON_SCRIPT = scripts.PASS_ON.source
READ_SCRIPT = scripts.READ.source
_direct_pool = direct_pool

T = TypeVar("T")
#: An operation written once for both drivers (RedisLockClient._drive, _adrive): it yields
#: each script to run with its inputs by name, is sent the script's reply, and returns
#: the operation's result.
Steps = Generator[tuple[Script, dict[str, Any]], Any, T]

_TAG_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def hash_tag(key: str) -> str:
    """The Redis Cluster hash tag of lock ``key``: the key with ``%``, ``{`` and ``}``
    percent-encoded.

    Redis hashes a name by the text between its first ``{`` and the first ``}`` after it,
    if that text is not empty. Inside ``django_locks:{TAG}:...`` a tag without braces is
    exactly that text, and it is never empty (keys are), so a lock's names (lock, fence,
    wake, mark) always share one slot, for any key (``}x``, ``{}``, ``a{b}c``...). The
    encoding is one-to-one (``%`` is encoded too), so two keys never share names, and a
    key without ``%``, ``{`` or ``}`` is its own tag, readable as it always was.
    """
    return key.translate(_TAG_ESCAPES)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flat(fields: Any) -> list[Any]:
    """HGETALL's reply as a flat list (redis-py turns it into a dict outside scripts)."""
    if isinstance(fields, dict):
        return [item for pair in fields.items() for item in pair]
    return list(fields or [])


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisLockClient(CacheLockClient):
    """Redis used natively through the cache's raw redis-py client."""

    native_async = True

    def __init__(self, backend: CacheLock) -> None:
        super().__init__(backend)
        getter = raw_client_getter(backend.cache_backend_class)
        if getter is None:
            raise TypeError(f"{backend.cache_backend_class.__name__} is not a Redis cache")
        self._get_client = getter
        self._client: Any = None
        self._cluster = False
        self._pool: PoolAccess | None = None
        #: The pool behind _pool (async commands check it for an idle connection).
        self._pool_object: Any = None
        #: How a script's command is sent (:meth:`_run`); None on a cluster (per key).
        self._execute: Callable[..., Any] | None = None
        #: Tokens of exclusive waiters refused once: they hold the writer mark, so their
        #: next attempts go through mode_acquire.lua (see try_acquire).
        self._marking: set[str] = set()
        #: Whether the server takes CLIENT UNBLOCK (see _unblock).
        self._unblock_allowed = True

    @classmethod
    def handles(cls, cache_class: type) -> bool:
        return raw_client_getter(cache_class) is not None

    def get_client(self) -> Any:
        """The raw redis-py client (thread-safe; one per backend instance is enough)."""
        if self._client is None:
            client = self._get_client(self.backend.cache)
            for_this_process = getattr(client, "for_this_process", None)
            if for_this_process is not None:  # a CacheCluster (django_locks.cluster)
                client = for_this_process()
            self._pool = direct_pool(client)
            self._pool_object = client.connection_pool if self._pool is not None else None
            self._cluster = is_cluster(client)
            if self._pool is not None:
                self._execute = pool_executor(self._pool)
            elif not self._cluster:
                self._execute = client.execute_command
            self._client = client
        return self._client

    def after_fork_in_child(self) -> None:
        """In a forked child: the raw client is fetched again on first use (the cache's
        pools see the new process and open new connections: redis-py's fork check, which
        every connection taken here goes through); the parent's is kept referenced. The
        module's own clients and mutexes are dropped too (redis_connections)."""
        inherited.append((self._client, self._pool))
        self._client = None
        self._pool = None
        self._pool_object = None
        self._execute = None
        self._cluster = False
        self._marking = set()

    def keys(self, key: str) -> LockKeys:
        """Full Redis keys; ``{TAG}`` (:func:`hash_tag`) puts the four in one cluster slot."""
        base = f"django_locks:{{{hash_tag(key)}}}"
        make_key = self.backend.cache.make_key
        return LockKeys(make_key(base + ":lock"), make_key(base + ":fence"), make_key(base + ":wake"),
                        make_key(base + ":mark"))

    def _call(self, operation: Callable[[Any], Any]) -> Any:
        try:
            return operation(self.get_client())
        except FAILURES as e:
            raise self._failed(e) from e

    def _failed(self, error: BaseException) -> LockBackendError:
        return LockBackendError(
            f"LOCKS[{self.backend.alias!r}]: Redis behind cache "
            f"{self.backend.cache_alias!r} failed: {error}"
        )

    def _run(self, script: Script, **inputs: Any) -> Any:
        """``script``'s reply for its KEYS and ARGV by name: by SHA (:meth:`Script.run`),
        on the pool directly where it can (:func:`direct_pool`), on a cluster to the node
        of its first key (:func:`node_command`), else through the client."""
        try:
            client = self._client if self._client is not None else self.get_client()
            values = script.bind(inputs)
            execute = self._execute or node_command(client, values[0])
            return script.run(execute, values)
        except FAILURES as e:
            raise self._failed(e) from e

    # Each operation is written once, as steps (a generator): it yields the scripts to run,
    # with their inputs by name, and is sent their replies; its return value is the
    # operation's. _drive runs the steps in this thread (_run), _adrive in the event loop
    # (_arun), so sync and async callers parse every reply with the same code.

    def _drive(self, steps: Steps[T]) -> T:
        try:
            script, inputs = next(steps)
            while True:
                script, inputs = steps.send(self._run(script, **inputs))
        except StopIteration as done:
            return done.value

    async def _adrive(self, steps: Steps[T]) -> T:
        """:meth:`_drive` in the event loop. Cancelled mid-script with the script's reply
        read after all (:class:`ReplyAfterCancel`), the operation's result, if that was
        its last script, goes on with the cancellation (:class:`AnsweredAfterCancel`)."""
        try:
            script, inputs = next(steps)
            while True:
                try:
                    reply = await self._arun(script, **inputs)
                except ReplyAfterCancel as cancelled:
                    try:
                        steps.send(cancelled.reply)
                    except StopIteration as done:
                        raise AnsweredAfterCancel(done.value) from None
                    raise asyncio.CancelledError from None  # another script was due: no answer
                script, inputs = steps.send(reply)
        except StopIteration as done:
            return done.value

    async def _arun(self, script: Script, **inputs: Any) -> Any:
        """:meth:`_run` awaited in the event loop, holding no thread: on the pool directly
        (:func:`pool_command`) when it has an idle connected connection; else (a connection
        to open, a BlockingConnectionPool, a cluster, a client with its own command path)
        :meth:`_run` in a worker thread."""
        try:
            if self._client is None:
                self.get_client()
            if self._execute is not None and self._pool is not None:
                return await script.arun(self._acommand, script.bind(inputs))
        except FAILURES as e:
            raise self._failed(e) from e
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self._run, script, **inputs))

    async def _acommand(self, *args: Any) -> Any:
        """One command of :meth:`_arun` (EVALSHA, or EVAL after NOSCRIPT)."""
        pool, execute = self._pool, self._execute
        assert pool is not None and execute is not None
        if idle_connection(self._pool_object):
            return await pool_command(pool, args)
        return await asyncio.get_running_loop().run_in_executor(None, execute, *args)

    def try_acquire(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        return self._drive(self._try_acquire_steps(keys, key, token, ttl, cid, mode, waiter))

    async def atry_acquire(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        return await self._adrive(self._try_acquire_steps(keys, key, token, ttl, cid, mode, waiter))

    def _try_acquire_steps(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Steps[Attempt]:
        woken = _woken.get()
        if woken is not None:
            _woken.set(None)
        if mode.exclusive and (not waiter or token not in self._marking):
            # The plain path (acquire.lua): an exclusive attempt that has no writer mark
            # to clear, since it never set one. An exclusive waiter refused here must set
            # the mark at once: it attempts again through mode_acquire.lua, and so do its
            # later attempts until it wins (a second round trip, on contention only).
            fence, second = yield scripts.ACQUIRE, dict(
                lock_key=keys.lock, fence_key=keys.fence, wake_key=keys.wake,
                key=key, token=token, ttl=ttl, cid=cid or "", grace=FENCE_GRACE_MS,
            )
            if int(fence) or not waiter:
                return self._answer(fence, second, key, token, ttl, cid, mode, waiter)
        hops = woken[1] if woken is not None and woken[0] == keys.wake else 0
        fence, second = yield (
            scripts.MODE_ACQUIRE, self._mode_inputs(keys, key, token, ttl, cid, mode, waiter, hops)
        )
        return self._answer(fence, second, key, token, ttl, cid, mode, waiter)

    def _mode_inputs(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool, hops: int,
    ) -> dict[str, Any]:
        """mode_acquire.lua's inputs by name."""
        return dict(
            lock_key=keys.lock, fence_key=keys.fence, wake_key=keys.wake, mark_key=keys.mark,
            key=key, token=token, ttl=ttl, cid=cid or "",
            grace=FENCE_GRACE_MS, shared=int(mode.shared), limit=mode.limit,
            waiter=int(waiter), mark_ms=WRITER_MARK_MS, wake_ttl=WAKE_TTL_MS, hops=hops,
            max_hops=WAKE_HOPS,
        )

    def _answer(
        self, fence: Any, second: Any, key: str, token: str, ttl: int, cid: str | None,
        mode: Mode, waiter: bool,
    ) -> Attempt:
        """An acquiring script's reply as an Attempt. An exclusive waiter refused has set
        the writer mark (or must: see try_acquire), so its later attempts go through
        mode_acquire.lua, which clears the mark when it wins."""
        fence = int(fence)  # int() reads bytes and str replies alike
        if mode.exclusive and waiter:
            if fence:
                self._marking.discard(token)
            else:
                if len(self._marking) >= 1024:  # waiters that timed out never said so
                    self._marking.clear()
                self._marking.add(token)
        if not fence:
            return Attempt(None, max(int(second), 0))
        acquired_us = int(second)
        return Attempt(
            LockInfo(
                key=key,
                token=token,
                fencing_token=fence,
                correlation_id=cid,
                acquired_at_us=acquired_us,
                expires_at_us=acquired_us + ttl * 1000,
                shared=mode.shared,
                limit=mode.limit,
            )
        )

    def release(self, keys: LockKeys, token: str) -> bool:
        return self._drive(self._release_steps(keys, token))

    async def arelease(self, keys: LockKeys, token: str) -> bool:
        return await self._adrive(self._release_steps(keys, token))

    @staticmethod
    def _release_steps(keys: LockKeys, token: str) -> Steps[bool]:
        reply = yield scripts.RELEASE, dict(lock_key=keys.lock, wake_key=keys.wake, token=token,
                                            wake_ttl=WAKE_TTL_MS)
        return reply == 1

    def extend(self, keys: LockKeys, token: str, ttl: int) -> int | None:
        return self._drive(self._extend_steps(keys, token, ttl))

    async def aextend(self, keys: LockKeys, token: str, ttl: int) -> int | None:
        return await self._adrive(self._extend_steps(keys, token, ttl))

    @staticmethod
    def _extend_steps(keys: LockKeys, token: str, ttl: int) -> Steps[int | None]:
        expires_us = int((yield scripts.EXTEND, dict(lock_key=keys.lock, fence_key=keys.fence,
                                                      token=token, ttl=ttl, grace=FENCE_GRACE_MS)))
        return expires_us or None

    def unmark(self, keys: LockKeys, token: str) -> None:
        self._run(scripts.UNMARK, mark_key=keys.mark, token=token)

    async def aunmark(self, keys: LockKeys, token: str) -> None:
        await self._arun(scripts.UNMARK, mark_key=keys.mark, token=token)

    def force_release(self, keys: LockKeys) -> bool:
        return self._run(scripts.FORCE_RELEASE, lock_key=keys.lock, wake_key=keys.wake,
                         mark_key=keys.mark, wake_ttl=WAKE_TTL_MS) == 1

    @staticmethod
    def _infos(fields: Any, pttl: Any, now_us: int | None = None) -> list[LockInfo]:
        """Every live holder from a lock hash's HGETALL (a flat list) and its PTTL, with
        the server's remaining lives. With ``now_us`` (the server's clock when it read the
        hash: read.lua) live as the admission scripts count; without (``held``'s pipelined
        HGETALL + PTTL) from the hash's PTTL, a holder within 2 ms of its expiry kept (see
        docs/internals/redis.md, "Which script"). Expired holders not yet pruned are left out.
        """
        pttl = int(pttl)
        if not fields or pttl == -2:
            return []
        pairs = dict(zip(map(_text, fields[::2]), map(_text, fields[1::2]), strict=True))
        key = pairs.get("key")
        if key is None:
            return []
        holders: list[tuple[int, LockInfo]] = []
        if "token" in pairs:
            holders.append((int(pairs["expires"]), LockInfo(
                key=key,
                token=pairs["token"],
                fencing_token=int(pairs["fence"]),
                correlation_id=pairs.get("cid") or None,
                acquired_at_us=int(pairs["acquired"]),
                expires_at_us=int(pairs["expires"]),
            )))
        for name, value in pairs.items():
            if not name.startswith("h:"):
                continue
            expires, fence, shared, limit, acquired, cid = value.split("|", 5)
            holders.append((int(expires), LockInfo(
                key=key,
                token=name[2:],
                fencing_token=int(fence),
                correlation_id=cid or None,
                acquired_at_us=int(acquired),
                expires_at_us=int(expires),
                shared=shared == "1",
                limit=int(limit),
            )))
        if not holders:
            return []
        latest = max(expires for expires, _ in holders)
        infos = []
        for expires, info in holders:
            if now_us is not None:
                left_us: int | None = expires - now_us
                # The latest holder also while the hash lives (its PEXPIRE has whole ms):
                # acquire.lua refuses an exclusive attempt while the hash exists.
                live = left_us > 0 or expires == latest  # (pttl -2, no hash, returned above)
            else:
                left_us = pttl * 1000 + expires - latest if pttl >= 0 else None
                live = left_us is None or left_us > -2000 or expires == latest
            if live:
                remaining = None if left_us is None else max(left_us // 1000, 0)
                infos.append(replace(info, remaining_ms=remaining))
        return infos

    def holders(self, keys: LockKeys) -> list[LockInfo]:
        fields, pttl, seconds, micros = self._run(scripts.READ, lock_key=keys.lock)
        return self._infos(fields, pttl, int(seconds) * 1_000_000 + int(micros))

    def held(self) -> list[LockInfo]:
        sentinel = "\x00"  # cannot occur in a key or a prefix made by Django
        pattern = _glob_escape(self.backend.cache.make_key(f"django_locks:{{{sentinel}}}:lock"))
        pattern = pattern.replace(sentinel, "*")

        def scan(client: Any) -> list[Any]:
            found: list[Any] = []
            # SCAN walks the keyspace in small steps, never blocking the server (no KEYS).
            names = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(names), 500):
                pipe = client.pipeline(transaction=False)
                for name in names[start:start + 500]:
                    pipe.hgetall(name)
                    pipe.pttl(name)
                found.extend(pipe.execute())
            return found

        # A lock that expires between SCAN and HGETALL reads as empty and is skipped.
        replies = self._call(scan)
        return [
            info for fields, pttl in zip(replies[::2], replies[1::2], strict=True)
            for info in self._infos(_flat(fields), pttl)
        ]

    def _block_seconds(self, seconds: float) -> float:
        """How long one BLPOP may block: at most MAX_BLOCK_SECONDS and ``seconds``, and it
        must end before the client's socket timeout does."""
        block = min(seconds, MAX_BLOCK_SECONDS)
        socket_timeout = socket_timeout_of(self._call(lambda c: c))
        if socket_timeout:
            block = min(block, socket_timeout - BLOCK_TIMEOUT_SLACK, socket_timeout / 2)
        return block

    def retryable(self, error: LockBackendError) -> bool:
        return isinstance(error.__cause__, TRANSIENT_ERRORS)

    @staticmethod
    def _remember_wake(keys: LockKeys, popped: Any) -> None:
        """Note the wake-up BLPOP returned (for the next attempt to pass on if it cannot
        use it: mode_acquire.lua), or none."""
        hops = 0
        if popped:
            try:
                hops = int(_text(popped[1]))
            except ValueError:
                hops = 1
        _woken.set((keys.wake, hops) if hops > 0 else None)

    def wait(self, keys: LockKeys, seconds: float, waits: int) -> None:
        """Block on the wake-up list (BLPOP) until a release pushes to it or ``seconds``
        (at most MAX_BLOCK_SECONDS) pass, the end kept by this client (see
        :meth:`_unblock`), not by the server."""
        blocked = self._block(keys, seconds, waits)
        self._remember_wake(keys, blocked[0] if blocked else None)

    def waits_attempt(self, mode: Mode) -> bool:
        """An exclusive waiter sends its next attempt with its wait (:meth:`wait_then_attempt`)."""
        return mode.exclusive

    def wait_then_attempt(
        self, keys: LockKeys, seconds: float, waits: int, key: str, token: str, ttl: int,
        cid: str | None, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        """:meth:`wait` with the next attempt (mode_acquire.lua) sent right behind the
        BLPOP on its connection: the server runs it the moment the BLPOP ends, woken or
        timed out, so a woken waiter holds the lock one round trip after the release
        instead of two, before the releaser's next attempt arrives (see
        :meth:`_attempt_after`)."""
        if not (mode.exclusive and waiter):
            self.wait(keys, seconds, waits)
            return None
        then = self._attempt_command(keys, key, token, ttl, cid, mode, waiter)
        return self._attempt_after(self._block(keys, seconds, waits, then), keys, key, token,
                                   ttl, cid, mode, waiter)

    def _attempt_command(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> tuple[Any, ...]:
        """The attempt a wait carries: mode_acquire.lua by SHA, with no hop count (it may
        run after a timeout: it passes no wake-up on; see :meth:`_attempt_after`)."""
        script = scripts.MODE_ACQUIRE
        inputs = script.bind(self._mode_inputs(keys, key, token, ttl, cid, mode, waiter, 0))
        return ("EVALSHA", script.sha, script.numkeys, *inputs)

    def _attempt_after(
        self, blocked: tuple[Any, Any] | None, keys: LockKeys, key: str, token: str, ttl: int,
        cid: str | None, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        """The answer of the attempt a wait carried (:meth:`_block`'s ``(popped, reply)``);
        None if it did not run or did not answer (the caller's next attempt, with the same
        token, finds out), or if a woken attempt was refused: the caller attempts again
        with the wake-up's hop count, which may pass it on (mode_acquire.lua)."""
        if blocked is None:  # (_block has cleared the wake-up already)
            return None
        popped, reply = blocked
        attempt = None if reply is None else self._answer(*reply, key, token, ttl, cid, mode, waiter)
        if attempt is None or (attempt.info is None and popped):
            self._remember_wake(keys, popped)
            return None
        return attempt

    def _block(
        self, keys: LockKeys, seconds: float, waits: int, then: tuple[Any, ...] | None = None
    ) -> tuple[Any, Any] | None:
        """One BLPOP on the wake-up list and, sent with it, the command ``then``: (what the
        BLPOP popped, ``then``'s reply, None if it did not run), or None if nothing was
        sent (a block too short: a short sleep) or the BLPOP was abandoned."""
        block = self._block_seconds(seconds)
        _woken.set(None)
        if block < 0.001:  # too short to block on the server: a short sleep instead
            time.sleep(min(max(block, 0.001), seconds, 0.01))
            return None
        deadline = time.monotonic() + block
        try:
            held = self._checkout(keys.wake)
        except FAILURES as e:
            raise self._failed(e) from e
        if held is None:  # no pool to take a connection from: the client's BLPOP
            return self._call(lambda c: c.blpop([keys.wake], timeout=round(block, 3))), None
        conn = held.conn
        reply = None
        try:
            send_blpop(conn, keys.wake, block, *([then] if then else []))
            blocked_id = client_id(conn)
            if conn.can_read(timeout=max(deadline - time.monotonic(), 0)):
                popped = blpop_reply(conn)
            elif blocked_id is not None and self._unblock(held, blocked_id):
                popped = blpop_reply(conn)
            else:
                self._abandon(held, keys)
                held.release(conn)
                return None
            if then:
                reply = script_reply(conn)
        except BaseException as e:
            conn.disconnect()
            held.release(conn)
            if isinstance(e, (RedisError, OSError)):
                raise self._failed(e) from e
            raise
        held.release(conn)
        return popped, reply

    def _checkout(self, key: str) -> Held | None:
        """A connection to block on for ``key``'s wake-up list (:func:`checkout`)."""
        return checkout(self.get_client(), key)

    def _unblock(self, held: Held, blocked_id: int) -> bool:
        """End the BLPOP of connection ``blocked_id`` at the waiter's deadline
        (:func:`unblock`: Redis would end it up to a server tick late). False if that is
        not done: the server refuses CLIENT UNBLOCK (from then on not asked again), or
        a BlockingConnectionPool could make this wait for a free connection; see
        :meth:`_abandon`."""
        if not self._unblock_allowed or isinstance(held.pool, BLOCKING_POOLS):
            return False
        if unblock(held, blocked_id):
            return True
        self._unblock_allowed = False
        return False

    def _abandon(self, held: Held, keys: LockKeys) -> None:
        """A BLPOP that could not be ended (:meth:`_unblock`) is abandoned: its connection
        is disconnected (the server drops the blocked client; its reply must never be
        read by the next command), and the wake-up it may have taken is passed on."""
        held.conn.disconnect()
        self._pass_on(keys)

    async def await_release(self, keys: LockKeys, seconds: float, waits: int) -> None:
        """:meth:`wait` holding no thread (:meth:`_ablock`)."""
        blocked = await self._ablock(keys, seconds, waits)
        self._remember_wake(keys, blocked[0] if blocked else None)

    async def await_then_attempt(
        self, keys: LockKeys, seconds: float, waits: int, key: str, token: str, ttl: int,
        cid: str | None, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        """:meth:`wait_then_attempt` holding no thread (:meth:`_ablock`)."""
        if not (mode.exclusive and waiter):
            await self.await_release(keys, seconds, waits)
            return None
        then = self._attempt_command(keys, key, token, ttl, cid, mode, waiter)
        blocked = await self._ablock(keys, seconds, waits, then)
        return self._attempt_after(blocked, keys, key, token, ttl, cid, mode, waiter)

    async def _ablock(
        self, keys: LockKeys, seconds: float, waits: int, then: tuple[Any, ...] | None = None
    ) -> tuple[Any, Any] | None:
        """:meth:`_block` holding no thread: BLPOP on a connection of the sync pool, its
        reply awaited in the event loop; no client kept per event loop (see
        docs/internals/redis.md, "Blocking waits"). Taking a connection runs in a worker
        unless the pool has an idle connected one (:func:`idle_connection`: taking it does
        not block); ending a BLPOP at the deadline (:meth:`_unblock`) runs in a worker."""
        block = self._block_seconds(seconds)
        _woken.set(None)
        if block < 0.001:
            await asyncio.sleep(min(max(block, 0.001), seconds, 0.01))
            return None
        deadline = time.monotonic() + block
        loop = asyncio.get_running_loop()
        if self._pool_object is not None and idle_connection(self._pool_object):
            try:  # an idle connected connection of the pool: taken without blocking
                held = self._checkout(keys.wake)
            except FAILURES as e:
                raise self._failed(e) from e
        else:
            checkout = loop.run_in_executor(None, self._checkout, keys.wake)
            try:
                held = await asyncio.shield(checkout)
            except asyncio.CancelledError:
                checkout.add_done_callback(give_back)  # taken after all: back to the pool
                raise
            except FAILURES as e:
                raise self._failed(e) from e
        if held is None:
            await asyncio.sleep(self.backend._poll_delay(seconds, waits))
            return None
        conn = held.conn
        reply = None
        try:
            send_blpop(conn, keys.wake, block, *([then] if then else []))
            if not await readable(conn, conn.socket_timeout):
                raise RedisTimeoutError("Timeout reading from socket")
            blocked_id = client_id(conn)
            if await readable(conn, max(deadline - time.monotonic(), 0)):
                popped = blpop_reply(conn)
            elif (blocked_id is not None
                  and await loop.run_in_executor(None, self._unblock, held, blocked_id)):
                if not await readable(conn, conn.socket_timeout):
                    raise RedisTimeoutError("Timeout reading from socket")
                popped = blpop_reply(conn)
            else:
                conn.disconnect()
                held.release(conn)
                await loop.run_in_executor(None, self._pass_on, keys)
                return None
            if then:
                if not await readable(conn, conn.socket_timeout):
                    raise RedisTimeoutError("Timeout reading from socket")
                reply = script_reply(conn)
        except asyncio.CancelledError:
            # Cancelled mid-BLPOP: the connection goes (its reply would be read by the next
            # command), and the wake-up it may have taken is passed on.
            conn.disconnect()
            held.release(conn)
            await loop.run_in_executor(None, self._pass_on, keys)
            raise
        except BaseException as e:
            conn.disconnect()
            held.release(conn)
            if isinstance(e, (RedisError, OSError)):
                raise self._failed(e) from e
            raise
        held.release(conn)
        return popped, reply

    def _pass_on(self, keys: LockKeys) -> None:
        """After an abandoned BLPOP (cancelled, or not ended by CLIENT UNBLOCK): the
        wake-up it may have taken goes back if another waiter could use it (pass_on.lua).
        Best effort."""
        try:
            self._run(scripts.PASS_ON, lock_key=keys.lock, wake_key=keys.wake, wake_ttl=WAKE_TTL_MS)
        except LockBackendError as e:
            logger.debug("the wake-up an abandoned wait may have taken was not passed on: %s", e)

    #: Listing pages (:meth:`held_page`): names a SCAN step asks Redis to look at, and the
    #: most steps one page takes (a rare prefix then gives a short page and a cursor).
    PAGE_SCAN_COUNT = 1000
    PAGE_SCAN_STEPS = 100

    def held_page(self, prefix: str, cursor: str | None, limit: int) -> LockPage | None:
        """One page of ``list_locks``: SCAN steps with MATCH on the prefix's lock names
        until ``limit`` are found (each step's names in order, so a page may end inside
        one: the cursor is the step's SCAN cursor and the last name taken from it), then
        every found lock read in one pipelined round trip. No count (None). On a Redis
        Cluster the masters are scanned one after the other, in the order of the first slot
        each serves (the cursor names that slot: a failover between two pages moves the
        scan to the slot's new master, whose SCAN positions differ, so that page may repeat
        or miss names, as SCAN does when its server changes)."""
        from django_locks.values import LockPage

        try:
            client = self._client if self._client is not None else self.get_client()
        except FAILURES as e:
            raise self._failed(e) from e
        sentinel = "\x00"  # cannot occur in a key or a prefix made by Django
        name = self.backend.cache.make_key(f"django_locks:{{{hash_tag(prefix)}{sentinel}}}:lock")
        pattern = _glob_escape(name).replace(sentinel, "*")
        try:
            if self._cluster:
                names, next_cursor = self._cluster_page(client, pattern, cursor, limit)
            else:
                position, after = self._scan_cursor(cursor, "scan", 2)
                names, rest = self._scan_names(client, pattern, position, after, limit)
                next_cursor = None if rest is None else encode_cursor("scan", *rest)
            replies: list[Any] = []
            if names:
                pipe = client.pipeline(transaction=False)
                for found_name in names:
                    pipe.hgetall(found_name)
                    pipe.pttl(found_name)
                replies = pipe.execute()
        except FAILURES as e:
            raise self._failed(e) from e
        holders = [
            info for fields, pttl in zip(replies[::2], replies[1::2], strict=True)
            for info in self._infos(_flat(fields), pttl)
        ]
        holders.sort(key=lambda info: (info.key, info.expires_at_us, info.token))
        return LockPage(holders, next_cursor, None)

    @staticmethod
    def _scan_cursor(cursor: str | None, kind: str, size: int) -> list[Any]:
        """A listing cursor's parts: ints (SCAN positions, slots) then the last name taken
        (or None); a new listing's when ``cursor`` is None."""
        if cursor is None:
            return [0] * (size - 1) + [None]
        parts = decode_cursor(cursor, kind)
        if (len(parts) != size
                or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts[:-1])
                or not (parts[-1] is None or isinstance(parts[-1], str))):
            raise ValueError(f"cursor {cursor[:80]!r} is not a cursor a listing returned")
        return parts

    def _scan_names(
        self, client: Any, pattern: str, position: int, after: str | None, limit: int
    ) -> tuple[list[str], tuple[int, str | None] | None]:
        """Up to ``limit`` lock names of one server from SCAN ``position`` (past name
        ``after`` in that step), and where the next page starts, or None at the end."""
        names: list[str] = []
        start, skip_after = position, after
        for _ in range(self.PAGE_SCAN_STEPS):
            following, batch = client.scan(start, match=pattern, count=self.PAGE_SCAN_COUNT)
            found = sorted(map(_text, batch))
            if skip_after is not None:
                found = [n for n in found if n > skip_after]
                skip_after = None
            wanted = limit - len(names)
            if len(found) > wanted:
                names.extend(found[:wanted])
                return names, (start, found[wanted - 1])
            names.extend(found)
            start = int(following)
            if start == 0:
                return names, None
            if len(names) == limit:
                return names, (start, None)
        return names, (start, None)

    def _cluster_page(
        self, client: Any, pattern: str, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """:meth:`_scan_names` over the masters of a cluster in the order of their first
        slots, from the master of the cursor's slot on: the names and the next cursor."""
        slots = client.nodes_manager.slots_cache
        masters: dict[str, tuple[int, Any]] = {}  # name: (its first slot, the node)
        for slot in sorted(slots):
            master = slots[slot][0]
            masters.setdefault(master.name, (slot, master))
        first_slots = dict(masters.values())
        order = sorted(first_slots)
        slot, position, after = self._scan_cursor(cursor, "cluster-scan", 3)
        index = 0
        if cursor is not None:
            serving = slots.get(slot)
            if not serving:
                raise ValueError(f"cursor {cursor[:80]!r} names a slot no master serves")
            first = masters[serving[0].name][0]
            index = order.index(first)
            if first != slot:  # the slot moved to another master (a failover, a reshard)
                position, after = 0, None
        names: list[str] = []
        while index < len(order):
            node = client.get_redis_connection(first_slots[order[index]])
            found, rest = self._scan_names(node, pattern, position, after, limit - len(names))
            names.extend(found)
            if rest is not None:
                return names, encode_cursor("cluster-scan", order[index], *rest)
            index, position, after = index + 1, 0, None
            if len(names) == limit:
                break
        if index >= len(order):
            return names, None
        return names, encode_cursor("cluster-scan", order[index], 0, None)
