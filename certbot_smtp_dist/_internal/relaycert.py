"""What the relay's certificate says, and why it does or does not verify against the configured trust."""

from __future__ import annotations

import ipaddress
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist._internal.diagnose import validity

EXPIRY_WARNING_DAYS = 14


@dataclass(frozen=True, slots=True)
class RelayCertificate:
    """The leaf the relay presented (relay-controlled text, made printable) and the findings about it."""

    subject: str
    sans: tuple[str, ...]
    issuer: str
    not_after: datetime
    verified: bool  # the handshake as delivery does it accepted the chain and the host name
    host_matches: bool
    problems: tuple[str, ...]  # why it does not verify, each with what to do
    chain_length: int = 1  # certificates the relay sent, where Python tells (3.13+); else 1 (the leaf)

    def days_left(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {"subject": self.subject, "sans": list(self.sans), "issuer": self.issuer,
                "not_after": self.not_after.isoformat(), "days_left": round(self.days_left(now), 1),
                "verified": self.verified, "host_matches": self.host_matches, "problems": list(self.problems)}


def diagnose(leaf_der: bytes, chain: Sequence[bytes], anchors: Sequence[bytes], host: str, verified: bool,
             now: datetime) -> RelayCertificate | None:
    """The leaf's facts; when the verified handshake failed (`verified` false), the reasons found: expiry, host
    name not in the SANs (RFC 6125 §6.4), self-signed, or an issuer that is no trust anchor and was not sent (a
    missing intermediate). None when the bytes are no certificate."""
    from cryptography import x509

    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
    except ValueError:
        return None
    sans = _sans(leaf)
    matches = host_matches(host, sans)
    not_before, not_after = validity(leaf)
    problems: list[str] = []
    if not verified:
        problems += _why_not(leaf, chain, anchors, host, matches, not_before, not_after, now)
    subject, issuer = printable(leaf.subject.rfc4514_string()), printable(leaf.issuer.rfc4514_string())
    return RelayCertificate(subject, tuple(printable(s) for s in sans), issuer, not_after, verified, matches,
                            tuple(problems), max(len(chain), 1))


def _why_not(leaf: Any, chain: Sequence[bytes], anchors: Sequence[bytes], host: str, matches: bool,
             not_before: datetime, not_after: datetime, now: datetime) -> list[str]:

    problems = []
    if not_after < now:
        problems.append(f"the relay's certificate expired on {not_after:%Y-%m-%d %H:%M} UTC: the relay must "
                        "install a renewed one")
    elif not_before > now:
        problems.append(f"the relay's certificate is not valid before {not_before:%Y-%m-%d %H:%M} UTC (check "
                        "this host's clock)")
    if not matches:
        problems.append(f"host name {printable(host)!r} is not among the certificate's names "
                        f"({', '.join(printable(s) for s in _sans(leaf)) or 'none'}): set host to one of them")
    trusted, sent = _subjects(anchors), _subjects(chain[1:])
    issuer = printable(leaf.issuer.rfc4514_string())
    if leaf.issuer == leaf.subject and leaf.subject not in trusted:
        problems.append("the certificate is self-signed and not a trust anchor here: if it is really the "
                        "relay's, name it in tls_ca_file")
    elif leaf.issuer not in trusted and leaf.issuer not in sent and (chain or not problems):
        # Before Python 3.13 the chain sent is unknown (leaf only): a missing intermediate is then a guess, made
        # only when neither the date nor the host name explains the refusal.
        how = "" if chain else " (Python before 3.13 shows only the leaf, so this is the likely cause)"
        problems.append(f"missing intermediate: the relay did not send the certificate of its issuer {issuer}, "
                        f"which is not a trust anchor here{how}; the relay must send its full chain (or, if "
                        "that CA is a private one, name its root in tls_ca_file)")
    elif leaf.issuer in sent:
        problems.append(f"the chain the relay sent does not end at a trust anchor here (issuer {issuer}): name "
                        "its root in tls_ca_file if it is a private CA")
    if not problems:
        problems.append("the chain did not verify for a reason this check cannot name (signature, key usage or "
                        "policy): run `openssl s_client -starttls smtp -showcerts` against the relay")
    return problems


def _subjects(ders: Sequence[bytes]) -> set[Any]:
    from cryptography import x509

    found = set()
    with warnings.catch_warnings():  # old anchors of the system store draw deprecation warnings (serials)
        warnings.simplefilter("ignore")
        for der in ders:
            try:
                found.add(x509.load_der_x509_certificate(der).subject)
            except ValueError:
                continue
    return found


def host_matches(host: str, sans: Sequence[str]) -> bool:
    """RFC 6125 §6.4: an IP address against the IP SANs; a name against the DNS SANs, a wildcard only as the
    whole left-most label."""
    name = host.strip("[]").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for san in sans:
        if address is not None:
            try:
                if ipaddress.ip_address(san) == address:
                    return True
            except ValueError:
                continue
        elif _name_matches(name, san.rstrip(".").lower()):
            return True
    return False


def _name_matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:] and "." in rest
    return name == pattern


def _sans(leaf: Any) -> tuple[str, ...]:
    from cryptography import x509

    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return (tuple(str(v) for v in ext.get_values_for_type(x509.DNSName))
            + tuple(str(v) for v in ext.get_values_for_type(x509.IPAddress)))

