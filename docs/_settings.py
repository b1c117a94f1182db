"""The Django settings the documentation build imports django_locks under (docs/conf.py).

Autodoc imports the package's modules, which need configured settings and a populated
app registry. No server is touched: the one lock alias is a MemoryLock.
"""

SECRET_KEY = "documentation-build-only"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_locks",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
LOCKS = {"default": {"BACKEND": "django_locks.backends.memory.MemoryLock"}}
