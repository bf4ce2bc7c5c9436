"""Syntax checks for mailbox addresses and header values: nothing here looks anything up."""

from __future__ import annotations

import ipaddress
import re

# RFC 5322 §3.2.3 atext, and the dot-atom built from it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# RFC 5322 §3.2.4 quoted-string without obsolete forms: printable ASCII, space, and quoted pairs.
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LOCAL_RE = re.compile(rf"(?:{_DOT_ATOM}|{_QUOTED})")
# RFC 5321 §4.1.2 Domain: LDH labels. A single label (`localhost`) is legitimate for internal relays.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# RFC 2047 §2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?=". The shape is matched as leniently
# as Python's email package decodes it (email.header.ecre: any charset, even empty, and a non-greedy text), so
# nothing it would decode gets through; "?=?@a", a valid atext local part, has no encoding letter and is no word.
ENCODED_WORD_RE = re.compile(r"=\?[^?]*\?[QqBb]\?.*?\?=", re.DOTALL)

MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1
MAX_ADDRESS = 254  # RFC 5321 §4.5.3.1.3 path (256) minus the angle brackets


def address_problem(value: str) -> str | None:
    """Why `value` is not a single RFC 5322 addr-spec usable in an SMTP envelope, or None if it is."""
    if _CONTROL_RE.search(value):
        return "contains a control character (CR, LF, NUL, ...)"
    if not value.isascii():
        return "contains non-ASCII characters (SMTPUTF8 addresses are not supported)"
    if len(value) > MAX_ADDRESS:
        return f"is longer than {MAX_ADDRESS} characters"
    if ENCODED_WORD_RE.search(value):
        # RFC 2047 §5: an encoded-word must not appear in an addr-spec; the email package would decode it, and
        # the To header shown to people would no longer be the address that receives the message.
        return "looks like an RFC 2047 encoded-word (=?...?=), which is not allowed in an address"
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain:
        return "is not of the form local-part@domain"
    if not _LOCAL_RE.fullmatch(local):
        return "has an invalid local part (a display name or list is not allowed: one addr-spec only)"
    if len(local) > MAX_LOCAL:
        return f"has a local part longer than {MAX_LOCAL} characters"
    if domain.startswith("[") and domain.endswith("]"):
        return None if _address_literal_ok(domain[1:-1]) else "has an invalid address literal"
    if not _DOMAIN_RE.fullmatch(domain):
        return "has an invalid domain"
    return None


def _address_literal_ok(literal: str) -> bool:
    # RFC 5321 §4.1.3: IPv4 dotted quad, or "IPv6:" followed by an IPv6 address. Its IPv6-addr holds no zone;
    # ipaddress takes one ("%eth0") of any characters, "> PARAM=" included, which would end the SMTP path early.
    if "%" in literal:
        return False
    try:
        if literal[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(literal[5:])
        else:
            ipaddress.IPv4Address(literal)
    except ValueError:
        return False
    return True


def header_text_problem(value: str) -> str | None:
    """Why `value` cannot be placed in a header field (RFC 5322 §2.2: no bare CR/LF), or None.

    Any character that is not printable is refused: besides CR, LF and NUL that includes the Unicode line
    separators (U+2028, U+2029, U+0085) that Python's email package treats as line breaks.
    """
    if not value.isprintable():
        return "contains a control or line-separator character (CR, LF, U+2028, ...): header injection is refused"
    return None


def printable(text: str) -> str:
    """`text` with every non-printable character (controls, line separators) shown as "?"."""
    return "".join(c if c.isprintable() else "?" for c in text)


def is_loopback_host(host: str) -> bool:
    """A literal address in 127.0.0.0/8 or ::1, or the name `localhost`; no DNS lookup, ever."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
