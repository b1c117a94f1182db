"""The one model of the example, used by the recipes (README, "Recipes")."""

from django.db import models


class Report(models.Model):
    name = models.CharField(max_length=100, unique=True)
    body = models.TextField(blank=True)
    published = models.BooleanField(default=False)
    #: The fencing token of the lock holder that last wrote this row (0: never written under a lock).
    fencing_token = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return self.name
