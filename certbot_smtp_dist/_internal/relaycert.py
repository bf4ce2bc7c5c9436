"""What the relay's certificate says, and why it does or does not verify against the configured trust."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from certbot_smtp_dist._internal import anchors, certext, signatures, x509strict
from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist._internal.diagnose import (
    extension_phrase,
    name,
    shown,
    subject_alt_names,
    validity,
)

if TYPE_CHECKING:
    from certbot_smtp_dist._internal.anchors import Store

EXPIRY_WARNING_DAYS = 14
MAX_SANS = 100  # names kept of the relay's certificate: a hostile one may carry thousands
MAX_SAN_CHARS = 255  # a DNS name has at most 253 (RFC 1035 §2.3.4); a longer SAN is shown cut
SHOWN_SANS = 10  # names quoted in the host-name finding and on the certificate line
LISTED_CHARS = 600  # and the characters they may take there
MAX_SENT = 16  # certificates of the relay's chain looked at (real chains hold 2 to 4)
UNDECODED_SANS = ("the certificate's subjectAltName does not decode (malformed names): the relay must install a "
                  "certificate with well-formed names")
UNREACHED_SANS = (f"the certificate carries more than {certext.MAX_EXTENSIONS} extensions, one of which does not "
                  f"decode, and its subjectAltName is not among the first {certext.MAX_EXTENSIONS}: its names were "
                  "not read; the relay must install a well-formed certificate")


@dataclass(frozen=True, slots=True)
class RelayCertificate:
    """The leaf the relay presented (relay-controlled text, made printable and bounded) and the findings about it."""

    subject: str
    sans: tuple[str, ...]
    issuer: str
    not_after: datetime
    verified: bool  # the handshake as delivery does it accepted the chain and the host name
    host_matches: bool
    problems: tuple[str, ...]  # why it does not verify, each with what to do
    chain_length: int = 1  # certificates the relay sent, where Python tells (3.13+); else 1 (the leaf)
    sans_total: int = 0  # names the certificate carries; `sans` holds the first MAX_SANS

    def shown_sans(self) -> str:
        """The first few names, and how many more there are, on one line."""
        return listed(self.sans, max(self.sans_total, len(self.sans)))

    def days_left(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {"subject": self.subject, "sans": list(self.sans), "issuer": self.issuer,
                "not_after": self.not_after.isoformat(), "days_left": round(self.days_left(now), 1),
                "verified": self.verified, "host_matches": self.host_matches, "problems": list(self.problems),
                "sans_total": max(self.sans_total, len(self.sans))}


@dataclass(frozen=True, slots=True)
class _Cert:
    """A certificate the relay sent: parsed (names decoded lazily, and maybe not at all) and as DER."""

    cert: Any
    der: bytes


def diagnose(leaf_der: bytes, chain: Sequence[bytes], stores: Sequence[Store], host: str, verified: bool,
             now: datetime, verify_code: int | None = None) -> RelayCertificate | None:
    """The leaf's facts; when the verified handshake failed (`verified` false), the reasons found: expiry, host
    name not in the SANs (RFC 6125 §6.4), self-signed, or an issuer that is no trust anchor in `stores` (the
    system store, then `tls_ca_file`: anchors.Store, which finds what OpenSSL finds in a hashed directory too)
    and was not sent (a missing intermediate), or, told by OpenSSL's `verify_code` of the refusal, what only the
    strict RFC 5280 checks of Python 3.13 and later refuse (x509strict). Names and extensions a hostile relay
    made undecodable are reported as such, never raised. None when the bytes are no certificate."""
    from cryptography import x509

    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
        not_before, not_after = validity(leaf)
    except ValueError:
        return None
    unread: str | None = None  # why the names could not be read, if they could not
    try:
        sans = subject_alt_names(leaf)
    except certext.Unreached:
        sans, unread = (), UNREACHED_SANS
    except ValueError:
        sans, unread = (), UNDECODED_SANS
    # A verified handshake checked the host name itself (RFC 6125 §6.4), with OpenSSL's reading of the SANs.
    matches = verified or host_matches(host, sans)
    problems: list[str] = []
    if not verified:
        problems += _dates(not_before, not_after, now)
        if unread:
            problems.append(unread)
        elif (bad := certext.culprit(leaf)) is not None:  # another extension: OpenSSL refuses the leaf for it
            problems.append(extension_phrase(bad, "the certificate's")
                            + ": the relay must install a well-formed certificate")
        if not unread and not matches:
            problems.append(f"host name {printable(host)!r} is not among the certificate's names "
                            f"({listed(sans, len(sans))}): set host to one of them")
        problems += _trust(_Cert(leaf, leaf_der), chain, stores, bool(problems), verify_code)
    return RelayCertificate(name(leaf), tuple(shown(s, MAX_SAN_CHARS - 3) for s in sans[:MAX_SANS]), name(leaf, "issuer"), not_after,
                            verified, matches, tuple(problems), max(len(chain), 1), len(sans))


def _dates(not_before: datetime, not_after: datetime, now: datetime) -> list[str]:
    if not_after < now:
        return [f"the relay's certificate expired on {not_after:%Y-%m-%d %H:%M} UTC: the relay must install a "
                "renewed one"]
    if not_before > now:
        return [f"the relay's certificate is not valid before {not_before:%Y-%m-%d %H:%M} UTC (check this host's "
                "clock)"]
    return []


def _trust(leaf: _Cert, chain: Sequence[bytes], stores: Sequence[Store], explained: bool,
           verify_code: int | None) -> list[str]:
    """Why the chain does not reach an anchor, if it does not. The path is the leaf, then each issuer the relay
    sent (name and signature, RFC 5280 §6.1); it is anchored when an anchor in `stores` issued one of them.
    `chain`: what the relay sent, leaf first (Python 3.13+), else empty. A strict-only `verify_code` is OpenSSL's
    own reason, given after the chain reached an anchor (x509_vfy.c: check_extensions follows build_chain)."""
    sent = _sent(chain)
    path = _path(leaf, sent)
    if verify_code is not None and x509strict.is_strict_only(verify_code):
        return [x509strict.finding(verify_code, [c.cert for c in path], name)]
    if any(_anchored(c, stores) for c in path):
        return [] if explained else [
            "the chain did not verify for a reason this check cannot name (signature, key usage or policy): run "
            "`openssl s_client -starttls smtp -showcerts` against the relay"]
    top = path[-1]
    issuer = name(top.cert, "issuer")
    if _issued(top.cert, top.cert):
        if top is leaf:
            return ["the certificate is self-signed and not a trust anchor here: if it is really the relay's, name "
                    "it in tls_ca_file"]
        return [f"the chain the relay sent ends at the root {name(top.cert)}, which is not a trust anchor here: "
                "name it in tls_ca_file if it is a private CA"]
    holder = _same_name(top, stores)
    if holder is not None:  # RFC 5280 §6.1.3 (a)(1): the name chains, the signature does not
        signed = "the relay's certificate" if top is leaf else name(top.cert)
        return [f"{printable(holder)} holds an anchor named {issuer}, but its key did not sign {signed}: the CA "
                "was re-keyed under the same name (name its current certificate in tls_ca_file), or the chain is "
                "not that CA's"]
    wanted = anchors.canonical(anchors.issuer_der(top.der))
    if len(path) > 1 or any(anchors.canonical(anchors.subject_der(c.der)) == wanted for c in sent):
        return [f"the chain the relay sent does not end at a trust anchor here (issuer {issuer}): name its root "
                "in tls_ca_file if it is a private CA"]
    if chain or not explained:
        # Before Python 3.13 the chain sent is unknown (leaf only): a missing intermediate is then a guess, made
        # only when neither the date nor the host name explains the refusal.
        how = "" if chain else " (Python before 3.13 shows only the leaf, so this is the likely cause)"
        return [f"missing intermediate: the relay did not send the certificate of its issuer {issuer}, which is "
                f"not a trust anchor here{how}; the relay must send its full chain (or, if that CA is a private "
                "one, name its root in tls_ca_file)"]
    return []


def _sent(chain: Sequence[bytes]) -> list[_Cert]:
    """The issuers the relay sent after its leaf (Python 3.13+; else none), those that parse."""
    from cryptography import x509

    out = []
    for der in chain[1:MAX_SENT]:
        try:
            out.append(_Cert(x509.load_der_x509_certificate(der), der))
        except ValueError:
            continue
    return out


def _path(leaf: _Cert, sent: list[_Cert]) -> list[_Cert]:
    path, left = [leaf], list(sent)
    while left and not _issued(path[-1].cert, path[-1].cert):
        signer = next((c for c in left if _issued(path[-1].cert, c.cert)), None)
        if signer is None:
            break
        path.append(signer)
        left.remove(signer)
    return path


def _anchored(cert: _Cert, stores: Iterable[Store]) -> bool:
    """Whether an anchor of `stores` issued `cert` (name and signature): looked up by the issuer's DER, so a
    name that does not decode is still looked up; a store certificate that does not parse is no anchor."""
    wanted = anchors.issuer_der(cert.der)
    for store in stores:
        try:
            if any(_issued(cert.cert, anchor) for anchor in store.candidates(wanted)):
                return True
        except ValueError:
            continue
    return False


def _same_name(cert: _Cert, stores: Iterable[Store]) -> str | None:
    """The label of a store holding an anchor whose subject is `cert`'s issuer name, exactly (so that _anchored
    checked its signature on `cert`, and it failed); None if none does."""
    wanted = anchors.issuer_der(cert.der)
    for store in stores:
        try:
            if any(anchor.subject == cert.cert.issuer for anchor in store.candidates(wanted)):
                return store.label
        except (ValueError, TypeError):  # a name that does not decode: no finding this check can make
            continue
    return None


def _issued(child: Any, parent: Any) -> bool:
    """signatures.issued, for certificates whose names may not decode (cryptography reads them lazily and raises
    ValueError, or TypeError for a string type it refuses): such a link is not one this check can see."""
    try:
        return signatures.issued(child, parent)
    except (ValueError, TypeError):
        return False


def listed(names: Sequence[str], total: int) -> str:
    """The first of `names` (at most SHOWN_SANS, in at most LISTED_CHARS), printable and bounded, then how many
    more of `total` there are: one line that fits in a finding."""
    picked: list[str] = []
    for san in names[:SHOWN_SANS]:
        text = shown(san, MAX_SAN_CHARS - 3)
        if picked and sum(len(s) + 2 for s in picked) + len(text) > LISTED_CHARS:
            break
        picked.append(text)
    more = total - len(picked)
    return (", ".join(picked) or "none") + (f" and {more} more" if more > 0 else "")


def host_matches(host: str, sans: Sequence[str]) -> bool:
    """RFC 6125 §6.4: an IP address against the IP SANs; a name against the DNS SANs, a wildcard only as the
    whole left-most label."""
    wanted = host.strip("[]").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(wanted)
    except ValueError:
        address = None
        try:  # a non-ASCII name as the handshake sends and matches it: ssl encodes server_hostname with IDNA
            wanted = wanted.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # not a name IDNA can encode: matched as written (it matches no SAN, which is ASCII)
    for san in sans:
        if address is not None:
            try:
                if ipaddress.ip_address(san) == address:
                    return True
            except ValueError:
                continue
        elif _name_matches(wanted, san.rstrip(".").lower()):
            return True
    return False


def _name_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:] and "." in rest
    return host == pattern
