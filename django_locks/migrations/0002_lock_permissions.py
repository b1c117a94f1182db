"""Only the permissions the admin uses: view_lock and force_release.

0001 also created add_lock, change_lock and delete_lock (Django's default permissions),
which never allowed anything: they are removed, with their grants, where
django.contrib.auth keeps its tables in this database.
"""

from django.db import migrations, router

UNUSED = ["add_lock", "change_lock", "delete_lock"]


def remove_unused_permissions(apps, schema_editor):
    try:
        Permission = apps.get_model("auth", "Permission")
        ContentType = apps.get_model("contenttypes", "ContentType")
    except LookupError:  # auth or contenttypes not installed, or not migrated yet
        return
    using = schema_editor.connection.alias
    if not (router.allow_migrate_model(using, Permission) and router.allow_migrate_model(using, ContentType)):
        return
    Permission.objects.using(using).filter(
        content_type__app_label="django_locks", content_type__model="lock", codename__in=UNUSED
    ).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('django_locks', '0001_initial'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='lock',
            options={
                'default_permissions': ('view',),
                'permissions': [('force_release', 'Can force-release locks held by others')],
                'verbose_name': 'lock',
                'verbose_name_plural': 'locks',
            },
        ),
        migrations.RunPython(remove_unused_permissions, migrations.RunPython.noop, elidable=True),
    ]
