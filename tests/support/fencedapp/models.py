"""The test app of fenced writes (tests/surfaces/test_fencing.py): a concrete FencedModel, migrated on
every test database, and a plain log of accepted writes (the contention test)."""

from django.db import models

from django_locks.fencing import FencedModel


class Document(FencedModel):
    name = models.CharField(max_length=100, unique=True)
    body = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.name


class WriteLog(models.Model):
    """One row per accepted fenced write, inserted in the write's own transaction: ids in
    the order the writes to one document committed."""

    document = models.CharField(max_length=100)
    fencing_token = models.BigIntegerField()
    pid = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.document} @ {self.fencing_token}"
