"""The one model of the example, used by the recipes (README, "Recipes")."""

from django.db import models

from django_locks.fencing import FencedModel


class Report(FencedModel):
    """A FencedModel: its ``fencing_token`` is the token of the lock holder that last wrote
    the row through a fenced write (0: never), and ``Report.objects.fenced(lease)`` refuses
    writes by a lease older than that (see docs/fencing.md)."""

    name = models.CharField(max_length=100, unique=True)
    body = models.TextField(blank=True)
    published = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name
