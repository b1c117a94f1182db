"""The ASGI app of the deployment tier (uvicorn, gunicorn with UvicornWorker): the test
settings, and the master's lock use before the fork when it is preloaded
(:mod:`tests.support.deploy.warmup`)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
application = get_asgi_application()

from tests.support.deploy.warmup import use_lock_before_fork  # noqa: E402 (needs the app set up)

use_lock_before_fork()
