"""The EHLO name (RFC 5321 §4.1.1.1) and `helo_name` validation; the relay certificate's host name match."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from certbot_smtp_dist._internal import greeting
from certbot_smtp_dist._internal.greeting import address_literal, helo_name_problem, is_fqdn
from certbot_smtp_dist._internal.relaycert import host_matches


@pytest.mark.parametrize("name", ["mail.example.com", "a.b", "xn--bcher-kva.example", "host-1.example.org."])
def test_fqdns(name: str) -> None:
    assert is_fqdn(name)
    assert helo_name_problem(name.rstrip(".")) is None


@pytest.mark.parametrize("name", ["vm", "localhost", "localhost.localdomain", "box.localdomain", "-a.example",
                                  "a_b.example", "a..example", "", "a.example com", "x" * 64 + ".example"])
def test_not_fqdns(name: str) -> None:
    assert not is_fqdn(name)
    assert helo_name_problem(name) is not None


@pytest.mark.parametrize(("ip", "literal"), [("127.0.0.1", "[127.0.0.1]"), ("::1", "[IPv6:::1]"),
                                             ("::ffff:192.0.2.7", "[192.0.2.7]"), ("fe80::1%eth0", "[IPv6:fe80::1]"),
                                             ("2001:DB8::1", "[IPv6:2001:db8::1]")])
def test_address_literals(ip: str, literal: str) -> None:
    assert address_literal(ip) == literal
    assert helo_name_problem(literal) is None


@pytest.mark.parametrize("value", ["[::1]", "[IPv6:127.0.0.1]", "[300.0.0.1]", "[mail.example.com]", "[]"])
def test_bad_address_literals(value: str) -> None:
    assert helo_name_problem(value) is not None


@pytest.mark.parametrize("value", ["[IPv6:fe80::1%eth0]", "[IPv6:fe80::1%x y]",
                                   "[IPv6:fe80::1%x\r\nRCPT TO:<evil@attacker.example>]"])
def test_an_address_literal_with_a_zone_is_refused(value: str) -> None:
    """Attack: Python's IPv6Address takes a zone ("%eth0", RFC 4007 §11) of any characters, spaces and CR LF
    included, so helo_name took them: an EHLO argument RFC 5321 §4.1.3 has no grammar for (IPv6-addr holds no
    zone), a line break that only smtpwire's last check kept from becoming a second command, every delivery of
    the target failing. Refused at config time, shown escaped."""
    from pathlib import Path

    from certbot_smtp_dist._internal.config import parse_settings
    from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
    from certbot_smtp_dist.errors import ConfigError

    why = helo_name_problem(value)
    assert why is not None and why.isprintable()
    table = {"host": "smtp.example.com", "from_address": "c@example.com", "to": ["p@example.com"], "helo_name": value}
    with pytest.raises(ConfigError) as err:
        parse_settings({"targets": {"t": table}}, Path("/etc/x/config.toml"), {}, {f.name: f for f in BUILTIN_FORMATS})
    assert [(p.target, p.key) for p in err.value.problems] == [("t", "helo_name")]


@pytest.mark.parametrize(("host", "sans", "expected"), [
    ("smtp.example.com", ["smtp.example.com"], True),
    ("SMTP.Example.com.", ["smtp.example.com"], True),
    ("smtp.example.com", ["*.example.com"], True),
    ("a.b.example.com", ["*.example.com"], False),  # RFC 6125 §6.4.3: the wildcard covers one label
    ("example.com", ["*.example.com"], False),
    ("smtp.example.com", ["*.com"], False),
    ("127.0.0.1", ["127.0.0.1"], True),
    ("127.0.0.1", ["localhost"], False),
    ("::1", ["0:0:0:0:0:0:0:1"], True),
    ("smtp.example.com", ["127.0.0.1"], False),
    ("smtp.example.com", [], False),
    # The handshake sends and matches a non-ASCII host in its IDNA form (ssl.SSLContext encodes server_hostname):
    # check must too, or it names a host problem the delivery does not have.
    ("bücher.example", ["xn--bcher-kva.example"], True),
    ("BÜCHER.mail.example", ["*.mail.example"], True),
    ("bücher.example", ["bucher.example"], False),
])
def test_host_matches(host: str, sans: list[str], expected: bool) -> None:
    assert host_matches(host, sans) is expected


# -- the FQDN lookup against a hostile or slow resolver ------------------------------------------------------------


@pytest.fixture()
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A bare host name, and a resolver whose canonical-name answer, delay and call count the test controls."""
    state: dict[str, Any] = {"canon": "host.example.com", "delay": 0.0, "calls": 0}

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        state["calls"] += 1
        time.sleep(state["delay"])
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, state["canon"], ("192.0.2.1", 0))]

    monkeypatch.setattr(greeting.socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(greeting.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(greeting, "_found", [])
    monkeypatch.setattr(greeting, "_pending", [])
    yield state


def test_the_fqdn_is_looked_up_once_however_many_sessions_greet_at_once(resolver: dict[str, Any]) -> None:
    resolver["delay"] = 0.3

    async def many() -> list[str]:
        return list(await asyncio.gather(*(greeting.local_name("192.0.2.7") for _ in range(20))))

    assert asyncio.run(many()) == ["host.example.com"] * 20
    assert resolver["calls"] == 1


@pytest.mark.parametrize("canon", ["evil\r\nMAIL FROM:<x@example.com>", "two words.example.com", "a..example.com",
                                   "x" * 300 + ".example.com", "localhost.localdomain"])
def test_a_hostile_canonical_name_is_never_the_ehlo_name(resolver: dict[str, Any], canon: str) -> None:
    resolver["canon"] = canon
    assert asyncio.run(greeting.local_name("192.0.2.7")) == "[192.0.2.7]"


def test_a_resolver_that_never_answers_costs_the_lookup_wait_once(resolver: dict[str, Any]) -> None:
    resolver["delay"] = 30.0  # the daemon thread is abandoned, never joined
    started = time.monotonic()
    assert asyncio.run(greeting.local_name("192.0.2.7")) == "[192.0.2.7]"
    assert asyncio.run(greeting.local_name("192.0.2.8")) == "[192.0.2.8]"  # remembered: no second wait
    assert time.monotonic() - started < greeting.LOOKUP_WAIT + 10  # bounded, with generous slack
    assert resolver["calls"] == 1


def test_a_lookup_abandoned_by_one_session_still_answers_the_others(
        resolver: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    """The first session gives up at LOOKUP_WAIT; one that began waiting later is not cancelled with it, and the
    answer arriving after both (and after the loop closed) raises nothing in the lookup's thread."""
    resolver["delay"] = greeting.LOOKUP_WAIT + 0.5

    async def staggered() -> list[str]:
        async def later() -> str:
            await asyncio.sleep(greeting.LOOKUP_WAIT / 2)
            return await greeting.local_name("192.0.2.8")
        return list(await asyncio.gather(greeting.local_name("192.0.2.7"), later()))

    assert asyncio.run(staggered()) == ["[192.0.2.7]", "[192.0.2.8]"]
    time.sleep(1.5)  # the thread answers now, into a closed loop
    assert resolver["calls"] == 1
    assert "Traceback" not in capfd.readouterr().err
