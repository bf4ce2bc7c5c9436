"""Diagnose a parsed certificate chain and key: the findings `inspect` prints and every email's Diagnostics carry.

Pure but for the trust-store lookup it is handed. Every text taken from a certificate is made printable and
bounded here, so a hostile subject (newlines, controls, encoded words) stays inside one line of one finding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from certbot_smtp_dist._internal import signatures
from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist.model import Finding, Severity

if TYPE_CHECKING:
    from certbot_smtp_dist._internal.certext import BadExtension

EXPIRES_SOON = timedelta(days=14)  # an ACME client renews at 30 days left (certbot) or a third of the lifetime
MIN_RSA_BITS = 2048  # CA/Browser Forum Baseline Requirements §6.1.5
SHOWN_NAME = 160  # characters of a certificate name quoted in a finding
UNDECODED_NAME = "(a name that does not decode)"
SHOWN_SAN = 255  # a DNS name has at most 253 (RFC 1035 §2.3.4): a longer subjectAltName is shown cut
ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
LEAF, INTERMEDIATE, ROOT, UNRELATED = "leaf", "intermediate", "root", "unrelated"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The findings, worst first, and what they were drawn from: each shipped certificate's role (in the order
    shipped), the trust anchor the chain builds to (None: none found), the key and the days left."""

    findings: tuple[Finding, ...]
    roles: tuple[str, ...]
    anchor: str | None
    key: str
    days_left: int

    @property
    def errors(self) -> int:
        return sum(f.severity is ERROR for f in self.findings)


def examine(certs: Sequence[Any], key_spki: bytes | None, now: datetime, store: Any | None,
            strict: bool) -> Diagnosis:
    """Findings about `certs` as shipped (leaf, then issuers) and the private key's SubjectPublicKeyInfo
    (`key_spki`; None: not given). `store` (anchors.Store) answers the trust question; `strict` (inspect) makes a
    chain that builds to no anchor an error, where a deploy only notes it (a private CA is normal there)."""
    findings: list[Finding] = []
    leaf = certs[_leaf_index(certs, key_spki)]
    path, broken = _path(leaf, [c for c in certs if c is not leaf])
    key = key_text(leaf.public_key())
    findings += _key_findings(leaf, key_spki, key)
    findings += _order_findings(certs, path, broken)
    anchor, trust, depth = _trust(path, store, strict)
    findings += trust
    findings += _validity_findings(path[:depth], now)  # beyond the anchor, an expired cross-sign is harmless
    findings += _name_findings(leaf)
    roles = tuple(_role(c, path) for c in certs)
    order = {ERROR: 0, WARNING: 1, INFO: 2}
    days = math.floor((validity(leaf)[1] - now) / timedelta(days=1))
    return Diagnosis(tuple(sorted(findings, key=lambda f: order[f.severity])), roles, anchor, key, days)


def name(cert: Any, which: str = "subject") -> str:
    """A certificate's subject (or issuer) as one printable, bounded line (RFC 4514 string)."""
    try:
        text = getattr(cert, which).rfc4514_string()
    except (ValueError, TypeError):  # a value cryptography cannot decode (a BMPString of odd length...)
        return UNDECODED_NAME
    return shown(text)


def shown(text: str, limit: int = SHOWN_NAME) -> str:
    """Certificate-borne `text` as one printable line of at most `limit` characters and "...": what may reach a
    terminal, a log, a journal or a mail header (a hostile name may hold escapes, line breaks, kilobytes)."""
    text = printable(text)
    return text if len(text) <= limit else text[:limit] + "..."


NOT_DECODED = "does not decode"  # in each of undecodable()'s phrases: inspect's `undecodable` finding


