"""Settings of the test suite. Servers come from environment variables (see README)."""

import json
import os
import tempfile
from pathlib import Path

#: The drivers the database tests run under (CI runs them under each one): mysqlclient or
#: PyMySQL for MariaDB, psycopg (3) or psycopg2 for PostgreSQL.
MYSQL_DRIVER = os.environ.get("DJANGO_LOCKS_TEST_MYSQL_DRIVER", "mysqlclient")
POSTGRES_DRIVER = os.environ.get("DJANGO_LOCKS_TEST_POSTGRES_DRIVER", "psycopg")
if MYSQL_DRIVER == "pymysql":
    import pymysql

    pymysql.install_as_MySQLdb()
if POSTGRES_DRIVER == "psycopg2":
    import sys

    sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django then imports psycopg2

SECRET_KEY = "django-locks-tests"
USE_TZ = True
DEBUG = False
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.admin",
    "django_locks",
    "example_project",  # the model of the README's recipes (tests/surfaces/test_recipes.py)
    "tests.support.fencedapp",  # a FencedModel (tests/surfaces/test_fencing.py)
]
STATIC_URL = "static/"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

#: Appended to test database names and cache key prefixes, so that two checkouts (or two
#: runs of one) can run the suite at the same time against the same servers. Unique per
#: run by default (the pytest process's pid); set in the environment here so that the
#: processes the tests start inherit the same one.
RUN_SUFFIX = os.environ.setdefault("DJANGO_LOCKS_TEST_SUFFIX", f"_p{os.getpid()}")

# A file of its own per run, so that separate connections (and processes) share it.
SQLITE_DIR = Path(os.environ.get("DJANGO_LOCKS_SQLITE_DIR", tempfile.gettempdir()))

#: "unit": the hermetic tier (scripts/test --unit), which reaches no server at all.
TIER = os.environ.get("DJANGO_LOCKS_TEST_TIER", "full")

#: Which databases the DatabaseLock tests run on: sqlite, postgres, mysql.
TEST_DATABASES = [
    name.strip()
    for name in os.environ.get("DJANGO_LOCKS_TEST_DATABASES", "sqlite,postgres,mysql").split(",")
    if name.strip() and TIER != "unit"
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(SQLITE_DIR / f"django_locks{RUN_SUFFIX}.sqlite3"),
        "TEST": {"NAME": str(SQLITE_DIR / f"test_django_locks{RUN_SUFFIX}.sqlite3")},
    }
}
if "postgres" in TEST_DATABASES:
    DATABASES["postgres"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
        "PORT": os.environ.get("POSTGRES_PORT", "5432"),
        "USER": os.environ.get("POSTGRES_USER", "postgres"),
        "PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
        "NAME": os.environ.get("POSTGRES_DB", "test"),
        "TEST": {"NAME": f"test_django_locks{RUN_SUFFIX}"},
    }
if "mysql" in TEST_DATABASES:
    DATABASES["mysql"] = {
        "ENGINE": "django.db.backends.mysql",
        "HOST": os.environ.get("MYSQL_HOST", "127.0.0.1"),
        "PORT": os.environ.get("MYSQL_PORT", "3306"),
        "USER": os.environ.get("MYSQL_USER", "root"),
        "PASSWORD": os.environ.get("MYSQL_PASSWORD", ""),
        "NAME": os.environ.get("MYSQL_DB", "test"),
        "OPTIONS": {"charset": "utf8mb4"},
        "TEST": {"NAME": f"test_django_locks{RUN_SUFFIX}", "CHARSET": "utf8mb4"},
    }

# The suite's own servers (tests/servers.py): their ports are chosen once per run and
# inherited by child processes. PgBouncer (transaction and session pooling) stands in front
# of the PostgreSQL test database: its aliases are mirrors (no database of their own).
if TIER != "unit":
    from tests.servers import SENTINEL_SERVICE, cluster_urls, sentinel_addresses, topology_ports

    TOPOLOGY_PORTS = topology_ports()
    if "postgres" in DATABASES:
        _through_pgbouncer = {
            "pgbouncer_transaction": (TOPOLOGY_PORTS["pgbouncer"][0], {}),
            # The alias asks psycopg for server-side prepared statements for everything.
            "pgbouncer_prepared": (TOPOLOGY_PORTS["pgbouncer"][0],
                                   {"prepare_threshold": 0, "server_side_binding": True}),
            "pgbouncer_session": (TOPOLOGY_PORTS["pgbouncer"][1], {}),
        }
        for _alias, (_port, _options) in _through_pgbouncer.items():
            DATABASES[_alias] = {**DATABASES["postgres"], "PORT": str(_port), "OPTIONS": _options,
                                 "TEST": {"MIRROR": "postgres"}}

