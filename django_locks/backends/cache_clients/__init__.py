"""The storage clients behind :class:`~django_locks.backends.cache.CacheLock`.

``base`` declares the interface; ``add`` is any Django cache through ``cache.add``;
``redis`` is Redis used natively: its Lua scripts are ``lua/*.lua``, loaded and run by
``redis_scripts``, and how it reaches the server is ``redis_connections``
(docs/internals/redis.md).
"""
