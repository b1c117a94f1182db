# A background task, as a Celery or RQ worker runs it: never twice at once per account.
import logging
from datetime import timedelta

from django_locks import close_locks
from django_locks.decorators import locked
from django_locks.exceptions import LockTimeoutError

logger = logging.getLogger(__name__)


@locked("sync-account:{account_id}", ttl=timedelta(minutes=2), auto_renew=True)
def sync_account(account_id: int) -> str:
    # ... call the payment provider, write rows: one worker per account at a time ...
    return f"account {account_id} synced"


def sync_account_task(account_id: int) -> str:
    """What the worker runs: wrap it in Celery's @shared_task, or queue.enqueue(it, 7) with RQ."""
    try:
        return sync_account(account_id)
    except LockTimeoutError:  # another worker is syncing this account now (timeout=0: no wait)
        logger.info("account %s is being synced by another worker: skipped", account_id)
        return f"account {account_id} skipped"  # Celery: or raise self.retry(countdown=30)
    finally:
        close_locks()  # a worker is not a request: give back lock connections between jobs
