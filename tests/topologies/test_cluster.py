"""CacheLock on a Redis Cluster (the suite's own: 3 masters, 3 replicas), through both
one-line configurations: django-redis with ``ClusterConnectionFactory`` ("cluster") and
``RedisClusterCache`` on Django's RedisCache path ("cluster_django")."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from django.core.cache import caches
from django.test import override_settings
from redis.exceptions import RedisClusterException

from django_locks import locks
from django_locks.exceptions import LockBackendError, LockNotHeldError
from tests import proof
from tests.helpers import check_history, free_port, overlaps_in, wait_until
from tests.topology import (
    CLUSTER_ALIASES,
    Waiter,
    measure_outage,
    measured,
    run_workers,
)

#: Keys that break a naive ``{key}`` hash tag, and their neighbours.
HOSTILE_KEYS = ["}x", "}", "{}", "a{b}c", "{", "x" * 255, "{" * 255, "}" * 255, "%7B", "%",
                "%7D", "{%7D}", "é{ü}", "😀}{😀", "job"]


@pytest.fixture(params=CLUSTER_ALIASES)
def cluster_alias(request, redis_cluster) -> str:
    return request.param


def master_port_of(cluster, backend, key: str) -> int:
    return cluster.master_of_slot(cluster.keyslot(backend._keys(key).lock)).port


def keys_on_each_master(cluster, backend) -> dict[int, str]:
    """A key whose lock lives on each master: master port -> key."""
    found: dict[int, str] = {}
    for i in range(200):
        found.setdefault(master_port_of(cluster, backend, f"key-{i}"), f"key-{i}")
        if len(found) == 3:
            return found
    pytest.fail("no key found for every master")


def blocked_in_blpop(node) -> bool:
    with node.client() as client:
        return any(entry.get("cmd") == "blpop" for entry in client.client_list())


def test_every_key_keeps_its_three_names_in_one_slot(redis_cluster, cluster_alias):
    """Asked of the cluster itself (CLUSTER KEYSLOT), for keys built to break hash tags."""
    backend = locks[cluster_alias]
    names = {}
    for key in HOSTILE_KEYS:
        keys = backend._keys(key)
        assert len({redis_cluster.keyslot(name) for name in keys}) == 1, (key, keys)
        names[key] = keys.lock
        with backend.lock(key, 60_000) as lease:  # the three names in one script: no CROSSSLOT
            assert backend.get_lock(key).token == lease.token
    assert len(set(names.values())) == len(HOSTILE_KEYS)  # no two keys share a lock
    assert names["job"].endswith("django_locks:{job}:lock")  # a plain key reads as before
    for key in HOSTILE_KEYS:
        assert backend.try_acquire_lock(None, key, 60_000)
    assert sorted(info.key for info in backend.held_locks()) == sorted(HOSTILE_KEYS)


def test_locks_and_waits_on_every_master(redis_cluster, cluster_alias):
    backend = locks[cluster_alias]
    keys = keys_on_each_master(redis_cluster, backend)
    leases = {key: backend.lock(key, 60_000, correlation_id="holder") for key in keys.values()}
    assert sorted(info.key for info in backend.held_locks()) == sorted(keys.values())
    for port, key in keys.items():
        # A waiter blocks on the key's own master (BLPOP there) and the release wakes it.
        waiter = Waiter(cluster_alias, key, timeout_ms=20_000)
        waiter.start()
        wait_until(lambda port=port: blocked_in_blpop(redis_cluster.node(port)))
        assert waiter.is_alive()
        leases[key].release()
        waiter.join(10)
        assert waiter.error is None and waiter.elapsed < 10
        assert waiter.lease.fencing_token > leases[key].fencing_token
        leases[key] = waiter.lease
    key = keys[min(keys)]
    leases[key].extend(30_000)
    backend.release_lock(None, key, owner=leases[key].token)
    with pytest.raises(LockNotHeldError):
        leases[key].release()
    assert backend.force_release(keys[max(keys)])
    assert backend.get_lock(keys[max(keys)]) is None

    async def async_waiter() -> int:
        lease = await locks[cluster_alias].alock("async", 60_000, timeout=10_000)
        await lease.arelease()
        return lease.fencing_token

    held = backend.lock("async", 200)
    assert asyncio.run(async_waiter()) > held.fencing_token


def test_cache_operations_on_the_cluster(redis_cluster, cluster_alias):
    """The cache itself, with keys spread over every master."""
    cache = caches[cluster_alias]
    data = {f"k{i}": i for i in range(30)}
    cache.set_many(data, 60)
    assert cache.get_many(list(data)) == data
    assert cache.add("k0", "other") is False and cache.get("k0") == 0
    assert cache.incr("k1", 10) == 11
    assert cache.touch("k2", 60) and cache.has_key("k2")
    cache.delete_many(["k0", "k1"])
    assert cache.get_many(["k0", "k1", "k3"]) == {"k3": 3}
    assert cache.get_or_set("new", 5) == 5 and cache.delete("new")
    if cluster_alias == "cluster":  # django-redis's own extras
        assert len(cache.keys("k*")) == 28 and len(list(cache.iter_keys("k*"))) == 28
        assert cache.ttl("k3") > 0
        assert cache.delete_pattern("k1*") == 10
        cache.client.do_close_clients()  # CLOSE_CONNECTION: the factory's disconnect
        assert cache.get("k3") == 3  # and it reconnects
    cache.clear()
    assert cache.get_many(list(data)) == {}


def test_an_unreachable_cluster_is_a_backend_error(redis_cluster):
    url = f"redis://127.0.0.1:{free_port()}"
    with override_settings(
        CACHES={
            "gone": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url,
                     "OPTIONS": {"CONNECTION_FACTORY": "django_locks.cluster.ClusterConnectionFactory",
                                 "SOCKET_CONNECT_TIMEOUT": 1}},
            "gone_django": {"BACKEND": "django_locks.cluster.RedisClusterCache", "LOCATION": url,
                            "OPTIONS": {"socket_connect_timeout": 1}},
        },
        LOCKS={alias: {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": alias}}
               for alias in ("gone", "gone_django")},
    ):
        calls = (
            lambda backend: backend.try_acquire_lock(None, "job", 1000),
            lambda backend: backend.acquire_lock(None, "job", 1000, 500),
            lambda backend: backend.release_lock(None, "job", owner="0" * 32),
            lambda backend: backend.force_release("job"),
            lambda backend: backend.get_lock("job"),
            lambda backend: backend.held_locks(),
        )
        for alias in ("gone", "gone_django"):
            for call in calls:
                with pytest.raises(LockBackendError) as caught:
                    call(locks[alias])
                # Not a RedisError: the cluster client's own "cannot be connected".
                assert isinstance(caught.value.__cause__, RedisClusterException)


def test_processes_contend_for_keys_on_every_master(redis_cluster, tmp_path):
    """6 processes, 30 keys spread over the three masters: per key, exact counts, no
    overlap, fencing tokens rising."""
    counters, log = tmp_path / "counters", tmp_path / "log"
    counters.mkdir()
    keys = [f"k{i}" for i in range(30)]
    n, m = 6, 20
    run_workers({"alias": "cluster_django", "mode": "many", "keys": keys, "iterations": m,
                 "counter_dir": str(counters), "log": str(log), "hold": 0.0002}, n)
    by_key: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        key, *numbers = line.split()
        by_key[key].append(tuple(map(int, numbers)))
    proof.record_contention("many keys", "cluster_django", n, m, len(keys), n * m,
                            sum(overlaps_in(sorted(records)) for records in by_key.values()))
    assert sum(map(len, by_key.values())) == n * m
    for key, records in by_key.items():
        check_history(records, int((counters / key).read_text()), len(records))
    backend = locks["cluster_django"]
    assert len({master_port_of(redis_cluster, backend, key) for key in by_key}) == 3


def test_a_master_killed_with_locks_held(redis_cluster):
    """SIGKILL a master holding locks, with a waiter blocked on it: calls for its slots
    fail with LockBackendError until its replica is promoted; then every lock is there
    with its holder, and the waiter, which retried meanwhile, gets the lock when it is
    released, within its own timeout."""
    alias = "cluster"
    backend = locks[alias]
    keys = keys_on_each_master(redis_cluster, backend)
    leases = {key: backend.lock(key, 60_000, correlation_id="holder") for key in keys.values()}
    victim_port, victim_key = min(keys.items())
    victim = redis_cluster.node(victim_port)

    def replicated() -> bool:  # what the replica acknowledged survives a failover
        info = victim.info("replication")
        return info["slave0"]["offset"] == info["master_repl_offset"]

    wait_until(replicated)
    waiter = Waiter(alias, victim_key, timeout_ms=30_000)
    waiter.start()
    wait_until(lambda: blocked_in_blpop(victim))
    killed = time.monotonic()
    victim.kill()
    try:
        proof.record_fault("redis cluster master killed")
        started = time.monotonic()
        with pytest.raises(LockBackendError):  # never "not acquired"
            backend.try_acquire_lock(None, victim_key, 60_000)
        # At once, whatever the redis-py version: redis-py 8's cluster client retried a refused
        # connection up to 10 times with a backoff (about 3 s, then False from the replica
        # promoted meanwhile); lock calls are sent without those retries.
        failed_after = time.monotonic() - started
        assert failed_after < 1.0, failed_after
        window, failures = measure_outage(lambda: backend.get_lock(victim_key), killed)
        # The other masters answer CLUSTERDOWN (LockBackendError, never a wrong answer) until
        # gossip tells them the cluster is whole again.
        for key in leases:
            measure_outage(lambda key=key: backend.get_lock(key), killed)
        for key, lease in leases.items():  # every lock survived, with its holder
            info = backend.get_lock(key)
            assert (info.token, info.fencing_token) == (lease.token, lease.fencing_token)
        assert waiter.is_alive() and waiter.error is None  # still waiting, not failed
        released = time.monotonic()
        holder = leases.pop(victim_key)
        holder.release()
        waiter.join(10)
        assert waiter.error is None, waiter.error
        assert waiter.lease.fencing_token > holder.fencing_token
        handoff = waiter.ended_at - released
        measured(f"Redis Cluster, master SIGKILLed: a call failed {failed_after * 1000:.0f} ms after it "
                 f"began; LockBackendError for {window:.1f} s ({failures} failed probes) until its "
                 f"replica took over; 3 of 3 locks survived with their tokens; a waiter (timeout "
                 f"30 s) got the lock {handoff:.2f} s after the release, {waiter.elapsed:.1f} s after "
                 f"it started waiting")
        assert window < 15
        for lease in leases.values():
            lease.release()
        waiter.lease.release()
    finally:
        victim.start()  # it rejoins as a replica of its former replica
    redis_cluster.wait_healthy()


def test_listing_pages_walk_every_master_without_reading_everything(redis_cluster, cluster_alias,
                                                                   monkeypatch):
    """list_locks on a cluster: SCAN steps on each master in turn, one page at a time (the
    full read, ``held()``, is never used), every key on exactly one page."""
    from django_locks.values import encode_cursor

    backend = locks[cluster_alias]
    keys = {f"page:{i:02d}" for i in range(23)}
    assert len({master_port_of(redis_cluster, backend, key) for key in keys}) == 3
    for key in keys:
        backend.acquire_lock(None, key, 60_000, 0)
    backend.acquire_lock(None, "other", 60_000, 0)

    def no_full_read():
        raise AssertionError("a page read every lock")

    monkeypatch.setattr(backend.client, "held", no_full_read)
    pages, cursor = [], None
    for _ in range(100):
        page = backend.list_locks(prefix="page:", cursor=cursor, limit=5)
        pages.append([info.key for info in page.holders])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert all(len(found) <= 5 for found in pages)
    assert sorted(key for found in pages for key in found) == sorted(keys)  # each exactly once
    assert len(pages) >= 5
    one = backend.list_locks(prefix="page:1", limit=100)
    assert sorted(info.key for info in one.holders) == sorted(k for k in keys if k.startswith("page:1"))
    assert one.next_cursor is None
    for bad in ("nonsense", encode_cursor("scan", 0, None), encode_cursor("cluster-scan", -1, 0, None)):
        with pytest.raises(ValueError, match="cursor"):
            backend.list_locks(cursor=bad)
    monkeypatch.undo()
    for key in [*keys, "other"]:
        backend.release_lock(None, key)
