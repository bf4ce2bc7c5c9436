"""Whether one certificate's signature was made with another's key, on cryptography 38 (Debian 12) to today's."""

from __future__ import annotations

from typing import Any

# RFC 4055 §3.1: RSASSA-PSS carries its hash and salt length in the signature algorithm's parameters.
_RSASSA_PSS = "1.2.840.113549.1.1.10"


class SignatureMismatch(ValueError):
    """The signature does not verify with the candidate issuer's key (or cannot be checked: the reason says)."""


def verify(child: Any, parent: Any) -> None:
    """Raise SignatureMismatch unless `parent`'s public key made the signature on `child` (RFC 5280 §6.1.3 (a)(1)).

    Names are not compared here: callers do that first, and say which link broke."""
    try:
        if hasattr(child, "verify_directly_issued_by"):  # cryptography >= 40; it also compares the names
            if child.issuer != parent.subject:
                raise SignatureMismatch("the issuer name differs from the candidate's subject")
            child.verify_directly_issued_by(parent)
        else:
            verify_with_key(child, parent.public_key())
    except SignatureMismatch:
        raise
    except Exception as exc:  # InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError: all "not by this key"
        raise SignatureMismatch(_short(exc) or type(exc).__name__) from exc


def verify_with_key(child: Any, public_key: Any) -> None:
    """The signature on `child` checked with `public_key` directly: RSA (PKCS #1 v1.5 and PSS), ECDSA, Ed25519 and
    Ed448, DSA. cryptography 38 has no verify_directly_issued_by; this is its equivalent. Raises on a mismatch."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

    data, signature = child.tbs_certificate_bytes, child.signature
    if isinstance(public_key, rsa.RSAPublicKey) and child.signature_algorithm_oid.dotted_string == _RSASSA_PSS:
        params = getattr(child, "signature_algorithm_parameters", None)  # cryptography >= 41
        if isinstance(params, padding.PSS):
            public_key.verify(signature, data, params, child.signature_hash_algorithm)
        else:  # cryptography 38 knows neither the padding nor the hash of a PSS signature: read them
            public_key.verify(signature, data, *pss_parameters(child))
        return
    digest = child.signature_hash_algorithm
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), digest)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        public_key.verify(signature, data)
    elif isinstance(public_key, dsa.DSAPublicKey):
        public_key.verify(signature, data, digest)
    else:
        raise SignatureMismatch(f"a {type(public_key).__name__} cannot sign certificates")


# RFC 4055 §2.1: the one-way hash functions RSASSA-PSS parameters name (OID contents, DER).
_HASH_OIDS = {"2b0e03021a": "SHA1", "608648016503040204": "SHA224", "608648016503040201": "SHA256",
              "608648016503040202": "SHA384", "608648016503040203": "SHA512"}


def pss_parameters(cert: Any) -> tuple[Any, Any]:
    """The padding and hash of `cert`'s RSASSA-PSS signature, read from its DER (RFC 4055 §3.1): hashAlgorithm [0]
    (default SHA-1), maskGenAlgorithm [1] (MGF1, default with SHA-1), saltLength [2] (default 20). Raises
    SignatureMismatch when they cannot be read."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    der = cert.public_bytes(serialization.Encoding.DER)
    digest, mgf, salt = "SHA1", "SHA1", 20
    try:
        _, pos, _ = _element(der, 0)  # Certificate
        _, _, pos = _element(der, pos)  # tbsCertificate, skipped
        _, pos, algorithm_end = _element(der, pos)  # signatureAlgorithm
        _, _, pos = _element(der, pos)  # its OID (RSASSA-PSS)
        if pos < algorithm_end:
            _, pos, end = _element(der, pos)  # RSASSA-PSS-params
            while pos < end:
                tag, start, pos = _element(der, pos)
                if tag == 0xA0:
                    digest = _hash_name(der, start)
                elif tag == 0xA1:  # MaskGenAlgorithm: the MGF1 OID (the only one, §2.2), then its hash
                    _, inner, _ = _element(der, start)
                    mgf = _hash_name(der, _element(der, inner)[2])
                elif tag == 0xA2:
                    _, value, value_end = _element(der, start)
                    salt = int.from_bytes(der[value:value_end], "big")
    except (ValueError, KeyError) as exc:
        raise SignatureMismatch(f"unreadable RSASSA-PSS parameters ({exc})") from exc
    algorithm = {name: getattr(hashes, name) for name in _HASH_OIDS.values()}
    return padding.PSS(mgf=padding.MGF1(algorithm[mgf]()), salt_length=salt), algorithm[digest]()


def _hash_name(der: bytes, pos: int) -> str:
    """The hash an AlgorithmIdentifier at `pos` names; KeyError for one RFC 4055 does not list."""
    _, inner, _ = _element(der, pos)
    _, start, end = _element(der, inner)
    return _HASH_OIDS[der[start:end].hex()]


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `pos`; ValueError when malformed."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, first, start = der[pos], der[pos + 1], pos + 2
    length = first
    if first >= 0x80:
        count = first & 0x7F
        if not 0 < count <= 4 or start + count > len(der):
            raise ValueError("bad DER length")
        length, start = int.from_bytes(der[start:start + count], "big"), start + count
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length


def issued(child: Any, parent: Any) -> bool:
    """Whether `parent` issued `child`: names chain (RFC 5280 §6.1.3 (a)(4)) and the signature verifies."""
    if child.issuer != parent.subject:
        return False
    try:
        verify(child, parent)
    except SignatureMismatch:
        return False
    return True


def self_signed(cert: Any) -> bool:
    """A self-issued certificate whose signature its own key made: a root (RFC 5280 §3.2)."""
    return issued(cert, cert)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
