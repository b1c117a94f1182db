from django.apps import AppConfig


class DjangoLocksConfig(AppConfig):
    name = "django_locks"
    verbose_name = "Locks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import request_finished, request_started

        from django_locks import checks  # noqa: F401 - registers the system checks
        from django_locks.backends import database

        request_started.connect(database.close_old_lock_connections)
        request_finished.connect(database.close_old_lock_connections)
