"""Suite-wide fixtures live in the conftest.py of each test folder; this file only makes
the repository root importable when the package is not installed."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
