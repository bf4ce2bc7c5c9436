"""Fixtures for end-to-end tests against a loopback pebble CA and real ACME clients.

Outside CI a missing tool skips the test; with ``CI=true`` it fails it (see
``acmeharness.require_tool``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from acmeharness import Certbot, Dehydrated, Lego, Pebble, Uacme, require_tool
from support import ci


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A fresh pebble + pebble-challtestsrv on loopback, shared by the tests of one module."""
    pebble_bin = require_tool("pebble")
    chall_bin = require_tool("pebble-challtestsrv")
    with Pebble(
        tmp_path_factory.mktemp("pebble"), pebble_bin=pebble_bin, challtestsrv_bin=chall_bin
    ) as server:
        yield server


@pytest.fixture
def certbot_bin() -> str:
    return require_tool("certbot")


@pytest.fixture
def lego_bin() -> str:
    return require_tool("lego")


@pytest.fixture
def dehydrated_bin() -> str:
    return require_tool("dehydrated")


@pytest.fixture
def certbot(pebble: Pebble, certbot_bin: str, tmp_path: Path) -> Certbot:
    """A certbot runner with private config/work/logs dirs under tmp_path/certbot."""
    return Certbot(pebble, tmp_path / "certbot", certbot_bin=certbot_bin)


@pytest.fixture
def lego(pebble: Pebble, lego_bin: str, tmp_path: Path) -> Lego:
    """A lego runner with --path tmp_path/lego."""
    return Lego(pebble, tmp_path / "lego", lego_bin=lego_bin)


@pytest.fixture
def dehydrated(pebble: Pebble, dehydrated_bin: str, tmp_path: Path) -> Dehydrated:
    """A dehydrated runner with BASEDIR tmp_path/dehydrated (no hook; pass hook= to cron())."""
    return Dehydrated(pebble, tmp_path / "dehydrated", dehydrated_bin=dehydrated_bin)


@pytest.fixture
def uacme(pebble: Pebble, tmp_path: Path) -> Uacme:
    """Debian's uacme with its confdir under tmp_path/uacme, trusting pebble's API alone (see ``Uacme``)."""
    uacme_bin = require_tool("uacme")
    require_tool("unshare")
    ci.require(Path(Uacme.HOOK).is_file(), f"{Uacme.HOOK} not found (apt-get install uacme)")
    client = Uacme(pebble, tmp_path / "uacme", uacme_bin=uacme_bin)
    why = client.available()
    ci.require(why is None, f"uacme cannot be pointed at pebble: {why}")
    return client
