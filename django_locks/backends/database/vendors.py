"""The vendors DatabaseLock runs on: each one's features and operations, by Django vendor."""

from __future__ import annotations

from django_locks.backends.database.features import DatabaseFeatures
from django_locks.backends.database.mysql import MySQLFeatures, MySQLOperations
from django_locks.backends.database.operations import DatabaseOperations
from django_locks.backends.database.postgresql import PostgreSQLFeatures, PostgreSQLOperations
from django_locks.backends.database.sqlite import SQLiteFeatures, SQLiteOperations

VENDORS: dict[str, tuple[DatabaseFeatures, type[DatabaseOperations]]] = {
    "postgresql": (PostgreSQLFeatures(), PostgreSQLOperations),
    "mysql": (MySQLFeatures(), MySQLOperations),
    "sqlite": (SQLiteFeatures(), SQLiteOperations),
}

#: Database backends of a supported vendor that DatabaseLock cannot run on (with why).
UNSUPPORTED_ENGINES = {
    "mysql.connector.django": (
        "mysql-connector-python's own Django backend cannot run several statements in one "
        "round trip; use ENGINE 'django.db.backends.mysql' with mysqlclient, or with PyMySQL "
        "(pymysql.install_as_MySQLdb())"
    ),
}


def features_of(vendor: str) -> DatabaseFeatures:
    return VENDORS[vendor][0]
