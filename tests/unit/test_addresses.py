"""Address and header syntax, including property tests: no input lets CR or LF through."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certbot_smtp_dist._internal.addresses import (
    address_problem,
    header_text_problem,
    is_loopback_host,
)
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist.errors import ConfigError


@pytest.mark.parametrize("addr", [
    "pki@example.com", "a.b+tag@sub.example.co.uk", "root@localhost", "ops@corp.local", '"quoted local"@example.com',
    "x@[127.0.0.1]", "x@[IPv6:::1]", "o'brien@example.com",
])
def test_valid(addr: str) -> None:
    assert address_problem(addr) is None


@pytest.mark.parametrize("addr", [
    "", "plain", "@example.com", "a@", "a@@b", "A <a@example.com>", "a@example.com, b@example.com", "a b@example.com",
    "a@-bad.com", "a@bad-.com", ".a@example.com", "a..b@example.com", "a@exa_mple.com", "a@[300.1.1.1]",
    "x" * 65 + "@example.com", "a@example.com\r\nRCPT TO:<evil@example.com>", "üser@example.com", "a@example.com\x00",
])
def test_invalid(addr: str) -> None:
    assert address_problem(addr) is not None


def test_loopback_without_dns() -> None:
    assert all(map(is_loopback_host, ["127.0.0.1", "127.255.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback_host, ["10.1.1.1", "localhost.localdomain", "example.com", "::ffff:1.2.3.4"]))


@given(st.text())
def test_no_accepted_address_contains_line_breaks(value: str) -> None:
    if address_problem(value) is None:
        assert "\r" not in value and "\n" not in value and value.isascii()


@given(st.text())
def test_no_accepted_header_text_contains_line_breaks(value: str) -> None:
    if header_text_problem(value) is None:
        assert not any(c in value for c in "\r\n\x00")


@settings(max_examples=150, deadline=None)
@given(addr=st.text(min_size=1, max_size=40), prefix=st.text(max_size=30), name=st.text(max_size=30))
def test_rendered_message_never_carries_injected_lines(addr: str, prefix: str, name: str) -> None:
    """Whatever the config says, an accepted config renders no header or envelope with a bare CR/LF."""
    from certbot_smtp_dist._internal.render import render
    from certbot_smtp_dist.model import CertificateFacts, Payload

    table = {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "robot@example.com", "to": [addr],
             "subject_prefix": prefix, "from_name": name}
    try:
        settings_ = parse_settings({"targets": {"t": table}}, Path("c.toml"), {}, {"pem": None})
    except ConfigError:
        return
    target = settings_.targets[0]
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    facts = CertificateFacts("n", "n", ("n",), "CN=x", now, now, "1", "00")
    msg = render(target, facts, Payload("pem", ()), "<id@example.com>", now)
    for rcpt in msg.envelope_to:
        assert "\r" not in rcpt and "\n" not in rcpt
    head = msg.data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line
        assert line[:1] in (b" ", b"\t") or b":" in line  # every line is a field or a fold, never a new injected one
    injected = [ln for ln in head.split(b"\r\n") if ln.lower().startswith((b"bcc:", b"x-injected:"))]
    assert injected == []
