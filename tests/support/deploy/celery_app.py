"""The Celery app of the deployment tier: one ``locked`` task per lock alias.

``celery -A tests.support.deploy.celery_app worker --pool prefork`` with the broker and result
backend on Redis (:func:`config`: a queue and a key prefix of the run's own, from the
environment). The worker's master uses the lock before it forks its pool
(``worker_init``, :mod:`tests.support.deploy.warmup`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import django
from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django_locks import locks  # noqa: E402 (after django.setup())
from django_locks.decorators import locked  # noqa: E402
from tests.support.deploy import counter, warmup  # noqa: E402

BROKER_ENV = "DJANGO_LOCKS_DEPLOY_BROKER"
QUEUE_ENV = "DJANGO_LOCKS_DEPLOY_QUEUE"
PREFIX_ENV = "DJANGO_LOCKS_DEPLOY_PREFIX"


def config(broker_url: str, queue: str, prefix: str) -> dict[str, Any]:
    """The settings the worker and the test's client share."""
    return {
        "broker_url": broker_url,
        "result_backend": broker_url,
        "task_default_queue": queue,
        "broker_transport_options": {"global_keyprefix": prefix},
        "result_backend_transport_options": {"global_keyprefix": prefix},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 600,
        "worker_prefetch_multiplier": 1,
        "worker_enable_remote_control": False,
    }


app = Celery("django_locks_deploy")
app.conf.update(config(os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/1"),
                       os.environ.get(QUEUE_ENV, "django_locks_deploy"),
                       os.environ.get(PREFIX_ENV, "django_locks_deploy:")))


@worker_init.connect
def use_lock_before_fork(**kwargs: Any) -> None:
    warmup.use_lock_before_fork()


def task_key(key: str) -> str:
    return f"deploy-task:{key}"


def _task(alias: str) -> Any:
    using = counter.database_of(alias)

    @locked("deploy-task:{key}", ttl=30_000, timeout=60_000, backend=alias)
    def increment(key: str) -> dict[str, Any]:
        enter = time.monotonic_ns()
        info = locks[alias].get_lock(task_key(key))
        value = counter.increment(using, f"{alias}:{key}")
        return {"key": key, "enter": enter, "leave": time.monotonic_ns(),
                "fencing": -1 if info is None else info.fencing_token, "value": value,
                "pid": os.getpid()}

    return app.task(name=f"deploy.increment.{alias}")(increment)


TASKS = {alias: _task(alias) for alias in counter.ALIASES}
