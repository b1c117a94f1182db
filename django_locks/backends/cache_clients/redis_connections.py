"""How :class:`~django_locks.backends.cache_clients.redis.RedisLockClient` reaches Redis.

* the raw redis-py client behind a Django cache (:func:`raw_client_getter`; one shared
  client per Django ``RedisCache`` configuration and process);
* where one command goes: straight on a plain client's pool (:func:`direct_pool`,
  :func:`pool_executor`), to the node of a key's slot on a cluster without the cluster
  client's retries (:func:`node_command`), or through the client's own
  ``execute_command``;
* one command awaited in an event loop on a connection of that same pool
  (:func:`idle_connection`, :func:`pool_command`), no worker thread and no client per loop;
* the connection a waiter blocks on (:func:`checkout`), its BLPOP sent and read
  (:func:`send_blpop`, :func:`blpop_reply`), ended at the waiter's deadline from another
  connection (:func:`unblock`), awaited in an event loop (:func:`readable`);
* what a forked child drops (:func:`_after_fork_in_child`).

The reasons behind each choice: docs/internals/redis.md.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

logger = logging.getLogger("django_locks")

try:  # redis is an optional dependency (the "redis" extra); without it no cache is Redis
    import redis.asyncio as redis_asyncio
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.connection import BlockingConnectionPool
    from redis.exceptions import (
        AskError,
        BusyLoadingError,
        ClusterDownError,
        MovedError,
        NoScriptError,
        ReadOnlyError,
        RedisClusterException,
        RedisError,
        ResponseError,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover
    redis_asyncio = Redis = RedisCluster = None
    class RedisError(Exception):  # type: ignore[no-redef]
        pass

    class NoScriptError(RedisError):  # type: ignore[no-redef]
        pass

    class RedisClusterException(Exception):  # type: ignore[no-redef]
        pass

    RedisConnectionError = RedisTimeoutError = BusyLoadingError = ClusterDownError = RedisError
    ReadOnlyError = TryAgainError = SlotNotCoveredError = RedisError
    ResponseError = MovedError = AskError = RedisError
    BlockingConnectionPool = None

try:
    from django_redis.cache import RedisCache as DjangoRedisPackageCache
except ImportError:  # pragma: no cover - django-redis not installed
    DjangoRedisPackageCache = None

#: Failures that a failover or a restart causes and that end by themselves: a waiter
#: retries its attempts through them until its own deadline (BaseLock._retryable). The
#: unreachable node (connection refused or reset, socket timeout), a cluster without a
#: master for a slot (CLUSTERDOWN, an uncovered slot, TRYAGAIN during resharding), a
#: server still loading its data, and a demoted master refusing writes (READONLY).
#: Everything else (a script error, a bad configuration) fails the call at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ClusterDownError,
    SlotNotCoveredError,
    TryAgainError,
    ReadOnlyError,
    OSError,
)
#: What a failed call to Redis raises (the client turns them into LockBackendError).
FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

#: A pool's get and release of a connection (:func:`pool_access`).
PoolAccess = tuple[Callable[[], Any], Callable[[Any], None]]

# ----------------------------------------------------------------------------- raw clients

#: One raw client per Django RedisCache configuration and process (see shared_client).
_shared_clients: dict[tuple[Any, ...], Any] = {}
_shared_clients_mutex = threading.Lock()


def shared_client(cache: Any) -> Any:
    """The raw client of a Django ``RedisCache``, one per configuration and process (a
    cache instance is per thread; its pool would be too)."""
    config = (type(cache), tuple(cache._servers), repr(sorted(cache._options.items())), os.getpid())
    client = _shared_clients.get(config)
    if client is None:
        with _shared_clients_mutex:
            client = _shared_clients.setdefault(config, cache._cache.get_client(write=True))
    return client


def raw_client_getter(cache_class: type) -> Callable[[Any], Any] | None:
    """How to get the raw redis-py client from a cache of this class; None if not Redis."""
    if DjangoRedisPackageCache is not None and issubclass(cache_class, DjangoRedisPackageCache):
        # django-redis shares its connection pools between threads already.
        return lambda cache: cache.client.get_client(write=True)
    if issubclass(cache_class, DjangoRedisCache):
        return shared_client
    return None


def is_cluster(client: Any) -> bool:
    """Whether a raw client is a ``redis.cluster.RedisCluster``."""
    return RedisCluster is not None and isinstance(client, RedisCluster)


def socket_timeout_of(client: Any) -> float | None:
    """The socket timeout of a raw client's connections (``redis.Redis``, Sentinel or
    ``RedisCluster``: all have ``get_connection_kwargs``), or None."""
    get_kwargs = getattr(client, "get_connection_kwargs", None)
    if get_kwargs is None:
        return None
    return get_kwargs().get("socket_timeout")


# ----------------------------------------------------------------------------- one command


def node_command(client: Any, key: str) -> Callable[..., Any]:
    """How to send a command about ``key`` on a cluster client once, to the node that
    serves ``key``'s slot, without the cluster client's retries (it still follows MOVED
    and ASK): a call fails at once when that node is down, as on one server; waiters
    retry by themselves (docs/internals/redis.md, "Cluster")."""
    node = node_of(client, key)

    def command(*args: Any) -> Any:
        return client.execute_command(*args, target_nodes=node)

    return command


def node_of(client: Any, key: str) -> Any:
    """The node of a cluster client that serves ``key``'s slot, after the topology
    refresh an earlier error asked for, if it is due (redis-py 8 would run it only after
    choosing the node: see docs/internals/redis.md, "Cluster")."""
    manager = client.nodes_manager
    if getattr(manager, "_refresh_requested", False):  # redis-py 8's paced refresh
        manager._run_requested_refresh(client.retry)
    return client.get_node_from_key(key)


def direct_pool(client: Any) -> PoolAccess | None:
    """The get and release of the pool on which commands run directly
    (:func:`pool_executor`), or None: only a plain ``redis.Redis`` (one server, or a
    Sentinel-managed master) whose ``execute_command`` is redis-py's own, unwrapped, and
    not bound to one connection. A cluster, a subclass, tracing instrumentation, and
    client-side caching keep the client's own command path."""
    execute = getattr(type(client), "execute_command", None)
    if (Redis is None or not isinstance(client, Redis) or execute is not Redis.execute_command
            or hasattr(execute, "__wrapped__") or getattr(client, "connection", None) is not None):
        return None
    return pool_access(getattr(client, "connection_pool", None))


