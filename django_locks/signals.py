"""Signals sent by every lock backend.

sender: the backend class. Keyword arguments: ``alias``, ``key``, ``token``,
``fencing_token``, ``correlation_id``.
"""

from django.dispatch import Signal

lock_acquired = Signal()
lock_released = Signal()
lock_lost = Signal()
