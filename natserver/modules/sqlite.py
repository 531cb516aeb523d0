"""sqlite: ``loadmodule "db_sqlite.so"`` (or ``"sqlite.so"``) compatibility.

As with :mod:`natserver.modules.mysql`, the ``db_url`` scheme picks the backend
(``sqlite:///path``, or ``sqlite://``/empty for the embedded default); this module only
lets a Kamailio-style cfg load unchanged. No functions, no parameters.
"""

from __future__ import annotations

from natserver.modules import Module


class Sqlite(Module):
    NAME = "sqlite"


FUNCTIONS = ()
PARAMS = ()
MODULE = Sqlite
