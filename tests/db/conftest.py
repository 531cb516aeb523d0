"""Storage tests run on SQLite and on a throwaway MariaDB (``db_url`` is parametrised
over both); the fixtures live in tests/helpers/mariadb.py so other folders can import
them the same way."""

from tests.helpers.mariadb import db_url, mariadb_server, mariadb_url  # noqa: F401
