"""The EHLO name (RFC 5321 §4.1.1.1) and `helo_name` validation; the relay certificate's host name match."""

from __future__ import annotations

import pytest

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
])
def test_host_matches(host: str, sans: list[str], expected: bool) -> None:
    assert host_matches(host, sans) is expected
