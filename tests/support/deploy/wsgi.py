"""The WSGI app of the deployment tier (gunicorn): the test settings, and the master's
lock use before the fork when it is preloaded (:mod:`tests.support.deploy.warmup`)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
application = get_wsgi_application()

from tests.support.deploy.warmup import use_lock_before_fork  # noqa: E402 (needs the app set up)

use_lock_before_fork()
