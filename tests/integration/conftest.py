from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ci, exim
from support.debunpack import Unpacked
from support.deployenv import DeployEnv
from support.exim import EximRelay
from support.pki import LineagePaths, RelayPKI, write_lineage


@pytest.fixture
def denv(tmp_path: Path) -> DeployEnv:
    return DeployEnv(tmp_path)


@pytest.fixture
def lineage(tmp_path: Path) -> LineagePaths:
    return write_lineage(tmp_path / "live" / "test.example.com")


@pytest.fixture(scope="session")
def exim_package() -> Unpacked:
    """Debian's exim4-daemon-light, unpacked into the test cache (skip, or fail under CI, when it cannot be)."""
    try:
        return exim.install()
    except exim.Unavailable as exc:
        ci.unavailable(f"exim4 cannot run here: {exc}")


@pytest.fixture(scope="session")
def exim_daemon(exim_package: Unpacked, relay_pki: RelayPKI) -> Iterator[EximRelay]:
    """One private exim for the session: STARTTLS with the test CA's 127.0.0.1 certificate, AUTH required."""
    with exim.running(relay_pki.valid, relay_pki.ca_file, package=exim_package) as relay:
        yield relay


@pytest.fixture
def exim_relay(exim_daemon: EximRelay) -> EximRelay:
    """The session's exim with an empty Maildir and log."""
    exim_daemon.clear()
    return exim_daemon