# Subprocesses of the tests (workers, `manage.py locks`) reach the test databases by name.
for _alias, _name in json.loads(os.environ.get("DJANGO_LOCKS_TEST_DB_NAMES", "{}")).items():
    DATABASES[_alias]["NAME"] = _name

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "django_redis": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"django_locks_tests{RUN_SUFFIX}",
        "OPTIONS": {"SOCKET_TIMEOUT": 5, "SOCKET_CONNECT_TIMEOUT": 2},
    },
    "redis": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"django_locks_tests_django{RUN_SUFFIX}",
        "OPTIONS": {"socket_timeout": 5, "socket_connect_timeout": 2},
    },
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "dummy": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
    # Nothing listens on port 1: every call is a backend error.
    "unreachable": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 1},
    },
}

LOCKS = {
    "default": {"BACKEND": "django_locks.backends.database.DatabaseLock"},
    "django_redis": {
        "BACKEND": "django_locks.backends.cache.CacheLock",
        "OPTIONS": {"cache": "django_redis"},
    },
    "redis": {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "redis"}},
    "memory": {"BACKEND": "django_locks.backends.memory.MemoryLock"},
    "locmem": {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "locmem"}},
    "unreachable": {
        "BACKEND": "django_locks.backends.cache.CacheLock",
        "OPTIONS": {"cache": "unreachable"},
    },
}
for _alias in ("postgres", "mysql"):
    if _alias in DATABASES:
        LOCKS[_alias] = {
            "BACKEND": "django_locks.backends.database.DatabaseLock",
            "OPTIONS": {"using": _alias},
        }

# The suite's own Redis Cluster and Sentinel set (started by the fixtures of
# tests/topology.py when a test needs them), and the PgBouncer aliases above. Their lock
# aliases are in TOPOLOGY_LOCKS, not LOCKS, so that the tests parametrized over every
# alias do not need these servers; the topology tests add them (and so do worker
# processes started with DJANGO_LOCKS_TEST_TOPOLOGY_LOCKS=1).
TOPOLOGY_LOCKS: dict = {}
if TIER != "unit":
    _CLUSTER_URLS = cluster_urls(TOPOLOGY_PORTS)
    CACHES.update({
        # django-redis, one line: the CONNECTION_FACTORY.
        "cluster": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": ",".join(_CLUSTER_URLS),
            "KEY_PREFIX": f"django_locks_tests{RUN_SUFFIX}",
            "OPTIONS": {"CONNECTION_FACTORY": "django_locks.cluster.ClusterConnectionFactory",
                        "SOCKET_TIMEOUT": 2, "SOCKET_CONNECT_TIMEOUT": 1},
        },
        # Django's RedisCache path, one line: the BACKEND.
        "cluster_django": {
            "BACKEND": "django_locks.cluster.RedisClusterCache",
            "LOCATION": _CLUSTER_URLS,
            "KEY_PREFIX": f"django_locks_tests_django{RUN_SUFFIX}",
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 1},
        },
        # django-redis's own Sentinel support.
        "sentinel": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://{SENTINEL_SERVICE}/0",
            "KEY_PREFIX": f"django_locks_tests{RUN_SUFFIX}",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                "SENTINELS": sentinel_addresses(TOPOLOGY_PORTS),
                "SOCKET_TIMEOUT": 2, "SOCKET_CONNECT_TIMEOUT": 1,
            },
        },
        "sentinel_django": {
            "BACKEND": "django_locks.cluster.SentinelRedisCache",
            "LOCATION": f"redis://{SENTINEL_SERVICE}/0",
            "KEY_PREFIX": f"django_locks_tests_django{RUN_SUFFIX}",
            "OPTIONS": {"sentinels": sentinel_addresses(TOPOLOGY_PORTS),
                        "socket_timeout": 2, "socket_connect_timeout": 1},
        },
    })
    TOPOLOGY_LOCKS.update({
        alias: {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": alias}}
        for alias in ("cluster", "cluster_django", "sentinel", "sentinel_django")
    })
    for _alias in ("pgbouncer_transaction", "pgbouncer_prepared", "pgbouncer_session"):
        if _alias in DATABASES:
            TOPOLOGY_LOCKS[_alias] = {"BACKEND": "django_locks.backends.database.DatabaseLock",
                                      "OPTIONS": {"using": _alias}}
    if os.environ.get("DJANGO_LOCKS_TEST_TOPOLOGY_LOCKS"):
        LOCKS.update(TOPOLOGY_LOCKS)

if TIER == "unit":
    # No server: the surfaces (decorators, command) and the contract run on MemoryLock and
    # LocMemCache. The aliases the tests name keep their names; nothing else is configured.
    LOCKS = {
        alias: {"BACKEND": "django_locks.backends.memory.MemoryLock"}
        for alias in ("default", "redis", "memory")
    }
    LOCKS["locmem"] = {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "locmem"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"django_locks": {"handlers": ["null"], "level": "DEBUG"}},
}
