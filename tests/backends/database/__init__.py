"""DatabaseLock (django_locks/backends/database/)."""
