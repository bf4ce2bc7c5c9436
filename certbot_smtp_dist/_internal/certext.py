"""A certificate's extensions one at a time: which one does not decode, and one read alone despite another.

cryptography decodes every extension when `.extensions` is first read, and its error names none (a malformed
keyUsage raises the ValueError a malformed subjectAltName raises). Each Extension (RFC 5280 §4.1: SEQUENCE {
extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }) is walked here from the tbsCertificate's DER and
decoded by cryptography alone, in a copy of the certificate holding only it. The copy's signature no longer
matches: it is only read, for what one extension says, never verified nor trusted.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from certbot_smtp_dist._internal import der

MAX_EXTENSIONS = 64  # decoded one by one: real certificates carry about ten; a hostile one may carry thousands
DUPLICATE = "it appears twice: RFC 5280 §4.2 allows each extension once"


@dataclass(frozen=True, slots=True)
class BadExtension:
    """An extension that does not decode: its OID (dotted; "" when none failed alone, only the set as a whole),
    cryptography's name for it ("" when it has none), and how (DUPLICATE, or the exception's class name)."""

    oid: str
    name: str
    how: str


class Unreached(ValueError):
    """The extension sought is not among the first MAX_EXTENSIONS, which are all that are walked: it may be past
    them (a certificate carrying more, one of which does not decode), so "it has none" would be a guess."""


def decode_errors() -> tuple[type[BaseException], ...]:
    """What reading `.extensions` raises on malformed DER, on cryptography 38 (Debian 12) to the newest."""
    from cryptography import x509

    return (ValueError, TypeError, x509.DuplicateExtension,
            getattr(x509, "UnsupportedGeneralNameType", ValueError))  # the latter: cryptography < 41


def culprit(cert: Any) -> BadExtension | None:
    """None when `cert`'s extensions decode; else the first that does not decode alone (or appears twice)."""
    from cryptography import x509

    try:
        _ = cert.extensions  # decodes them all, or raises
        return None
    except x509.DuplicateExtension as exc:
        return BadExtension(exc.oid.dotted_string, _name(exc.oid.dotted_string), DUPLICATE)
    except decode_errors() as exc:
        how = type(exc).__name__
    tbs, found, _ = _walk(cert)
    for oid, start, end in found:
        try:
            _ = _alone(cert, tbs, start, end).extensions
        except decode_errors() as exc:
            return BadExtension(oid, _name(oid), type(exc).__name__)
    return BadExtension("", "", how)


def value_of(cert: Any, kind: Any) -> Any | None:
    """The value of `cert`'s extension of cryptography's class `kind` (x509.SubjectAlternativeName...), None when
    it has none; decoded alone when another of its extensions does not decode. Raises ValueError when this one does
    not decode, or appears twice (the message says which); Unreached (a ValueError) when it may lie past the first
    MAX_EXTENSIONS."""
    from cryptography import x509

    try:
        extensions = cert.extensions
    except decode_errors() as exc:
        extensions = _only(cert, kind.oid.dotted_string, exc)
        if extensions is None:
            return None
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _only(cert: Any, oid: str, failure: BaseException) -> Any | None:
    """The `.extensions` of a copy of `cert` holding only its extension `oid`; None when it has none."""
    from cryptography import x509

    if isinstance(failure, x509.DuplicateExtension) and failure.oid.dotted_string == oid:
        raise ValueError(DUPLICATE) from failure
    tbs, found, whole = _walk(cert)
    mine = [(start, end) for seen, start, end in found if seen == oid]
    if len(mine) > 1:
        raise ValueError(DUPLICATE) from failure
    if not mine and not whole:
        raise Unreached(f"not among the first {MAX_EXTENSIONS} of the certificate's extensions") from failure
    if not mine:
        return None
    try:
        return _alone(cert, tbs, *mine[0]).extensions
    except decode_errors() as exc:
        raise ValueError(type(exc).__name__) from exc


