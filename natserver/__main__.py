"""``python -m natserver`` is the ``natserver`` command."""

import sys

from natserver.cli import main

sys.exit(main())
