"""Benchmarks of django_locks against the physical floor and the libraries users would
pick instead. Run ``python -m benchmarks`` (see README, "Benchmarks")."""
