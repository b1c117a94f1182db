"""Django settings of the benchmark: its own databases (created if missing) and key prefixes,
both named by DJANGO_LOCKS_BENCH_DB (default django_locks_bench), so that two checkouts can
run it against the same servers."""

import os
import tempfile
from pathlib import Path

from tests.servers import cluster_urls, topology_ports

SECRET_KEY = "django-locks-bench"
USE_TZ = True
# tests.support.fencedapp: the FencedModel of the "fenced update vs plain update" rows.
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_locks",
                  "tests.support.fencedapp"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
BENCH_DB = os.environ.get("DJANGO_LOCKS_BENCH_DB", "django_locks_bench")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(tempfile.gettempdir()) / f"{BENCH_DB}.sqlite3"),
    },
    "postgres": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
        "PORT": os.environ.get("POSTGRES_PORT", "5432"),
        "USER": os.environ.get("POSTGRES_USER", "postgres"),
        "PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
        "NAME": BENCH_DB,
        "CONN_MAX_AGE": None,
    },
    "mysql": {
        "ENGINE": "django.db.backends.mysql",
        "HOST": os.environ.get("MYSQL_HOST", "127.0.0.1"),
        "PORT": os.environ.get("MYSQL_PORT", "3306"),
        "USER": os.environ.get("MYSQL_USER", "root"),
        "PASSWORD": os.environ.get("MYSQL_PASSWORD", ""),
        "NAME": BENCH_DB,
        "OPTIONS": {"charset": "utf8mb4"},
        "CONN_MAX_AGE": None,
    },
}

# PgBouncer (transaction pooling) in front of the same PostgreSQL database, and a Redis
# Cluster: servers of the benchmark's own, started by benchmarks/__main__.py with the test
# suite's harness (tests/servers.py) on spare ports, which contender processes inherit.
TOPOLOGY_PORTS = topology_ports()
DATABASES["pgbouncer"] = {**DATABASES["postgres"], "PORT": str(TOPOLOGY_PORTS["pgbouncer"][0])}

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "django_redis": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL,
                     "KEY_PREFIX": BENCH_DB, "OPTIONS": {"SOCKET_TIMEOUT": 5}},
    "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
              "KEY_PREFIX": f"{BENCH_DB}_dj", "OPTIONS": {"socket_timeout": 5}},
    "cluster": {"BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": ",".join(cluster_urls(TOPOLOGY_PORTS)), "KEY_PREFIX": BENCH_DB,
                "OPTIONS": {"CONNECTION_FACTORY": "django_locks.cluster.ClusterConnectionFactory",
                            "SOCKET_TIMEOUT": 5}},
}

DB_LOCK = "django_locks.backends.database.DatabaseLock"
CACHE_LOCK = "django_locks.backends.cache.CacheLock"
LOCKS = {
    "sqlite": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "default"}},
    "sqlite_fast": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "default", "durable": False}},
    "postgres": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "postgres"}},
    "postgres_fast": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "postgres", "durable": False}},
    # Waiters poll (1 to 10 ms backoff) instead of being woken by the release's NOTIFY.
    "postgres_poll": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "postgres", "notify": False}},
    "postgres_fast_poll": {"BACKEND": DB_LOCK,
                           "OPTIONS": {"using": "postgres", "durable": False, "notify": False}},
    "pgbouncer": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "pgbouncer"}},
    "mysql": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "mysql"}},
    "django_redis": {"BACKEND": CACHE_LOCK, "OPTIONS": {"cache": "django_redis"}},
    "redis": {"BACKEND": CACHE_LOCK, "OPTIONS": {"cache": "redis"}},
    "cluster": {"BACKEND": CACHE_LOCK, "OPTIONS": {"cache": "cluster"}},
    "memory": {"BACKEND": "django_locks.backends.memory.MemoryLock"},
}
