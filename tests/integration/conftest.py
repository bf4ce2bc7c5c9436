from __future__ import annotations

from pathlib import Path

import pytest
from support.deployenv import DeployEnv
from support.pki import LineagePaths, write_lineage


@pytest.fixture
def denv(tmp_path: Path) -> DeployEnv:
    return DeployEnv(tmp_path)


@pytest.fixture
def lineage(tmp_path: Path) -> LineagePaths:
    return write_lineage(tmp_path / "live" / "test.example.com")
