"""The app the deployment tier serves (tests/topologies/test_deployment.py): locked views behind
gunicorn and uvicorn, locked tasks on a Celery worker, and the lock use of a server's
master process before it forks its workers (:mod:`tests.support.deploy.warmup`)."""
