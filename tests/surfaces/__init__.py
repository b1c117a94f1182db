"""What projects use and see: the decorators, ``manage.py locks``, the admin, the checks,
fenced writes, the recipes and the example project."""