def pool_access(pool: Any) -> PoolAccess | None:
    """A pool's get and release of a connection, or None for none or a pool with
    client-side caching (its connections answer some commands from the cache). Through
    the pool's own methods, so its fork check (a child gets new connections) applies."""
    if pool is None or getattr(pool, "cache", None) is not None:
        return None
    get_connection = pool.get_connection
    # redis-py < 5.3 requires a command name (later ones deprecate passing one).
    name = inspect.signature(get_connection).parameters.get("command_name")
    if name is not None and name.default is inspect.Parameter.empty:
        get_connection = functools.partial(get_connection, "EVALSHA")
    return get_connection, pool.release


def pool_executor(access: PoolAccess) -> Callable[..., Any]:
    """``execute(*args)``: one command on a connection of the pool, as
    ``redis.Redis.execute_command`` runs it (the connection's retries, a disconnect on
    failure) without the client's command layers (about as long as a local round trip)."""
    get_connection, release = access

    def execute(*args: Any) -> Any:
        conn = get_connection()
        try:
            return conn.retry.call_with_retry(lambda: _send(conn, args),
                                              lambda error: conn.disconnect())
        finally:
            release(conn)

    return execute


def _send(conn: Any, args: tuple[Any, ...]) -> Any:
    conn.send_command(*args)
    return conn.read_response()


# ----------------------------------------------------------------------------- one command, awaited


def idle_connection(pool: Any) -> bool:
    """Whether ``pool.get_connection()`` would now hand out an idle connection that is
    already connected, so taking it in the event loop does not block: a plain
    ``ConnectionPool`` (a ``BlockingConnectionPool`` may wait for one: no) of this process
    whose last idle connection has a socket. Another thread may take it first; the pool
    then connects a new one in the loop, once (see docs/internals/redis.md, "Async
    commands")."""
    available = getattr(pool, "_available_connections", None)
    return (bool(available) and getattr(pool, "pid", None) == os.getpid()
            and getattr(available[-1], "_sock", None) is not None)


class ReplyAfterCancel(asyncio.CancelledError):
    """A command cancelled while its reply was awaited, whose reply was then read
    (:func:`pool_command`): the cancellation goes on, with the reply."""

    def __init__(self, reply: Any) -> None:
        super().__init__()
        self.reply = reply