def undecodable(cert: Any) -> tuple[str, ...]:
    """What of `cert` does not decode, each in a few words holding NOT_DECODED; () when everything does.

    cryptography parses a certificate's names and extensions when they are first read, not when it loads: a
    NumericString or PrintableString of octets over 0x7F, a BMPString of odd length, a malformed or repeated
    extension (and on cryptography 38, a public key on a curve it does not know) load, then raise ValueError or
    TypeError wherever read. Asked of each certificate as it is read
    (lineage.py), so that nothing after, these findings included, meets one."""
    import warnings

    out = []
    for which, what in (("subject", "subject"), ("issuer", "issuer name")):
        try:
            with warnings.catch_warnings():  # a CN over 64 characters decodes (and is shown bounded): no warning
                warnings.simplefilter("ignore", UserWarning)
                getattr(cert, which)  # builds the Name: decodes every attribute value, or raises
        except (ValueError, TypeError) as exc:
            out.append(f"its {what} {NOT_DECODED} ({type(exc).__name__})")
    try:
        _ = cert.extensions  # cryptography decodes them all at once
    except Exception:  # noqa: BLE001 - certext reads them again: names the one, or raises what is no decode error
        # Imported only then: its import is 1.4% of a cold deploy's instructions (issue 16).
        from certbot_smtp_dist._internal import certext

        bad = certext.culprit(cert)
        if bad is not None:
            out.append(extension_phrase(bad))
    from cryptography.exceptions import UnsupportedAlgorithm

    try:  # cryptography 38 (Debian 12) loads a key on a curve it does not know, then raises where it is read
        cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        out.append(f"its public key {NOT_DECODED} ({type(exc).__name__})")
    return tuple(out)


def extension_phrase(bad: BadExtension, owner: str = "") -> str:
    """An extension that does not decode, in a few words holding NOT_DECODED: named when it could be found.
    `owner`: whose ("the certificate's"), when the phrase does not follow the certificate's name."""
    if not bad.oid:
        return f"{f'one of {owner} extensions' if owner else 'an extension'} {NOT_DECODED} ({bad.how})"
    what = f"{bad.name} extension" if bad.name else "extension"  # cryptography's name, an OID's digits: no relay text
    return f"{owner or 'the'} {what} ({bad.oid}) {NOT_DECODED} ({bad.how})"


def subject_alt_names(cert: Any) -> tuple[str, ...]:
    """The DNS names, then the IP addresses, of `cert`'s subjectAltName (RFC 5280 §4.2.1.6), as written: not made
    printable nor bounded (callers match them, then show them through printable()); () without the extension.
    Decoded alone when another extension does not decode. Raises ValueError when the subjectAltName itself does not
    decode (a DNSName of bytes over 0x7F, the extension twice), certext.Unreached when it may lie past the
    extensions walked."""
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    except Exception:  # noqa: BLE001 - an extension does not decode: certext reads this one alone, or raises
        from certbot_smtp_dist._internal import certext

        try:
            ext = certext.value_of(cert, x509.SubjectAlternativeName)
        except certext.Unreached:
            raise
        except ValueError as exc:
            raise ValueError(f"the subjectAltName does not decode ({exc})") from exc
        if ext is None:
            return ()
    return (tuple(str(v) for v in ext.get_values_for_type(x509.DNSName))
            + tuple(str(v) for v in ext.get_values_for_type(x509.IPAddress)))


def spki(public_key: Any) -> bytes:
    """`public_key` as a DER SubjectPublicKeyInfo: what says two certificates or a key and a certificate match."""
    from cryptography.hazmat.primitives import serialization

    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def is_ca(cert: Any) -> bool:
    """Whether basicConstraints marks `cert` a CA (RFC 5280 §4.2.1.9)."""
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _leaf_index(certs: Sequence[Any], key_spki: bytes | None) -> int:
    """The certificate of the private key; else the first that is no CA; else the first."""
    if key_spki is not None:
        for i, cert in enumerate(certs):
            if spki(cert.public_key()) == key_spki:
                return i
    return next((i for i, c in enumerate(certs) if not is_ca(c)), 0)


def _path(leaf: Any, others: list[Any]) -> tuple[list[Any], list[Finding]]:
    """The leaf and, in turn, each one's issuer among `others` (name and signature); a certificate that carries
    the issuer's name but not its key is a finding, and ends the path."""
    path, broken, left = [leaf], [], list(others)
    while left and not signatures.self_signed(path[-1]):
        current = path[-1]
        named = [c for c in left if c.subject == current.issuer]
        signer = next((c for c in named if signatures.issued(current, c)), None)
        if signer is None:
            if named:
                broken.append(Finding(ERROR, "chain-signature",
                                      f"{name(named[0])} has the name of the issuer of {name(current)}, but its key "
                                      "did not sign it (an old or foreign certificate under the same name)",
                                      "take the chain the CA sent with this certificate (certbot: fullchain.pem of "
                                      "the same renewal)"))
            break
        path.append(signer)
        left.remove(signer)
    return path, broken


