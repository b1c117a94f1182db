# Publish a report once the transaction that saved it has committed, under a lock.
from datetime import timedelta

from django.db import transaction

from django_locks.decorators import locked
from example_project.models import Report


@locked("publish:{report_id}", ttl=timedelta(minutes=1), timeout=timedelta(seconds=10))
def publish(report_id: int) -> None:
    report = Report.objects.get(pk=report_id)  # committed, so visible here
    # ... render, upload, notify: one publisher per report at a time ...
    Report.objects.filter(pk=report.pk).update(published=True)


def save_and_publish(report: Report) -> None:
    with transaction.atomic():
        report.save()
        # After the commit, not inside: the lock is not part of this transaction (DatabaseLock
        # writes on a connection of its own), and a rollback must not have published anything.
        transaction.on_commit(lambda: publish(report.pk))
