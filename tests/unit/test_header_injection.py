"""No header from a value we did not write: config text refused by key, certificate text encoded by us.

Each repro from issue 13 is checked by parsing the raw bytes back with both of Python's email policies
(compat32 and default) and asserting the exact header set and values, so it holds on interpreters with and
without the CVE-2024-6923 fix (`make test-distro` runs this file on Debian's /usr/bin/python3 as well).
"""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certbot_smtp_dist._internal.config import MAX_FROM_NAME, MAX_SUBJECT_PREFIX, parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist._internal.render import render, subject, subject_field
from certbot_smtp_dist.errors import ConfigError
from certbot_smtp_dist.model import CertificateFacts, Message, Payload, Target

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
FACTS = CertificateFacts("n", "host.example", ("host.example",), "CN=x", NOW, NOW, "1", "00")
WRITTEN = Counter({"from", "to", "subject", "date", "message-id", "auto-submitted", "mime-version", "content-type",
                   "content-transfer-encoding"})


def target(**table: object) -> Target:
    doc = {"targets": {"t": {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "robot@example.com",
                             "to": ["pki@example.com"], **table}}}
    return parse_settings(doc, Path("c.toml"), {}, {"pem": BUILTIN_FORMATS[0]}).targets[0]


def refused_keys(**table: object) -> set[tuple[str | None, str | None]]:
    with pytest.raises(ConfigError) as err:
        target(**table)
    return {(p.target, p.key) for p in err.value.problems}


def rendered(t: Target, facts: CertificateFacts = FACTS) -> Message:
    return render(t, facts, Payload("pem", ()), "<id@example.com>", NOW)


def header_fields(data: bytes, policy: email.policy.Policy) -> Counter[str]:
    parsed = email.message_from_bytes(data, policy=policy)
    return Counter(k.lower() for k in parsed.keys())


def assert_written_fields_only(msg: Message) -> None:
    for policy in (email.policy.compat32, email.policy.default):
        assert header_fields(msg.data, policy) == WRITTEN, policy
    head = msg.data.partition(b"\r\n\r\n")[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))  # RFC 5322 §2.1.1


def decoded_subject(msg: Message) -> str:
    return str(email.message_from_bytes(msg.data, policy=email.policy.default)["Subject"])


# ---------------------------------------------------------------------------------------------- the repros


def test_encoded_bcc_in_subject_prefix_is_a_config_error_keyed_by_it() -> None:
    assert refused_keys(subject_prefix="=?utf-8?q?X=0D=0ABcc:_evil@x.example?=") == {("t", "subject_prefix")}


def test_encoded_address_in_from_name_is_a_config_error_keyed_by_it() -> None:
    """On every Python this spoofed `From: Admin <admin@bank.example> <certbot@example.com>` at 0.1.0."""
    assert refused_keys(from_name="=?utf-8?q?Admin_<admin@bank.example>?=") == {("t", "from_name")}


@pytest.mark.parametrize("cn", [
    "=?utf-8?q?host=0D=0AX-Injected:_yes?=",
    "=?utf-8?b?" + base64.b64encode(b"host\r\nBcc: thief@example.net").decode() + "?=",
    "a =?us-ascii?Q?=0A?= b",
    "=?utf-8?q?",  # half a word: with the prefix's or the date's text around it, still never decoded
])
def test_certificate_common_name_never_becomes_header_structure(cn: str) -> None:
    facts = replace(FACTS, common_name=cn)
    msg = rendered(target(subject_prefix="PROD"), facts)
    assert_written_fields_only(msg)
    assert b"X-Injected" not in msg.data.partition(b"\r\n\r\n")[0]
    # Decoding gives back the very text we wrote, the lookalike word included, and nothing more.
    assert decoded_subject(msg) == subject(target(subject_prefix="PROD"), facts)
    assert cn in decoded_subject(msg)


@pytest.mark.parametrize(("key", "limit"), [("subject_prefix", MAX_SUBJECT_PREFIX), ("from_name", MAX_FROM_NAME)])
def test_over_long_header_text_is_refused_by_key(key: str, limit: int) -> None:
    assert refused_keys(**{key: "x" * (limit + 1)}) == {("t", key)}
    assert refused_keys(**{key: "x" * 1_000_000}) == {("t", key)}  # 0.1.0 took a 1 MB subject_prefix
    assert getattr(target(**{key: "x" * limit}), key) == "x" * limit


# ---------------------------------------------------------------------------------------------- properties

CHARSETS = st.sampled_from(["utf-8", "UTF-8", "us-ascii", "iso-8859-1", "", "utf-8*en"])
PAYLOADS = st.sampled_from([b"\r\nBcc: thief@example.net", b"\nX-Injected: 1", b"\r\n\r\nbody", b"a, b@c.d", b"\x00"])


def q_word(charset: str, raw: bytes) -> str:
    return f"=?{charset}?q?{quopri.encodestring(raw, header=True).decode('ascii')}?="


def b_word(charset: str, raw: bytes) -> str:
    return f"=?{charset}?B?{base64.b64encode(raw).decode('ascii')}?="


lookalike_words = st.builds(lambda f, c, p: f(c, p), st.sampled_from([q_word, b_word]), CHARSETS, PAYLOADS)
hostile_names = st.lists(st.one_of(st.text(max_size=12), lookalike_words, st.sampled_from(["=?", "?=", " ", "\r\n"])),
                         max_size=5).map("".join)


@settings(max_examples=300, deadline=None)
@given(cn=hostile_names, sans=st.lists(hostile_names, max_size=2), prefix=st.sampled_from(["", "PROD", "a b  c"]))
@example(cn="=?utf-8?q?host=0D=0AX-Injected:_yes?=", sans=[], prefix="")
def test_no_certificate_text_becomes_header_structure(cn: str, sans: list[str], prefix: str) -> None:
    """Whatever a (private) CA puts in the CN and SANs: the exact header set under both policies, and the
    Subject decodes to exactly the text render meant (with non-printables shown as "?")."""
    facts = replace(FACTS, common_name=cn, sans=tuple(sans))
    t = target(subject_prefix=prefix) if prefix else target()
    msg = rendered(t, facts)
    assert_written_fields_only(msg)
    assert decoded_subject(msg) == subject(t, facts)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_subject_field_decodes_to_its_text(text: str) -> None:
    """The field builder alone, over any text: one Subject field whose decoded value is the text itself."""
    from email.message import EmailMessage

    printable_text = "".join(c if c.isprintable() else "?" for c in text)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg.set_raw("Subject", subject_field(printable_text))
    msg.set_content("x")
    data = msg.as_bytes()
    for policy in (email.policy.compat32, email.policy.default):
        assert header_fields(data, policy)["subject"] == 1
    assert str(email.message_from_bytes(data, policy=email.policy.default)["Subject"]) == printable_text
