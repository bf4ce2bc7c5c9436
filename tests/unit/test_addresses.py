"""Address and header syntax, including property tests: no input lets CR or LF through."""

from __future__ import annotations

import email
import email.policy
import string
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from certbot_smtp_dist._internal.addresses import (
    ENCODED_WORD_RE,
    address_problem,
    header_text_problem,
    is_loopback_host,
)
from certbot_smtp_dist._internal.config import MAX_FROM_NAME, MAX_SUBJECT_PREFIX, parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist._internal.render import render
from certbot_smtp_dist.errors import ConfigError
from certbot_smtp_dist.model import CertificateFacts, Message, Payload


@pytest.mark.parametrize("addr", [
    "pki@example.com", "a.b+tag@sub.example.co.uk", "root@localhost", "ops@corp.local", '"quoted local"@example.com',
    "x@[127.0.0.1]", "x@[IPv6:::1]", "o'brien@example.com",
])
def test_valid(addr: str) -> None:
    assert address_problem(addr) is None


@pytest.mark.parametrize("addr", ["?=?@a", "a=?b@c.d", "=?x?=@e.f", "a?=@b"])
def test_encoded_word_fragments_are_not_encoded_words(addr: str) -> None:
    """RFC 2047 §2 needs =?charset?encoding?text?=: fragments of it are ordinary atext (the CI failure at 0.1.0)."""
    assert address_problem(addr) is None


@pytest.mark.parametrize("addr", [
    "", "plain", "=?utf-8?q?x?=@example.com", "a=?us-ascii?B?eA==?=b@example.com", "=??q??=@example.com", "@example.com", "a@", "a@@b", "A <a@example.com>", "a@example.com, b@example.com", "a b@example.com",
    "a@-bad.com", "a@bad-.com", ".a@example.com", "a..b@example.com", "a@exa_mple.com", "a@[300.1.1.1]",
    "x" * 65 + "@example.com", "a@example.com\r\nRCPT TO:<evil@example.com>", "üser@example.com", "a@example.com\x00",
])
def test_invalid(addr: str) -> None:
    assert address_problem(addr) is not None


@pytest.mark.parametrize("addr", ["a@[IPv6:fe80::1%eth0]", "a@[IPv6:fe80::1%x> NOTIFY=NEVER ORCPT=rfc822;x]",
                                  "a@[IPv6:fe80::1%x> AUTH=<>]"])
def test_an_address_literal_with_a_zone_is_refused(addr: str) -> None:
    """Attack: ipaddress takes an IPv6 zone (RFC 4007 §11) of any characters but "%", so a domain literal could
    hold "> PARAM=..." and pass as one addr-spec: `RCPT TO:<a@[IPv6:fe80::1%x> NOTIFY=NEVER ...]>` ends the path
    early and hands the relay ESMTP parameters (RFC 3461 NOTIFY/ORCPT, RFC 4954 AUTH on MAIL) nobody configured.
    RFC 5321 §4.1.3's IPv6-addr holds no zone: refused in to, cc, bcc and from_address alike."""
    assert address_problem(addr) is not None
    base = {"host": "smtp.example.com", "from_address": "c@example.com", "to": ["p@example.com"]}
    formats = {f.name: f for f in BUILTIN_FORMATS}
    for key, value in (("to", [addr]), ("bcc", [addr]), ("from_address", addr)):
        with pytest.raises(ConfigError) as err:
            parse_settings({"targets": {"t": {**base, key: value}}}, Path("/etc/x/config.toml"), {}, formats)
        assert [(p.target, p.key) for p in err.value.problems] == [("t", key)]


