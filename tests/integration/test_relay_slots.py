"""Concurrency is bounded per relay: a run never holds more than `connections_per_relay` sessions to one relay,
and a target that cannot get a slot within its own timeout fails retryably, naming the bound (issue 16)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from acmeharness import free_ports
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from support.deployenv import DeployEnv
from support.pki import write_lineage


class Gauge:
    """Open connections now, and the most seen at once (written by the server's loop thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = self.peak = self.delivered = 0

    def change(self, by: int) -> None:
        with self._lock:
            self.open += by
            self.peak = max(self.peak, self.open)


class CountingSMTP(SMTP):
    gauge: Gauge

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.gauge.change(+1)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gauge.change(-1)
        super().connection_lost(exc)


class SlowHandler:
    """Holds each session `ehlo_delay` seconds at EHLO and `data_delay` at DATA, so sessions overlap."""

    def __init__(self, gauge: Gauge, ehlo_delay: float = 0.0, data_delay: float = 0.5) -> None:
        self.gauge, self.ehlo_delay, self.data_delay = gauge, ehlo_delay, data_delay

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        await asyncio.sleep(self.ehlo_delay)
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.data_delay)
        with self.gauge._lock:
            self.gauge.delivered += 1
        return "250 2.0.0 Ok: queued"


class CountingController(Controller):
    def __init__(self, handler: SlowHandler, gauge: Gauge) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=free_ports(1)[0])
        self.gauge = gauge

    def factory(self) -> SMTP:
        server = CountingSMTP(self.handler)
        server.gauge = self.gauge
        return server


@pytest.fixture
def slow_relay() -> Iterator[Any]:
    started: list[Controller] = []

    def start(**delays: float) -> tuple[int, Gauge]:
        gauge = Gauge()
        controller = CountingController(SlowHandler(gauge, **delays), gauge)
        controller.start()
        started.append(controller)
        return int(controller.port), gauge

    yield start
    for controller in started:
        controller.stop()


def targets(port: int, count: int, timeout: float = 30) -> dict[str, dict[str, Any]]:
    return {f"t{i:02d}": {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": timeout,
                          "from_address": "certbot@example.com", "to": [f"ops{i}@example.com"]}
            for i in range(count)}


def lineage(tmp_path: Path) -> str:
    return str(write_lineage(tmp_path / "live" / "example.com", names=("example.com",)).live_dir)


@pytest.mark.parametrize(("bound", "count"), [(3, 12), (None, 25)])
def test_sessions_to_one_relay_never_exceed_the_bound(denv: DeployEnv, slow_relay: Any, tmp_path: Path,
                                                      bound: int | None, count: int) -> None:
    port, gauge = slow_relay()
    denv.write_config(targets(port, count), defaults={"connections_per_relay": bound} if bound else None)

    run = denv.run("deploy", "--json", "--lineage", lineage(tmp_path))

    assert run.returncode == 0, run.stderr
    assert gauge.delivered == count
    limit = bound or 20  # the documented default
    assert gauge.peak == limit, f"at most {limit} at once, and all of them used (peak {gauge.peak})"


def test_a_target_without_a_slot_in_its_timeout_fails_retryably_naming_the_bound(
    denv: DeployEnv, slow_relay: Any, tmp_path: Path
) -> None:
    port, _ = slow_relay(ehlo_delay=5.0)
    denv.write_config(targets(port, 2, timeout=2), defaults={"connections_per_relay": 1})

    run = denv.run("deploy", "--json", "--lineage", lineage(tmp_path))

    assert run.returncode == 75  # EX_TEMPFAIL: both are spooled for `retry`
    details = sorted(t["detail"] for t in run.json["targets"])
    assert all(t["retryable"] for t in run.json["targets"])
    assert any("no free connection to 127.0.0.1" in d and "connections_per_relay = 1" in d for d in details), details
    assert max(t["duration_s"] for t in run.json["targets"]) < 2 + 1.5  # within the timeout, never after it
