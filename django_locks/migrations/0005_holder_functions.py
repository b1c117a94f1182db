"""What a vendor needs beside the tables (DatabaseOperations.install): on PostgreSQL, the
functions that admit and release shared and semaphore holders, whose plans the server
keeps. Nothing on the other vendors."""

from typing import Any

from django.db import migrations


def _operations(apps: Any, schema_editor: Any) -> Any:
    from django_locks.backends.database.vendors import VENDORS

    vendor = VENDORS.get(schema_editor.connection.vendor)
    if vendor is None:
        return None
    quote = schema_editor.connection.ops.quote_name
    return vendor[1](quote(apps.get_model("django_locks", "Lock")._meta.db_table), quote("key"),
                     quote(apps.get_model("django_locks", "Holder")._meta.db_table))


def install(apps: Any, schema_editor: Any) -> None:
    operations = _operations(apps, schema_editor)
    for sql in operations.install() if operations is not None else ():
        schema_editor.execute(sql, params=None)


def uninstall(apps: Any, schema_editor: Any) -> None:
    operations = _operations(apps, schema_editor)
    for sql in operations.uninstall() if operations is not None else ():
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ('django_locks', '0004_holder'),
    ]

    operations = [
        migrations.RunPython(install, uninstall, elidable=False),
    ]
