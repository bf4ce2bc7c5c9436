"""The relay-certificate refusals only OpenSSL's strict RFC 5280 checks make, and which certificate to reissue.

Python 3.13's ssl.create_default_context sets VERIFY_X509_STRICT (OpenSSL's X509_V_FLAG_X509_STRICT): a chain that
builds to a trust anchor is then refused for what RFC 5280 requires and older Pythons let pass (most often a
hand-made relay certificate without an Authority Key Identifier). Recognised by OpenSSL's verify code (the fact
ssl.SSLCertVerificationError carries), never by its text; the advice is always to mend the certificate, never to
verify less.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from certbot_smtp_dist._internal import certext

# OpenSSL's X509_V_ERR_* codes of x509_vfy.h's "Errors in case a check in X509_V_FLAG_X509_STRICT mode fails",
# stable across OpenSSL 3 (79, X509_V_ERR_INVALID_CA, is listed there too but raised without the flag: not here).
# Each: what the certificate must have instead, and the section requiring it.
STRICT_ONLY: dict[int, tuple[str, str]] = {
    78: ("the same signature algorithm inside the certificate as on it", "RFC 5280 §4.1.1.2"),
    80: ("no pathLenConstraint, as it is no CA", "RFC 5280 §4.2.1.9"),
    81: ("keyCertSign in its keyUsage, as it has a pathLenConstraint", "RFC 5280 §4.2.1.9"),
    82: ("no keyCertSign in its keyUsage, as it is no CA", "RFC 5280 §4.2.1.3"),
    83: ("a non-empty issuer name", "RFC 5280 §4.1.2.4"),
    84: ("a non-empty subject name", "RFC 5280 §4.1.2.6"),
    85: ("an Authority Key Identifier extension (every public CA writes one)", "RFC 5280 §4.2.1.1"),
    86: ("a Subject Key Identifier extension, as it is a CA", "RFC 5280 §4.2.1.2"),
    87: ("at least one name in its subjectAltName", "RFC 5280 §4.2.1.6"),
    88: ("its subjectAltName marked critical, as its subject is empty", "RFC 5280 §4.2.1.6"),
    89: ("basicConstraints marked critical, as it is a CA", "RFC 5280 §4.2.1.9"),
    90: ("its Authority Key Identifier not marked critical", "RFC 5280 §4.2.1.1"),
    91: ("its Subject Key Identifier not marked critical", "RFC 5280 §4.2.1.2"),
    92: ("a keyUsage extension, as it is a CA", "RFC 5280 §4.2.1.3"),
    93: ("version 3, as its extensions require", "RFC 5280 §4.1.2.1"),
    94: ("a named curve for its EC key, not explicit parameters", "RFC 5480 §2.1.1"),
}


def is_strict_only(verify_code: int | None) -> bool:
    """Whether OpenSSL's verify code is one only its strict RFC 5280 checks raise."""
    return verify_code in STRICT_ONLY


def hint(verify_code: int) -> str:
    """What a run's failure adds to a strict-only refusal (OpenSSL's text names the check, not the fix): what the
    relay's certificate or its CA must be reissued with, and the command that names which one."""
    wanted, section = STRICT_ONLY[verify_code]
    return (f"Python 3.13 and later verify relay certificates strictly, {section}: the relay's certificate or its "
            f"CA must be reissued with {wanted}; `certbot-smtp-dist check` names which")


def finding(verify_code: int, path: Sequence[Any], names: Callable[[Any], str]) -> str:
    """The problem and its fix for a strict-only refusal: which certificate of `path` (the relay's leaf first, then
    the issuers it sent, cryptography certificates) lacks what, when it can be seen, else the leaf or its CA; and
    that Python 3.13 and later verify so, where older Pythons accepted it. `names(cert)` shows a certificate."""
    wanted, section = STRICT_ONLY[verify_code]
    culprit = _culprit(verify_code, path)
    if culprit is None:
        which = "the relay's certificate, or a CA certificate of its chain,"
    elif culprit is path[0]:
        which = "the relay's certificate"
    else:
        which = f"the CA certificate {names(culprit)}"
    return (f"{which} must be reissued with {wanted} ({section}): Python 3.13 and later verify certificates "
            f"strictly (RFC 5280; OpenSSL verify error {verify_code}), older Pythons accepted it; verification "
            "stays on, the certificate must be mended")


def _culprit(verify_code: int, path: Sequence[Any]) -> Any | None:
    """The first certificate of `path` that lacks what `verify_code` asks, when this is one its extensions show."""
    from cryptography import x509

    def ext(cert: Any, kind: Any) -> Any:  # the Extension, or None
        try:
            return cert.extensions.get_extension_for_class(kind)
        except x509.ExtensionNotFound:
            return None

    def ca(cert: Any) -> bool:
        found = ext(cert, x509.BasicConstraints)
        return found is not None and bool(found.value.ca)

    tests: dict[int, Callable[[Any], bool]] = {
        85: lambda c: c.issuer != c.subject and ext(c, x509.AuthorityKeyIdentifier) is None,
        86: lambda c: ca(c) and ext(c, x509.SubjectKeyIdentifier) is None,
        89: lambda c: ca(c) and not ext(c, x509.BasicConstraints).critical,
        92: lambda c: ca(c) and ext(c, x509.KeyUsage) is None,
    }
    test = tests.get(verify_code)
    if test is None:
        return None
    # An extension or name that does not decode is not this check's to judge: what reading them raises
    # (certext.decode_errors: an extension twice raises DuplicateExtension, no ValueError).
    undecodable = certext.decode_errors()
    for cert in path:
        try:
            if test(cert):
                return cert
        except undecodable:
            continue
    return None
