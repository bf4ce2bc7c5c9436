"""The one skip-or-fail rule for missing test prerequisites: a skip on a workstation, a failure under CI.

.ci/run installs every tool and library the suite needs and exports ``CI=true``; there a missing prerequisite is a
broken CI image, and a green run that skipped the tests would hide it. Every test that needs something outside the
venv asks through this module, so "under CI" means the same thing everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping
from typing import NoReturn

#: The values of ``$CI`` that mean "running under CI" (compared case-insensitively, surrounding blanks ignored).
CI_VALUES = frozenset({"true", "1", "yes"})


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``$CI`` is ``true``, ``1`` or ``yes``, in any case: a missing prerequisite then fails the test."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() in CI_VALUES


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, saying why."""
    import pytest  # local import: acmeharness uses this module and stays usable without pytest

    if in_ci():
        pytest.fail(f"{reason} -- running under CI, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


def require(condition: object, reason: str) -> None:
    """Continue if `condition` is true; otherwise skip (outside CI) or fail (under CI) with `reason`."""
    if not condition:
        unavailable(reason)


def require_tool(name: str, hint: str, *, path: str | None = None) -> str:
    """The executable's path (searched on `path`, default ``$PATH``), or skip/fail naming how to install it."""
    found = shutil.which(name, path=path)
    if found is None:
        unavailable(f"{name} not found ({hint})")
    return found


def require_module(name: str, hint: str) -> None:
    """Continue if the module is importable; otherwise skip/fail naming how to install it."""
    if importlib.util.find_spec(name) is None:
        unavailable(f"Python module {name} not installed ({hint})")
