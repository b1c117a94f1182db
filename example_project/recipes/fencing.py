# What to do with lease.fencing_token: hand it to what you write, and let that refuse older ones.
import json
from datetime import timedelta
from pathlib import Path

from django_locks import locks
from example_project.models import Report


class StaleWriteError(Exception):
    """A holder with a newer fencing token wrote first: this lease was lost (paused past its ttl)."""


def save_report(lease, report_id: int, body: str) -> None:
    """A database row: one conditional UPDATE refusing lower tokens (never a read, then a write)."""
    written = Report.objects.filter(pk=report_id, fencing_token__lte=lease.fencing_token).update(
        body=body, fencing_token=lease.fencing_token
    )
    if not written:
        raise StaleWriteError(f"report {report_id} was written under a newer lock")


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
