# What to do with lease.fencing_token: let what you write refuse a lease older than its last writer.
import json
from datetime import timedelta
from pathlib import Path

from django_locks import locks
from example_project.models import Report  # a FencedModel


def save_report(lease, report_id: int, body: str) -> int:
    """A fenced UPDATE: written with lease.fencing_token, or django_locks.fencing.StaleLeaseError
    and nothing written when a newer holder wrote the row (check and write: one transaction)."""
    return Report.objects.fenced(lease).filter(pk=report_id).update(body=body)


def store_report(lease, bucket: Path, report_id: int, body: str) -> Path:
    """An object store cannot compare numbers: never overwrite. Create one object per lease,
    named by its token (create-only: S3 PutObject with If-None-Match: *); readers take the
    highest name, so a late write by a lost lease is never read."""
    path = bucket / f"reports/{report_id}/{lease.fencing_token:020d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x") as f:
        json.dump({"body": body, "fencing_token": lease.fencing_token}, f)
    return path


def latest_report(bucket: Path, report_id: int) -> dict:
    return json.loads(max((bucket / f"reports/{report_id}").glob("*.json")).read_text())


def rebuild_report(bucket: Path, report_id: int, body: str) -> None:
    with locks["default"].lock(f"report:{report_id}", ttl=timedelta(seconds=30)) as lease:
        save_report(lease, report_id, body)
        store_report(lease, bucket, report_id, body)