def test_loopback_without_dns() -> None:
    assert all(map(is_loopback_host, ["127.0.0.1", "127.255.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback_host, ["10.1.1.1", "localhost.localdomain", "example.com", "::ffff:1.2.3.4"]))


# ---------------------------------------------------------------------------------------------- strategies
#
# Valid by construction, with every size bounded so no length limit can reject them: a local part is at most
# 4 atoms of 10 characters plus 3 dots (43 <= 64, RFC 5321 §4.5.3.1.1) or a quoted string of at most 2 + 2 * 16
# characters (34); a domain is at most 4 labels of 10 characters plus 3 dots (43) or an address literal of at most
# 47 characters; so an address is at most 64 + 1 + 47 characters (<= 254, RFC 5321 §4.5.3.1.3).

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"  # RFC 5322 §3.2.3
LET_DIG = string.ascii_letters + string.digits
LDH = LET_DIG + "-"  # RFC 5321 §4.1.2 Let-dig / Ldh-str
QTEXT = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')  # RFC 5322 §3.2.4 qtext, plus space
VCHAR_OR_SP = "".join(chr(c) for c in range(0x20, 0x7F))  # RFC 5322 §3.2.1 quoted-pair: "\" (VCHAR / WSP)

atoms = st.text(st.sampled_from(ATEXT), min_size=1, max_size=10)
dot_atom = st.lists(atoms, min_size=1, max_size=4).map(".".join)
quoted_local = st.lists(
    st.one_of(st.sampled_from(QTEXT), st.sampled_from(VCHAR_OR_SP).map(lambda c: "\\" + c)), max_size=16
).map(lambda parts: '"' + "".join(parts) + '"')
local_parts = st.one_of(dot_atom, dot_atom, dot_atom, quoted_local)  # mostly dot-atoms, as real mailboxes are

labels = st.one_of(
    st.sampled_from(LET_DIG),
    st.builds(lambda first, middle, last: first + middle + last,
              st.sampled_from(LET_DIG), st.text(st.sampled_from(LDH), max_size=8), st.sampled_from(LET_DIG)),
)
ldh_domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
address_literals = st.one_of(  # RFC 5321 §4.1.3
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
)
domains = st.one_of(ldh_domains, ldh_domains, ldh_domains, address_literals)

# atext holds "=" and "?", so a dot-atom can spell an RFC 2047 encoded word, which address_problem refuses on
# purpose (RFC 2047 §5): such an address is not valid, and the strategy does not yield it.
valid_addresses = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains).filter(
    lambda addr: not ENCODED_WORD_RE.search(addr))

# Every character Python's str.splitlines() (and so a careless consumer) treats as a line break, plus NUL and TAB.
LINE_BREAKERS = ("\r", "\n", "\r\n", "\x00", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\t")
# What an attacker would put after a line break: a field of their own.
INJECTED_FIELDS = ("Bcc: thief@example.net", "X-Injected: 1", "Subject: pwned", " folded", "\r\n")
# Text of every kind: arbitrary Unicode, printable Unicode (which an accepted config may carry), breaks, fields.
hostile_text = st.lists(
    st.one_of(
        st.text(max_size=8),
        st.text(st.characters().filter(str.isprintable), max_size=12),
        st.sampled_from(LINE_BREAKERS),
        st.sampled_from(INJECTED_FIELDS),
    ),
    max_size=6,
).map("".join)
printable_text = st.text(st.characters().filter(str.isprintable), max_size=40).filter(
    lambda v: not ENCODED_WORD_RE.search(v))  # an encoded word of its own is refused by design (RFC 2047 §5)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
FACTS = CertificateFacts("n", "n", ("n",), "CN=x", NOW, NOW, "1", "00")
MESSAGE_ID = "<id@example.com>"
HEADER_KEYS = ("subject_prefix", "from_name")


def config(to: list[str], cc: list[str], bcc: list[str], prefix: str, name: str) -> dict[str, object]:
    table: dict[str, object] = {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "robot@example.com",
                                "to": to, "subject_prefix": prefix, "from_name": name}
    if cc:
        table["cc"] = cc
    if bcc:
        table["bcc"] = bcc
    return {"targets": {"t": table}}


def render_config(doc: dict[str, object]) -> Message:
    target = parse_settings(doc, Path("c.toml"), {}, {"pem": BUILTIN_FORMATS[0]}).targets[0]
    return render(target, FACTS, Payload("pem", ()), MESSAGE_ID, NOW)


def assert_no_injection(msg: Message, to: list[str], cc: list[str], bcc: list[str]) -> None:
    """The header block holds exactly the fields render writes, each once, and nothing in it breaks a line."""
    head, sep, _ = msg.data.partition(b"\r\n\r\n")
    assert sep, "no blank line ends the header block"
    lines = head.split(b"\r\n")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line, f"bare CR or LF in header line {line!r}"
    starts = [line for line in lines if line[:1] not in (b" ", b"\t")]  # a field, not a fold (RFC 5322 §2.2.3)
    for line in starts:
        assert b":" in line, f"header line is neither a field nor a fold: {line!r}"
    fields = Counter(line.split(b":", 1)[0].decode("ascii").lower() for line in starts)
    wanted = {"from", "to", "subject", "date", "message-id", "auto-submitted", "mime-version", "content-type",
              "content-transfer-encoding"} | ({"cc"} if cc else set())
    assert fields == Counter(wanted), "a field the config did not ask for, or one twice"
    for rcpt in msg.envelope_to:
        assert "\r" not in rcpt and "\n" not in rcpt
    assert {r.lower() for r in msg.envelope_to} == {a.lower() for a in (*to, *cc, *bcc)}


# ---------------------------------------------------------------------------------------------- properties


@settings(max_examples=300)
@given(valid_addresses)
def test_every_generated_address_is_accepted(addr: str) -> None:
    """The strategy the render properties rely on really yields valid addresses (else they would test nothing)."""
    assert address_problem(addr) is None


@settings(max_examples=300)
@given(valid_addresses, st.data(), st.sampled_from(["\r", "\n", "\r\n", "\x00"]))
def test_a_line_break_or_nul_anywhere_in_an_address_is_rejected(addr: str, data: st.DataObject, bad: str) -> None:
    at = data.draw(st.integers(0, len(addr)), label="insert at")
    assert address_problem(addr[:at] + bad + addr[at:]) is not None


@given(st.text())
def test_no_accepted_address_contains_line_breaks(value: str) -> None:
    if address_problem(value) is None:
        assert "\r" not in value and "\n" not in value and value.isascii()


@given(st.one_of(st.text(), hostile_text))
def test_header_text_is_accepted_only_when_printable(value: str) -> None:
    """Any character that is not printable (CR, LF, NUL, TAB, U+0085, U+2028, U+2029, ...) is refused."""
    assert (header_text_problem(value) is None) == value.isprintable()


@settings(max_examples=300, deadline=None)
@given(to=st.lists(valid_addresses, min_size=1, max_size=3), cc=st.lists(valid_addresses, max_size=2),
       bcc=st.lists(valid_addresses, max_size=2), prefix=hostile_text, name=hostile_text)
def test_hostile_header_text_is_refused_by_its_key_or_rendered_harmlessly(
    to: list[str], cc: list[str], bcc: list[str], prefix: str, name: str
) -> None:
    """Arbitrary subject_prefix/from_name: a ConfigError keyed by exactly the offending keys, or a safe message."""
    for addr in (*to, *cc, *bcc):
        assert address_problem(addr) is None  # so a rejection can only be about the two header texts
    try:
        msg = render_config(config(to, cc, bcc, prefix, name))
    except ConfigError as exc:
        keys = {(p.target, p.key) for p in exc.problems}
        note(f"rejected: {keys}")
        event("rejected")
        # Exactly the values that are not printable, too long, or hold an encoded word of their own are refused.
        assert keys == {("t", k) for k, v in (("subject_prefix", prefix), ("from_name", name))
                        if not header_text_ok(k, v)}, str(exc)
        return
    event("rendered")  # --hypothesis-show-statistics: about a third of the examples; the next test, all of them
    assert header_text_ok("subject_prefix", prefix) and header_text_ok("from_name", name), "a bad value passed"
    assert_no_injection(msg, to, cc, bcc)


@settings(max_examples=300, deadline=None)
@given(to=st.lists(valid_addresses, min_size=1, max_size=3), cc=st.lists(valid_addresses, max_size=2),
       bcc=st.lists(valid_addresses, max_size=2), prefix=printable_text, name=printable_text)
def test_printable_header_text_is_accepted_and_rendered_harmlessly(
    to: list[str], cc: list[str], bcc: list[str], prefix: str, name: str
) -> None:
    """Every example reaches render: valid addresses and printable text (up to 40 < 128 characters) are accepted.

    Also checks the values land where they belong, whole: the Subject starts with the bracketed prefix and the
    From display name is the configured name, once the header is decoded (RFC 2047) and unfolded. Whitespace is
    compared away: Python's email package may fold a long value into several encoded words and read the folding
    white space between them back as a space, which changes the look of the value but not where it is.
    """
    msg = render_config(config(to, cc, bcc, prefix, name))
    assert_no_injection(msg, to, cc, bcc)
    parsed = email.message_from_bytes(msg.data, policy=email.policy.default)
    assert squeeze(str(parsed["Subject"])).startswith(squeeze(f"[{prefix}]" if prefix else "Certificate for"))
    [sender] = parsed["From"].addresses
    assert squeeze(sender.display_name) == squeeze(name)
    assert sender.addr_spec == "robot@example.com"


def header_text_ok(key: str, value: str) -> bool:
    limit = MAX_SUBJECT_PREFIX if key == "subject_prefix" else MAX_FROM_NAME
    return value.isprintable() and len(value) <= limit and not ENCODED_WORD_RE.search(value)


def squeeze(text: str) -> str:
    return "".join(text.split())


# ---------------------------------------------------------------------------------------------- examples


@pytest.mark.parametrize("sep", LINE_BREAKERS)
@pytest.mark.parametrize("key", HEADER_KEYS)
def test_line_breakers_in_header_values_are_refused_by_key(key: str, sep: str) -> None:
    value = f"PROD{sep}Bcc: thief@example.net"
    prefix, name = (value, "") if key == "subject_prefix" else ("", value)
    with pytest.raises(ConfigError) as err:
        render_config(config(["pki@example.com"], [], [], prefix, name))
    assert {(p.target, p.key) for p in err.value.problems} == {("t", key)}


@pytest.mark.parametrize("encoded", [
    "=?utf-8?q?a=2C_thief=40example=2Enet?=@example.com",  # decodes to "a, thief@example.net"
    "=?utf-8?q?x=0D=0ABcc=3A_thief=40example=2Enet?=@example.com",  # decodes to a CRLF and a Bcc field
])
def test_encoded_word_lookalike_address_is_refused_or_shown_verbatim(encoded: str) -> None:
    """Every character is atext, but RFC 2047 §5 forbids encoded words in an addr-spec: the address must be
    refused (keyed by `to`) or shown as written, never decoded into other recipients (or a line break)."""
    try:
        msg = render_config(config([encoded], [], [], "", ""))
    except ConfigError as exc:
        assert {(p.target, p.key) for p in exc.problems} == {("t", "to")}
        return
    assert_no_injection(msg, [encoded], [], [])
    parsed = email.message_from_bytes(msg.data, policy=email.policy.compat32)
    assert " ".join(str(parsed["To"]).split()) == encoded
