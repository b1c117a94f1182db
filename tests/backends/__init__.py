"""The backends (django_locks/backends/): what they share (base, _acquire, _bookkeeping)
here, what is one backend's own below."""
