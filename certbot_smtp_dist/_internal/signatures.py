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

    data, signature, digest = child.tbs_certificate_bytes, child.signature, child.signature_hash_algorithm
    if isinstance(public_key, rsa.RSAPublicKey):
        if child.signature_algorithm_oid.dotted_string == _RSASSA_PSS:
            params = getattr(child, "signature_algorithm_parameters", None)  # cryptography >= 41
            if not isinstance(params, padding.PSS):
                raise SignatureMismatch("an RSASSA-PSS signature needs cryptography 41 or later to be checked")
            public_key.verify(signature, data, params, digest)
        else:
            public_key.verify(signature, data, padding.PKCS1v15(), digest)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        public_key.verify(signature, data)
    elif isinstance(public_key, dsa.DSAPublicKey):
        public_key.verify(signature, data, digest)
    else:
        raise SignatureMismatch(f"a {type(public_key).__name__} cannot sign certificates")


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
