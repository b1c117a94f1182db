from django.apps import AppConfig
from django.core.signals import request_finished, request_started

from django_locks import checks  # noqa: F401 - registers the system checks
from django_locks.handler import close_locks


class DjangoLocksConfig(AppConfig):
    name = "django_locks"
    verbose_name = "Locks"

    def ready(self) -> None:
        # Like Django's close_old_connections and close_caches: lock connections that are
        # unusable or past their CONN_MAX_AGE are closed around every request.
        request_started.connect(close_locks, dispatch_uid="django_locks.close_locks.started")
        request_finished.connect(close_locks, dispatch_uid="django_locks.close_locks.finished")