async def pool_command(access: PoolAccess, args: tuple[Any, ...]) -> Any:
    """:func:`pool_executor`'s ``execute(*args)`` awaited in the event loop: the command is
    sent on a connection of the sync pool (take it only when :func:`idle_connection`), its
    reply awaited (:func:`readable`, bounded by the socket timeout) and read.

    A connection or timeout error goes on as ``conn.retry`` says, in a worker thread
    (retries reconnect and back off: both block); the first try counts as the first
    failure, so a command is tried as often as the sync path tries it.

    Cancelled while its reply is awaited, the command has been sent and may have run: its
    reply is still awaited (within the socket timeout) and read, and
    :class:`ReplyAfterCancel` carries it on with the cancellation, so that the caller
    learns what the command did. If that fails, or a second cancellation comes, the
    connection is disconnected (its reply must never be read by the next command) and the
    cancellation goes on without a reply."""
    get_connection, release = access
    conn = get_connection()
    retrying: asyncio.Future[Any] | None = None
    try:
        conn.send_command(*args)
        try:
            ready = await readable(conn, conn.socket_timeout)
        except asyncio.CancelledError:
            raise ReplyAfterCancel(await _reply_after_cancel(conn)) from None
        if not ready:
            raise RedisTimeoutError("Timeout reading from socket")
        return conn.read_response()
    except (RedisConnectionError, RedisTimeoutError, OSError) as error:
        retrying = asyncio.get_running_loop().run_in_executor(None, _retry_after, conn, args, error)
        return await asyncio.shield(retrying)
    except BaseException as error:
        if not isinstance(error, (Exception, ReplyAfterCancel)):  # its reply is unread
            conn.disconnect()
        raise
    finally:
        if retrying is not None and not retrying.done():  # cancelled while it retries
            retrying.add_done_callback(lambda _: release(conn))
        else:
            release(conn)


async def _reply_after_cancel(conn: Any) -> Any:
    """The reply of the command in flight on ``conn``, read after a cancellation; else
    CancelledError (the connection is then disconnected by :func:`pool_command`)."""
    try:
        if await readable(conn, conn.socket_timeout):
            return conn.read_response()
    except Exception as e:
        raise asyncio.CancelledError from e
    raise asyncio.CancelledError


def _retry_after(conn: Any, args: tuple[Any, ...], error: BaseException) -> Any:
    """The rest of ``conn.retry.call_with_retry`` after a first try that raised ``error``
    (in a worker thread): the same failure handler, backoff and count as the sync path."""
    pending = [error]

    def attempt() -> Any:
        if pending:
            raise pending.pop()
        return _send(conn, args)

    return conn.retry.call_with_retry(attempt, lambda _: conn.disconnect())


# ----------------------------------------------------------------------------- blocking waits


class Held(NamedTuple):
    """A connection a waiter blocks on, and its pool's get and release."""

    conn: Any
    get: Callable[[], Any]
    release: Callable[[Any], None]
    pool: Any


#: Pools whose get_connection waits for a free connection (unblock takes none from them).
BLOCKING_POOLS: tuple[type, ...] = (BlockingConnectionPool,) if BlockingConnectionPool is not None else ()


def checkout(client: Any, key: str) -> Held | None:
    """A connection to block on for ``key``'s wake-up list, from the client's own pool (on
    a cluster, the pool of the node serving the key). None when the client has no such
    pool (client-side caching)."""
    if is_cluster(client):
        pool = client.get_redis_connection(node_of(client, key)).connection_pool
    else:
        pool = getattr(client, "connection_pool", None)
    access = pool_access(pool)
    if access is None:
        return None
    get, release = access
    return Held(get(), get, release, pool)


def send_blpop(conn: Any, key: str, block: float, *then: tuple[Any, ...]) -> None:
    """CLIENT ID (to end the BLPOP from elsewhere: :func:`unblock`) and BLPOP, sent at
    once; the server's own timeout is the block, rounded to the millisecond. Commands
    ``then`` follow in the same write: the server runs them as soon as the BLPOP ends."""
    conn.send_packed_command(
        conn.pack_commands([("CLIENT", "ID"), ("BLPOP", key, round(block, 3)), *then])
    )


def script_reply(conn: Any) -> Any:
    """The reply of a script sent after a BLPOP (:func:`send_blpop`); None if it did not
    run: the server lacks it (NOSCRIPT), or a cluster node says the key moved."""
    try:
        return conn.read_response()
    except (NoScriptError, MovedError, AskError):
        return None


def client_id(conn: Any) -> int | None:
    """CLIENT ID's reply (:func:`send_blpop`), or None if the server refused it."""
    try:
        return int(conn.read_response())
    except ResponseError:
        return None


def blpop_reply(conn: Any) -> Any:
    """BLPOP's reply; None (no wake-up) if a cluster node says the key moved: the next
    attempt follows the redirect, and the next wait goes to the new node."""
    try:
        return conn.read_response()
    except (MovedError, AskError):
        return None


def unblock(held: Held, blocked_id: int) -> bool:
    """End the BLPOP of connection ``blocked_id`` now: CLIENT UNBLOCK from another
    connection of the same pool (Redis would end it only at its next tick). Its reply
    (nil, or the wake-up it popped meanwhile) is then read on the blocked connection.
    False if the server refuses CLIENT UNBLOCK (an ACL). A server that does not answer
    raises, as any command would."""
    # One at a time per pool: waiters that time out together reuse one more connection
    # instead of opening one each.
    with _unblocker(held.pool):
        other = held.get()
        try:
            other.send_command("CLIENT", "UNBLOCK", blocked_id)
            other.read_response()
            return True
        except ResponseError as e:
            logger.debug("CLIENT UNBLOCK refused (%s): waits past their deadline disconnect", e)
            return False
        except BaseException:
            other.disconnect()
            raise
        finally:
            held.release(other)


