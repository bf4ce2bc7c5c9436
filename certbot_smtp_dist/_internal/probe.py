"""What a session that sends no mail saw of a relay (transport.probe), as frozen facts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from certbot_smtp_dist.model import Failure


@dataclass(frozen=True, slots=True)
class Ehlo:
    """One EHLO reply (RFC 5321 §4.1.1.1): extension keywords (lower case) with their parameters, and the SASL
    mechanisms AUTH offers (RFC 4954 §3, upper case)."""

    extensions: tuple[tuple[str, str], ...]
    auth: tuple[str, ...]

    def has(self, keyword: str) -> bool:
        return any(k == keyword.lower() for k, _ in self.extensions)

    def param(self, keyword: str) -> str | None:
        return next((v for k, v in self.extensions if k == keyword.lower()), None)

    @property
    def size_limit(self) -> int | None:
        """RFC 1870 §4: SIZE's parameter; 0 (or none) means no fixed limit; None when SIZE is not offered."""
        value = self.param("size")
        if value is None:
            return None
        return size_number(value) or 0


# RFC 1870 §4: size-param = 1*20DIGIT, ASCII digits only (str.isdigit() also takes "²", which int() refuses,
# and "١٢٣", which it reads as 123); more than 18 digits is no limit any message of ours could reach.
_SIZE_RE = re.compile(r"[0-9]{1,18}")


def size_number(value: str) -> int | None:
    """SIZE's parameter as a number, or None when it is none (relay text, shown as such)."""
    digits = value.strip()
    return int(digits) if _SIZE_RE.fullmatch(digits) else None


@dataclass(frozen=True, slots=True)
class Encryption:
    """The TLS session: protocol, cipher, the relay's certificate (DER) and, where Python tells (3.13+), the whole
    chain it presented, unverified."""

    version: str
    cipher: str
    certificate: bytes | None
    chain: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Probe:
    """What one probe session came to. `failure` is classified as a delivery's would be."""

    helo_name: str | None
    before_tls: Ehlo | None  # STARTTLS: the EHLO in clear; plaintext: the only one; smtps: None
    after_tls: Ehlo | None
    encryption: Encryption | None
    authenticated: bool
    noop: bool
    failure: Failure | None


@dataclass(slots=True)
class Seen:
    """Filled in by the session as it goes, so that a failure half-way still reports what came before it."""

    authenticate: bool = True
    until_tls: bool = False
    helo_name: str | None = None
    before_tls: Ehlo | None = None
    after_tls: Ehlo | None = None
    encryption: Encryption | None = None
    authenticated: bool = False
    noop: bool = False

    def greeted(self, name: str, ehlo: Ehlo, encrypted: bool) -> None:
        self.helo_name = name
        if encrypted:
            self.after_tls = ehlo
        else:
            self.before_tls = ehlo

    def facts(self, failure: Failure | None) -> Probe:
        return Probe(self.helo_name, self.before_tls, self.after_tls, self.encryption, self.authenticated,
                     self.noop, failure)