# The extensions a certificate may carry, by the names their specifications give them (RFC 5280 §4.2 and §5.2,
# RFC 6962 §3.1 and §3.3, RFC 7633, RFC 3709, RFC 6960 §4.2.2.2.1). Ours: cryptography names OIDs only through a
# private attribute.
_NAMES = {
    "2.5.29.9": "subjectDirectoryAttributes", "2.5.29.14": "subjectKeyIdentifier", "2.5.29.15": "keyUsage",
    "2.5.29.16": "privateKeyUsagePeriod", "2.5.29.17": "subjectAltName", "2.5.29.18": "issuerAltName",
    "2.5.29.19": "basicConstraints", "2.5.29.20": "cRLNumber", "2.5.29.21": "cRLReason",
    "2.5.29.24": "invalidityDate", "2.5.29.27": "deltaCRLIndicator", "2.5.29.28": "issuingDistributionPoint",
    "2.5.29.29": "certificateIssuer", "2.5.29.30": "nameConstraints", "2.5.29.31": "cRLDistributionPoints",
    "2.5.29.32": "certificatePolicies", "2.5.29.33": "policyMappings", "2.5.29.35": "authorityKeyIdentifier",
    "2.5.29.36": "policyConstraints", "2.5.29.37": "extendedKeyUsage", "2.5.29.46": "freshestCRL",
    "2.5.29.54": "inhibitAnyPolicy", "1.3.6.1.5.5.7.1.1": "authorityInfoAccess",
    "1.3.6.1.5.5.7.1.11": "subjectInfoAccess", "1.3.6.1.5.5.7.1.24": "TLSFeature",
    "1.3.6.1.5.5.7.1.12": "logotype", "1.3.6.1.5.5.7.48.1.5": "OCSPNoCheck",
    "1.3.6.1.4.1.11129.2.4.2": "signedCertificateTimestampList", "1.3.6.1.4.1.11129.2.4.3": "ctPoison",
}


def _name(oid: str) -> str:
    """The name of the extension `oid` ("subjectAltName", "keyUsage"), "" when it is none we know."""
    return _NAMES.get(oid, "")


def _walk(cert: Any) -> tuple[bytes, list[tuple[str, int, int]], bool]:
    """`cert`'s tbsCertificate DER, its extensions' (OID, start, end) in it, at most MAX_EXTENSIONS, and whether
    that is all of them (False past MAX_EXTENSIONS, or when the DER does not walk: cryptography loaded it, so it
    does)."""
    tbs = bytes(cert.tbs_certificate_bytes)
    found: list[tuple[str, int, int]] = []
    try:
        field = next((pos for tag, pos, _ in _fields(tbs) if tag == 0xA3), None)
        if field is None:
            return tbs, found, True
        _, inner, _ = der.tlv(tbs, field)
        _, pos, end = der.tlv(tbs, inner)
        while pos < end and len(found) < MAX_EXTENSIONS:
            _, oid_at, element_end = der.tlv(tbs, pos)
            tag, oid_start, oid_end = der.tlv(tbs, oid_at)
            if tag == 0x06:
                found.append((der.oid_text(tbs[oid_start:oid_end]), pos, element_end))
            pos = element_end
    except ValueError:
        return tbs, found, False
    return tbs, found, pos >= end


def _fields(tbs: bytes) -> Iterator[tuple[int, int, int]]:
    """(tag, start, end) of each field of the tbsCertificate `tbs`; ValueError when malformed."""
    _, pos, end = der.tlv(tbs, 0)
    while pos < end:
        tag, _, element_end = der.tlv(tbs, pos)
        yield tag, pos, element_end
        pos = element_end


def _alone(cert: Any, tbs: bytes, start: int, end: int) -> Any:
    """A copy of `cert` whose extensions are only the one at tbs[start:end], loaded (not verified: the signature
    is the original's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    parts = [tbs[pos:element_end] for tag, pos, element_end in _fields(tbs) if tag != 0xA3]
    parts.append(der.encode(0xA3, der.encode(0x30, tbs[start:end])))  # [3] is the last field of a tbsCertificate
    whole = bytes(cert.public_bytes(serialization.Encoding.DER))
    _, cert_at, cert_end = der.tlv(whole, 0)
    _, _, tbs_end = der.tlv(whole, cert_at)
    copy = der.encode(0x30, der.encode(0x30, b"".join(parts)) + whole[tbs_end:cert_end])
    with warnings.catch_warnings():  # what the original warned of when it was loaded (a negative serial...)
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(copy)
