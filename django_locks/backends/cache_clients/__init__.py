"""The storage clients behind :class:`~django_locks.backends.cache.CacheLock`.

``base`` declares the interface; ``redis`` is Redis used natively (Lua scripts), ``add``
any other Django cache through ``cache.add``.
"""