#: A mutex per pool for unblock.
_unblockers: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_unblockers_mutex = threading.Lock()


def _unblocker(pool: Any) -> threading.Lock:
    with _unblockers_mutex:
        lock = _unblockers.get(pool)
        if lock is None:
            lock = _unblockers[pool] = threading.Lock()
        return lock


# ----------------------------------------------------------------------------- asyncio


def give_back(checkout: asyncio.Future[Any]) -> None:
    """A connection checked out for a waiter cancelled meanwhile: back to its pool."""
    if not checkout.cancelled() and checkout.exception() is None and checkout.result() is not None:
        held = checkout.result()
        held.release(held.conn)


def _settle(ready: asyncio.Future[bool], value: bool) -> None:
    if not ready.done():
        ready.set_result(value)


async def readable(conn: Any, timeout: float | None) -> bool:
    """Whether a reply can be read on the sync connection ``conn`` within ``timeout``
    seconds (None: no limit), awaited in the event loop: its descriptor's readiness
    (``loop.add_reader``; a loop without it, as on Windows, waits in a worker). One
    future and one timer (no ``asyncio.wait_for``: it costs a task per call on 3.11).

    The first check (buffered, or on the socket already) also serves a reply that came
    back while it was being made: on a local Redis often enough that skipping it, after a
    command just sent, measured twice as slow (a sleep in the loop's poll, then a wake-up)."""
    if conn.can_read(timeout=0):  # already buffered, or arrived
        return True
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()
    fd = conn._sock.fileno()
    try:
        loop.add_reader(fd, _settle, ready, True)
    except NotImplementedError:
        return await loop.run_in_executor(None, functools.partial(conn.can_read, timeout=timeout))
    timer = loop.call_later(timeout, _settle, ready, False) if timeout is not None else None
    try:
        return await ready or conn.can_read(timeout=0)
    finally:
        loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()


def async_client_like(sync_pool: Any) -> Any:
    """A ``redis.asyncio`` client connecting the way ``sync_pool``'s connections do
    (host and port or socket path, database, credentials, timeouts, TLS).

    Async waiters no longer use one (they block on a connection of the sync pool itself):
    an asyncio client is bound to its event loop, and one kept per loop was dropped
    unclosed with it, a connection left per loop."""
    connection_class = getattr(redis_asyncio, _ASYNC_CONNECTIONS[sync_pool.connection_class.__name__])
    # Every class's own parameters: redis-py 5+ asyncio connections take most settings
    # (db, credentials, timeouts) in a base class's __init__, through **kwargs.
    accepted = {
        name for klass in connection_class.__mro__ if "__init__" in vars(klass)
        for name in inspect.signature(vars(klass)["__init__"]).parameters
    }
    kwargs = {
        name: value for name, value in sync_pool.connection_kwargs.items()
        if name in accepted and name not in _NOT_COPIED and not name.startswith("orig_")
    }
    pool = redis_asyncio.ConnectionPool(connection_class=connection_class, **kwargs)
    return redis_asyncio.Redis(connection_pool=pool)


#: The sync connection classes with an asyncio twin taking the same settings. Others (a
#: Sentinel-managed connection finds its server through the sentinels) wait by polling.
_ASYNC_CONNECTIONS = {
    "Connection": "Connection",
    "UnixDomainSocketConnection": "UnixDomainSocketConnection",
    "SSLConnection": "SSLConnection",
}
#: Connection settings of a sync pool that an asyncio connection must not take as they are:
#: sync objects, and what a pool makes for its own connections (redis-py 8: maintenance
#: notification handlers, the hash-import registry, the ``orig_`` copies of timeouts).
_NOT_COPIED = frozenset({"parser_class", "retry", "connection_pool", "event_dispatcher",
                         "maint_notifications_pool_handler", "maint_notifications_config",
                         "himport_registry"})


# ----------------------------------------------------------------------------- fork

#: What a forked child inherited from its parent (clients, pools): kept referenced and
#: never used, so that nothing closes or says goodbye on the parent's connections.
inherited: list[Any] = []


def _after_fork_in_child() -> None:
    """A forked child (gunicorn ``--preload``, Celery's prefork pool, ``multiprocessing``)
    makes its own shared clients on first use, and its own mutexes (a thread of the parent
    may have held one when it forked: a child waiting for it would wait forever)."""
    global _shared_clients, _shared_clients_mutex, _unblockers, _unblockers_mutex
    inherited.append((_shared_clients, _unblockers))
    _shared_clients = {}
    _shared_clients_mutex = threading.Lock()
    _unblockers = weakref.WeakKeyDictionary()
    _unblockers_mutex = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