def key_text(public_key: Any) -> str:
    """A public key's type and size as `inspect`, the Diagnostics and the S/MIME checks describe it: "RSA 2048
    bits", "ECDSA P-256", "Ed25519"."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    if isinstance(public_key, (rsa.RSAPublicKey, dsa.DSAPublicKey)):
        return f"{'RSA' if isinstance(public_key, rsa.RSAPublicKey) else 'DSA'} {public_key.key_size} bits"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {curves.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def _key_findings(leaf: Any, key_spki: bytes | None, key: str) -> list[Finding]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    out = []
    if key_spki is None:
        out.append(Finding(INFO, "key", f"leaf key: {key} (no private key given to compare)"))
    elif spki(leaf.public_key()) != key_spki:
        out.append(Finding(ERROR, "key-mismatch", f"the private key does not belong to the leaf {name(leaf)} "
                           f"(whose key is {key})",
                           "give the key of the same issuance (certbot: privkey.pem beside this cert.pem)"))
    else:
        out.append(Finding(INFO, "key", f"the private key matches the leaf ({key})"))
    public = leaf.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        out.append(Finding(ERROR, "weak-key", f"the leaf's RSA key has {public.key_size} bits, fewer than "
                           f"{MIN_RSA_BITS}", "issue a new certificate with an ECDSA key or RSA 2048+ "
                           "(certbot --key-type ecdsa)"))
    return out


def _order_findings(certs: Sequence[Any], path: list[Any], broken: list[Finding]) -> list[Finding]:
    out = list(broken)
    if [id(c) for c in certs[:len(path)]] != [id(c) for c in path]:
        wanted = ", ".join(f"{i}. {name(c)}" for i, c in enumerate(path, 1))
        out.append(Finding(ERROR, "chain-order", "the certificates are out of order: the leaf must come first, "
                           "then each certificate's issuer", f"write them in this order: {wanted} (certbot's "
                           "fullchain.pem already is)"))
    for cert in (c for c in certs if all(c is not p for p in path)):
        if any(c == cert for c in path):
            out.append(Finding(WARNING, "duplicate-certificate", f"{name(cert)} is in the chain twice",
                               "remove the second copy from the chain file"))
        else:
            out.append(Finding(WARNING, "unrelated-certificate", f"{name(cert)} is not an issuer in the leaf's "
                               "chain", "remove it from the chain file"))
    return out


def _trust(path: list[Any], store: Any | None, strict: bool) -> tuple[str | None, list[Finding], int]:
    """The anchor the chain builds to, the findings about it, and how many certificates of `path` reach it: the
    first whose issuer is an anchor (name and signature) ends the chain a verifier builds (RFC 5280 §6.1); what
    follows (a cross-signature for older clients, a root) is not needed."""
    top, label = path[-1], store.label if store is not None else "the trust store"
    out = []
    if len(path) > 1 and signatures.self_signed(top):
        out.append(Finding(WARNING, "root-included", f"the chain includes the root {name(top)}, which is "
                           "unnecessary: clients use their own copy (RFC 8446 §4.4.2)",
                           "ship the chain without its last certificate"))
    for depth, cert in enumerate(path, 1):
        anchor = next((c for c in _candidates(store, cert, "issuer") if signatures.issued(cert, c)), None)
        if anchor is not None:
            above = depth - 1
            shape = "the leaf alone" if not above else f"the leaf and {above} issuer{'s' if above > 1 else ''}"
            extra = sum(not signatures.self_signed(c) for c in path[depth:])
            more = f"; {extra} certificate(s) after that are not needed (cross-signed, for older clients)" if extra else ""
            return name(anchor), [*out, Finding(INFO, "trust-anchor", f"chain complete ({shape}), builds to "
                                                f"{name(anchor)} in {label}{more}")], depth
    return None, [*out, *_no_anchor(path, label, strict)], len(path)


def _no_anchor(path: list[Any], label: str, strict: bool) -> list[Finding]:
    top = path[-1]
    above = len(path) - 1
    shape = "the leaf alone" if not above else f"the leaf and {above} issuer{'s' if above > 1 else ''}"
    if signatures.self_signed(top):
        return [Finding(ERROR if strict else INFO, "no-trust-anchor",
                        f"the chain ends at the self-signed {name(top)}, which is not in {label}",
                        "if it is a private CA's root, pass it with --ca-file" if strict else None)]
    if len(path) == 1 and not is_ca(top):
        return [Finding(ERROR, "missing-intermediate", f"missing intermediate: the chain holds the leaf alone, "
                        f"and its issuer {name(top, 'issuer')} is neither in it nor in {label}",
                        "ship fullchain.pem, not cert.pem (or append the issuer's certificate, chain.pem)")]
    if strict and any(c.subject == top.issuer for c in path):
        return [Finding(ERROR, "no-trust-anchor", f"the chain ({shape}) builds to no trust anchor in {label}: it "
                        f"loops, {name(top)} being issued by {name(top, 'issuer')}, which is earlier in it",
                        "ship the chain the CA sent (certbot: fullchain.pem); if the top is a private CA's, pass "
                        "its root with --ca-file")]
    if strict:
        return [Finding(ERROR, "no-trust-anchor", f"the chain ({shape}) builds to no trust anchor in {label}: "
                        f"{name(top)} was issued by {name(top, 'issuer')}, which is neither in the chain "
                        "nor in the store",
                        "append that intermediate if one is missing; if it is a private CA's root, pass it "
                        "with --ca-file")]
    return [Finding(INFO, "no-trust-anchor", f"the chain ({shape}) ends at {name(top)}, whose issuer "
                    f"{name(top, 'issuer')} is not in {label} (a private CA?)")]


def _candidates(store: Any | None, cert: Any, which: str = "subject") -> list[Any]:
    if store is None:
        return []
    try:
        found = list(store.candidates(getattr(cert, which).public_bytes()))
    except ValueError:  # a store certificate that does not parse is no anchor
        return []
    # Nor is one whose names do not decode (its subject matched in OpenSSL's canonical form, which reads a
    # PrintableString as Latin-1 where cryptography 38 raises): comparing it would raise.
    return [c for c in found if not undecodable(c)]


def validity(cert: Any) -> tuple[datetime, datetime]:
    if hasattr(cert, "not_valid_after_utc"):  # cryptography >= 42
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return (cert.not_valid_before.replace(tzinfo=timezone.utc),  # pragma: no cover - cryptography < 42
            cert.not_valid_after.replace(tzinfo=timezone.utc))


def _validity_findings(path: list[Any], now: datetime) -> list[Finding]:
    out = []
    for i, cert in enumerate(path):
        what = "the leaf" if i == 0 else f"the issuer {name(cert)}"
        not_before, not_after = validity(cert)
        if not_after <= now:
            out.append(Finding(ERROR, "expired", f"{what} expired on {not_after:%Y-%m-%d %H:%M} UTC",
                               "renew it (certbot renew --cert-name NAME) and ship the new files"))
        elif not_before > now:
            out.append(Finding(ERROR, "not-yet-valid", f"{what} is valid only from {not_before:%Y-%m-%d %H:%M} UTC",
                               "check this host's clock (timedatectl)"))
    not_after = validity(path[0])[1]
    left = not_after - now
    if timedelta(0) < left < EXPIRES_SOON:
        out.append(Finding(WARNING, "expires-soon", f"the leaf expires in {left.days} day(s), on "
                           f"{not_after:%Y-%m-%d} UTC", "check that the ACME client's renewal runs (its timer and "
                           "logs)"))
    elif left >= EXPIRES_SOON:
        out.append(Finding(INFO, "validity", f"the leaf expires in {left.days} days, on {not_after:%Y-%m-%d} UTC"))
    return out


def _name_findings(leaf: Any) -> list[Finding]:
    from cryptography import x509

    try:
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [Finding(WARNING, "no-san", "the leaf has no subjectAltName: clients ignore the common name "
                        "(RFC 6125 §6.4.4)", "issue it again; ACME CAs always add the names as SANs")]
    return []


def _role(cert: Any, path: list[Any]) -> str:
    if all(cert is not p for p in path):
        return UNRELATED
    if cert is path[0]:
        return LEAF
    return ROOT if signatures.self_signed(cert) else INTERMEDIATE
