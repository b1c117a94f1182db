"""Settings of ``python -m benchmarks --listing``: the benchmark's databases and key
prefixes (benchmarks/settings.py), the admin, and only the aliases the listing measures."""

from benchmarks.settings import *  # noqa: F403
from benchmarks.settings import CACHE_LOCK, DB_LOCK, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django.contrib.sessions", "django.contrib.messages",
                  "django.contrib.admin"]
ROOT_URLCONF = "benchmarks.listing_urls"
ALLOWED_HOSTS = ["testserver"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
STATIC_URL = "static/"
# The aliases the listing row measures (the admin lists every alias on its first page).
LOCKS = {
    "postgres": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "postgres"}},
    "mysql": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "mysql"}},
    "sqlite": {"BACKEND": DB_LOCK, "OPTIONS": {"using": "default"}},
    "redis": {"BACKEND": CACHE_LOCK, "OPTIONS": {"cache": "django_redis"}},
}
