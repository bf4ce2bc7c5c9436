"""README.rst is the user manual and the PyPI page: it must render without a single docutils warning."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.rst"


def test_readme_renders_cleanly() -> None:
    if os.environ.get("CI") != "true":
        pytest.importorskip("docutils")
    import docutils.core
    import docutils.writers.null

    warnings = io.StringIO()
    docutils.core.publish_string(README.read_text("utf-8"), writer=docutils.writers.null.Writer(),
                                 settings_overrides={"warning_stream": warnings, "report_level": 2,
                                                     "halt_level": 5})
    assert warnings.getvalue() == ""


def test_readme_opens_with_the_two_setup_commands() -> None:
    head = README.read_text("utf-8").split("What it does", 1)[0]
    assert "make demo" in head and "make test" in head
