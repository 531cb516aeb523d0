"""mysql: ``loadmodule "mysql.so"`` (or ``"db_mysql.so"``) compatibility.

SER loaded a database driver module before the modules that use a ``db_url``. In
natserver the scheme of each ``db_url`` picks the backend (``mysql://`` pymysql,
``sqlite://`` the stdlib), whatever is loaded; this module exists so a SER cfg loads
unchanged. It has no functions and no parameters.
"""

from __future__ import annotations

from natserver.modules import Module


class Mysql(Module):
    NAME = "mysql"


FUNCTIONS = ()
PARAMS = ()
MODULE = Mysql
