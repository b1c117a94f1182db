"""Redis Cluster and Redis Sentinel for Django caches, and so for CacheLock.

Neither django-redis nor Django's own ``RedisCache`` talks to a Redis Cluster. This module
gives each one a cluster client in one line of settings:

* django-redis: ``"OPTIONS": {"CONNECTION_FACTORY": "django_locks.cluster.ClusterConnectionFactory"}``
  (:class:`ClusterConnectionFactory`);
* Django's ``RedisCache``: ``"BACKEND": "django_locks.cluster.RedisClusterCache"``
  (:class:`RedisClusterCache`).

In both, LOCATION names one or more startup nodes (``redis://host:port``, a list or a
comma-separated string); the client discovers the rest of the cluster from them and
follows it through failovers. Clients are :class:`CacheCluster`, a
:class:`redis.cluster.RedisCluster`, one per process for a LOCATION and OPTIONS, shared by
every thread.

Sentinel: django-redis has it (``django_redis.client.SentinelClient`` with
``django_redis.pool.SentinelConnectionFactory``); :class:`SentinelRedisCache` is the same
for Django's ``RedisCache`` (LOCATION ``redis://SERVICE_NAME/DB``, OPTIONS ``sentinels``).

The documentation ("Production topologies") lists what a cluster cannot do as a cache and what a
failover does to locks.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django_redis.pool import ConnectionFactory
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel, SentinelConnectionPool

__all__ = [
    "CacheCluster",
    "ClusterConnectionFactory",
    "RedisClusterCache",
    "RedisClusterCacheClient",
    "SentinelRedisCache",
    "SentinelRedisCacheClient",
    "cluster_client",
]


class CacheCluster(RedisCluster):
    """The cluster client of both cache paths: a :class:`RedisCluster` whose multi-key
    reads work across slots, as a cache's do on one server.

    ``mget`` reads slot by slot (``mget_nonatomic``: each slot's keys at once, not all
    keys at one instant), so ``cache.get_many`` works; ``keys`` asks every master, so
    django-redis's ``cache.keys()`` sees every node's keys, not the default node's only.
    """

    def mget(self, keys: Any, *args: Any) -> list[Any]:
        return self.mget_nonatomic(keys, *args)

    def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        kwargs.setdefault("target_nodes", self.PRIMARIES)
        return super().keys(pattern, **kwargs)

    #: How :func:`cluster_client` made it (startup URLs, options), and in which process.
    _origin: tuple[list[str], dict[str, Any]] | None = None
    _pid: int | None = None

    def for_this_process(self) -> CacheCluster:
        """This client, or in a process forked since it was made (which inherited it in a
        cache client that keeps it, such as django-redis's), the process's own for the
        same startup nodes and options (:func:`cluster_client`)."""
        if self._origin is None or self._pid == os.getpid():
            return self
        urls, kwargs = self._origin
        return cluster_client(urls, **kwargs)


_clusters: dict[tuple[Any, ...], CacheCluster] = {}
_clusters_lock = threading.Lock()
#: What a forked child inherited from its parent (clients, pools): kept referenced and
#: never used, so that nothing closes or says goodbye on the parent's connections.
_inherited: list[Any] = []
#: The Sentinel cache clients of this process (for _after_fork_in_child).
_sentinel_clients: weakref.WeakSet[SentinelRedisCacheClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (gunicorn ``--preload``, Celery's prefork pool, ``multiprocessing``)
    makes its own cluster and Sentinel clients on first use: the parent's are dropped
    (kept referenced, never closed), and so is the mutex, which a thread of the parent
    may have held (making a cluster client) when it forked."""
    global _clusters, _clusters_lock
    _inherited.append(_clusters)
    _clusters = {}
    _clusters_lock = threading.Lock()
    for client in list(_sentinel_clients):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for an option value (dicts and lists by content)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(_frozen(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def cluster_client(startup_urls: Iterable[str], **kwargs: Any) -> CacheCluster:
    """The process's one :class:`CacheCluster` for these startup nodes and options.

    Thread-safe and shared, like django-redis shares its connection pools: discovering a
    cluster (``CLUSTER SLOTS``) and keeping a pool per node is done once per process, not
    per thread. The first URL's credentials and query options apply to every node.
    """
    urls = [url.strip() for url in startup_urls if url and url.strip()]
    if not urls:
        raise ValueError("a Redis Cluster needs at least one startup node URL")
    key = (tuple(urls), _frozen(kwargs))
    client = _clusters.get(key)
    if client is None:
        with _clusters_lock:
            client = _clusters.get(key)
            if client is None:
                nodes = []
                for url in urls:
                    parsed = urlparse(url)
                    nodes.append(ClusterNode(parsed.hostname or "127.0.0.1", parsed.port or 6379))
                # from_url reads credentials, TLS and query options of the first URL; the
                # other URLs add startup nodes. The client discovers the cluster when it is
                # created: if no startup node answers, this raises and nothing is kept, so
                # the next call tries again.
                client = CacheCluster.from_url(urls[0], startup_nodes=nodes[1:], **kwargs)
                client._origin, client._pid = (urls, kwargs), os.getpid()
                _clusters[key] = client
    return client


# ----------------------------------------------------------------------------- django-redis


class ClusterConnectionFactory(ConnectionFactory):
    """A django-redis ``CONNECTION_FACTORY`` whose clients are :class:`RedisCluster`.

    ``OPTIONS``: ``SOCKET_TIMEOUT``, ``SOCKET_CONNECT_TIMEOUT``, ``USERNAME``, ``PASSWORD``
    as usual; ``CONNECTION_POOL_KWARGS`` (per node, e.g. ``max_connections``) and
    ``REDIS_CLIENT_KWARGS`` (``RedisCluster`` arguments: ``retry``,
    ``require_full_coverage``, ``read_from_replicas``...) are passed to the cluster client.
    ``CONNECTION_POOL_CLASS`` and ``REDIS_CLIENT_CLASS`` do not apply.

    django-redis connects each LOCATION entry separately (writes through the first, reads
    through the others): with this factory each is a client of the whole cluster, started
    from that node, so any entry serves any key.
    """

    def connect(self, url: str) -> CacheCluster:
        return self.get_connection(self.make_connection_params(url))

    def get_connection(self, params: dict[str, Any]) -> CacheCluster:
        params = dict(params)
        url = params.pop("url")
        params.pop("parser_class", None)  # RedisCluster picks its parser itself
        return cluster_client([url], **params, **self.pool_cls_kwargs, **self.redis_client_cls_kwargs)

    def disconnect(self, connection: Any) -> None:
        """Close the sockets to every node (they reopen on the next command)."""
        connection.disconnect_connection_pools()


# ----------------------------------------------------------------------------- Django's RedisCache


class RedisClusterCacheClient(RedisCacheClient):
    """Django's ``RedisCacheClient`` on a Redis Cluster.

    OPTIONS are passed to :class:`RedisCluster` (connection options such as
    ``socket_timeout`` for every node, and cluster options such as ``retry``);
    ``serializer`` works as in Django. Multi-key operations are split by hash slot
    (not atomic across slots, as on any cluster): ``get_many`` through
    :class:`CacheCluster`, ``set_many`` as one pipelined SET per key.
    """

    def __init__(self, servers: list[str], serializer: Any = None, pool_class: Any = None,
                 parser_class: Any = None, **options: Any) -> None:
        super().__init__(servers, serializer, pool_class, parser_class, **options)
        self._cluster_options = options

    def get_client(self, key: Any = None, *, write: bool = False) -> CacheCluster:
        return cluster_client(self._servers, **self._cluster_options)

    def set_many(self, data: dict[str, Any], timeout: int | None) -> None:
        pipeline = self.get_client(None, write=True).pipeline(transaction=False)
        for key, value in data.items():
            if timeout == 0:
                pipeline.delete(key)
            else:
                pipeline.set(key, self._serializer.dumps(value), ex=timeout)
        pipeline.execute()


class RedisClusterCache(RedisCache):
    """``BACKEND: "django_locks.cluster.RedisClusterCache"``: Django's ``RedisCache`` on a
    Redis Cluster. LOCATION: one or more startup node URLs."""

    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisClusterCacheClient


# ----------------------------------------------------------------------------- Sentinel


class SentinelRedisCacheClient(RedisCacheClient):
    """Django's ``RedisCacheClient`` on the master that Redis Sentinel names.

    LOCATION ``redis://SERVICE_NAME/DB`` (credentials and query options as usual);
    OPTIONS ``sentinels`` (a list of ``(host, port)``, required), ``sentinel_kwargs``
    (options of the connections to the sentinels), and connection options for the
    master. Reads and writes both go to the master: reading from a replica could see a
    lock that is already released, or miss one just taken.
    """

    def __init__(self, servers: list[str], serializer: Any = None, pool_class: Any = None,
                 parser_class: Any = None, *, sentinels: list[tuple[str, int]] | None = None,
                 sentinel_kwargs: dict[str, Any] | None = None, **options: Any) -> None:
        if not sentinels:
            raise ValueError("SentinelRedisCache needs OPTIONS['sentinels'], a list of (host, port)")
        super().__init__(servers, serializer, pool_class or SentinelConnectionPool, parser_class, **options)
        self._sentinel_args = (sentinels, sentinel_kwargs, options)
        self._sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **options)
        _sentinel_clients.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: new pools and sentinel connections, made on first use; the
        parent's are kept referenced, never closed."""
        _inherited.append((self._pools, self._sentinel))
        self._pools = {}
        sentinels, sentinel_kwargs, options = self._sentinel_args
        self._sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **options)

    def _get_connection_pool(self, write: bool) -> Any:
        pool = self._pools.get(0)
        if pool is None:
            url = self._servers[0]
            pool = self._pools[0] = self._pool_class.from_url(
                url, service_name=urlparse(url).hostname, sentinel_manager=self._sentinel,
                is_master=True, **self._pool_options,
            )
        return pool


class SentinelRedisCache(RedisCache):
    """``BACKEND: "django_locks.cluster.SentinelRedisCache"``: Django's ``RedisCache`` on
    the current master of a Redis Sentinel service."""

    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = SentinelRedisCacheClient

