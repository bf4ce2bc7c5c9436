"""Shared fixtures: test PKI, aiosmtpd relays and fault-injecting SMTP servers."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from support.faultsmtp import FaultServer, Script
from support.pki import RelayPKI, ServerCertName, relay_certs
from support.relay import Relay, RelayMode

# Property tests: the same commit gives the same result on every clean clone under CI=true (derandomized, no
# example database), while local runs keep exploring at random. Either way a failure prints the reproduction
# blob (@reproduce_failure) so a local find can be pinned as an explicit @example. No deadline in either: Hypothesis'
# per-example deadline (200 ms by default) is a timed assertion, and on a shared, loaded machine an example's first
# call can take longer (a clean clone of c90304d failed so on Debian 12's stack: 266 ms, then 4 ms on replay, which
# Hypothesis reports as Flaky). A test that must be fast says so in the benchmark suite, never here.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
hypothesis_settings.register_profile("dev", print_blob=True, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev"))

RelayFactory = Callable[..., Relay]
FaultServerFactory = Callable[..., FaultServer]


@pytest.fixture(scope="session")
def relay_pki(tmp_path_factory: pytest.TempPathFactory) -> RelayPKI:
    """CA + valid/expired/wrong_host server certificates (one set per test session)."""
    return relay_certs(tmp_path_factory.mktemp("relay-pki"))


@pytest.fixture
def relay_factory(relay_pki: RelayPKI) -> Iterator[RelayFactory]:
    """``relay_factory(mode="starttls", auth=(user, pw), cert="valid", reject={...})``.

    Starts a :class:`support.relay.Relay`; every relay started is stopped at teardown.
    """
    started: list[Relay] = []

    def factory(
        mode: RelayMode = "starttls",
        auth: tuple[str, str] | None = None,
        cert: ServerCertName = "valid",
        reject: Mapping[str, str] | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
    ) -> Relay:
        relay = Relay(
            relay_pki, mode=mode, auth=auth, cert=cert, reject=reject, tls_context=tls_context
        )
        relay.start()
        started.append(relay)
        return relay

    yield factory
    for relay in reversed(started):
        relay.stop()


@pytest.fixture
def fault_server() -> Iterator[FaultServerFactory]:
    """``fault_server(Script(...))`` starts a :class:`support.faultsmtp.FaultServer`.

    Every server started is stopped (connections aborted) at teardown.
    """
    started: list[FaultServer] = []

    def factory(script: Script | None = None, **script_fields: Any) -> FaultServer:
        if script_fields:
            if script is not None:
                raise TypeError("pass either a Script or Script keyword arguments")
            script = Script(**script_fields)
        server = FaultServer(script).start()
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def sticky(tmp_path: Path) -> Path:
    """A /tmp-like directory: everyone may create in it, the sticky bit keeps them from renaming what is ours."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


@pytest.fixture
def tmp_lineage_dir(tmp_path: Path) -> Path:
    """Where a test should put a certbot-like lineage: <tmp>/live/test.example.com."""
    return tmp_path / "live" / "test.example.com"


@pytest.fixture
def unused_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
