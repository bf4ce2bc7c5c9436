"""Puts tests/ on the import path, so the suite reuses the test suite's loopback peers (tests/support)."""

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
