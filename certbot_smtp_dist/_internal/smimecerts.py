"""Validate a target's `smime_*` keys at config time into a `SmimePolicy`: certificates, signer key, cipher."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from certbot_smtp_dist._internal import diagnose, files, ownership, pem
from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist.model import SmimePolicy

SMIME_KEYS = ("smime_sign_cert", "smime_sign_key", "smime_encrypt_to", "smime_encryption")
MAX_RECIPIENTS = 20
MIN_RSA_BITS = 2048  # NIST SP 800-131A: RSA below 2048 bits is disallowed for key transport and signatures


class Checker(Protocol):
    """What config.py's target checker offers: typed reads of the merged table, and problems keyed by key."""

    base_dir: Path
    from_defaults: frozenset[str]

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any: ...

    def problem(self, key: str | None, text: str) -> None: ...

    def warning(self, key: str | None, text: str) -> None: ...


def policy(checker: Checker, now: datetime | None = None) -> SmimePolicy | None:
    """The target's S/MIME policy, None when it has no `smime_*` key; every problem reported through `checker`."""
    now = now or datetime.now(timezone.utc)
    cert_value = checker.get("smime_sign_cert", str)
    key_value = checker.get("smime_sign_key", str)
    recipients_value = checker.get("smime_encrypt_to", list)
    cipher_value = checker.get("smime_encryption", str)
    if recipients_value is None and cipher_value is not None and "smime_encryption" not in checker.from_defaults:
        checker.warning("smime_encryption", "is ignored: no smime_encrypt_to")  # [defaults] serve other targets
    if cert_value is None and key_value is None and recipients_value is None:
        return None
    out = SmimePolicy()
    if cert_value is not None or key_value is not None:
        out = _signer(checker, cert_value, key_value, now, out)
    if recipients_value is not None:
        out = _recipients(checker, recipients_value, cipher_value, now, out)
    return out


def _path(checker: Checker, value: str) -> Path:
    return Path(value) if os.path.isabs(value) else checker.base_dir / value


def _read(checker: Checker, key: str, path: Path) -> bytes | None:
    try:
        return files.read_regular(path)[0]
    except OSError as exc:
        checker.problem(key, f"cannot read {path}: {exc.strerror or exc}")
    except ValueError:
        checker.problem(key, f"{path!r} is not a valid path")
    return None


def _certificates(checker: Checker, key: str, path: Path) -> list[Any]:
    from cryptography import x509

    data = _read(checker, key, path)
    if data is None:
        return []
    blocks = [b for b in pem.blocks(data) if b.label == "CERTIFICATE"]
    if not blocks:
        checker.problem(key, f"{path} holds no PEM certificate")
        return []
    try:
        return [x509.load_pem_x509_certificate(b.encode()) for b in blocks]
    except Exception as exc:  # ValueError, or UnsupportedAlgorithm: worded here, never echoed
        checker.problem(key, f"{path} holds a certificate that does not parse ({type(exc).__name__})")
        return []


def _usable(checker: Checker, key: str, path: Path, cert: Any, now: datetime, usage: str) -> bool:
    """Within validity; key usage allows `usage` and the EKU (when there is one) email protection (RFC 8550 §4.4)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    before, after = diagnose.validity(cert)
    ok = True
    if now > after:
        checker.problem(key, f"{path}: the certificate expired on {after:%Y-%m-%d %H:%M} UTC")
        ok = False
    elif now < before:
        checker.problem(key, f"{path}: the certificate is not valid before {before:%Y-%m-%d %H:%M} UTC")
        ok = False
    try:
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not getattr(key_usage, usage):
            checker.problem(key, f"{path}: the certificate's key usage does not allow {usage.replace('_', ' ')}")
            ok = False
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        wanted = {ExtendedKeyUsageOID.EMAIL_PROTECTION, x509.ObjectIdentifier("2.5.29.37.0")}  # or anyExtendedKeyUsage
        if not wanted & set(eku):
            checker.problem(key, f"{path}: the certificate's extended key usage does not include email protection")
            ok = False
    except x509.ExtensionNotFound:
        pass
    return ok


def _signer(checker: Checker, cert_value: str | None, key_value: str | None, now: datetime,
            out: SmimePolicy) -> SmimePolicy:
    """The signer's certificate (then its chain) and its key file: RSA or EC, matching, allowed to sign."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    if cert_value is None or key_value is None:
        missing = "smime_sign_cert" if cert_value is None else "smime_sign_key"
        checker.problem(missing, "is required with smime_sign_key and smime_sign_cert: signing needs both")
        return out
    cert_path, key_path = _path(checker, cert_value), _path(checker, key_value)
    certs = _certificates(checker, "smime_sign_cert", cert_path)
    key = _signer_key(checker, key_path)
    if not certs or key is None:
        return out
    signer = certs[0]
    if not _usable(checker, "smime_sign_cert", cert_path, signer, now, "digital_signature"):
        return out
    if not isinstance(signer.public_key(), (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        checker.problem("smime_sign_cert", f"{cert_path}: the certificate's key is {_kind(signer.public_key())}; "
                                           "S/MIME signing supports RSA and EC keys")
        return out
    if _short_rsa(checker, "smime_sign_cert", cert_path, signer.public_key()):
        return out
    if diagnose.spki(key.public_key()) != diagnose.spki(signer.public_key()):
        checker.problem("smime_sign_key", f"{key_path} is not the key of the certificate in {cert_path}")
        return out
    chain = tuple(c.public_bytes(Encoding.PEM) for c in certs)
    return SmimePolicy(sign_cert=cert_path, sign_key=key_path, signer_chain_pem=chain)


def _signer_key(checker: Checker, path: Path) -> Any:
    """The key file's one unencrypted private key; warned about as the lineage's privkey is when exposed."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        status = None
    data = _read(checker, "smime_sign_key", path)
    if data is None or status is None:
        return None
    for problem in files.exposure(path, status, os.geteuid(), "S/MIME signer key file"):
        checker.warning("smime_sign_key", problem)
    keys = [b for b in pem.blocks(data) if b.is_private_key]
    if len(keys) != 1 or keys[0].label == "ENCRYPTED PRIVATE KEY":
        checker.problem("smime_sign_key", f"{path} must hold exactly one unencrypted PEM private key")
        return None
    from certbot_smtp_dist._internal import cms  # only for a target with smime_* keys

    try:
        return cms.load_private_key(keys[0].encode())
    except Exception as exc:  # ValueError, TypeError, UnsupportedAlgorithm: worded here, never echoed
        checker.problem("smime_sign_key", f"{path} holds a private key that does not parse ({type(exc).__name__})")
        return None


def _recipients(checker: Checker, values: Sequence[Any], cipher_value: str | None, now: datetime,
                out: SmimePolicy) -> SmimePolicy:
    """Each recipient certificate: valid now, an RSA key (key transport, RFC 8551 §2.3), allowed to encipher."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    from certbot_smtp_dist._internal import cms

    key = "smime_encrypt_to"
    if not values:
        checker.problem(key, "needs at least one recipient certificate file")
    if len(values) > MAX_RECIPIENTS:
        checker.problem(key, f"has {len(values)} certificates; at most {MAX_RECIPIENTS}")
        return out
    pems: dict[str, tuple[bytes, str, Path]] = {}
    for value in values:
        if not isinstance(value, str) or not value:
            checker.problem(key, "every entry must be the path of a PEM certificate file")
            continue
        path = _path(checker, value)
        untrusted = ownership.untrusted_input(path, "recipient certificate")
        if untrusted is not None:  # whoever can swap it chooses who can read the key
            checker.problem(key, untrusted)
            continue
        certs = _certificates(checker, key, path)
        if not certs or not _usable(checker, key, path, certs[0], now, "key_encipherment"):
            continue
        if diagnose.is_ca(certs[0]):  # the CA's file named by mistake: its key holder, not the person, could decrypt
            checker.problem(key, f"{path} is a CA certificate (basicConstraints cA, RFC 5280 §4.2.1.9), not a "
                                 "recipient's own")
            continue
        if not isinstance(certs[0].public_key(), rsa.RSAPublicKey):
            checker.problem(key, f"{path}: the certificate's key is {_kind(certs[0].public_key())}; S/MIME "
                                 "encryption supports RSA recipient certificates only")
            continue
        if _short_rsa(checker, key, path, certs[0].public_key()):
            continue
        # The subject is shown in the warnings: certificate text never brings a control character into a log line.
        pems[certs[0].fingerprint(hashes.SHA256()).hex()] = (
            certs[0].public_bytes(Encoding.PEM), printable(certs[0].subject.rfc4514_string())[:200], path)
    cipher = cms.Cipher.AES256_CBC
    try:
        cipher = cms.Cipher(cipher_value or cms.Cipher.AES256_CBC.value)
    except ValueError:
        checker.problem("smime_encryption", f"must be one of {', '.join(c.value for c in cms.Cipher)}, "
                                            f"not {cipher_value!r}")
    if cms.envelope_backend(cipher) is None:
        checker.problem("smime_encryption", f"{cipher.value} needs the `openssl` command of OpenSSL 3 or later "
                                            "(cryptography builds AES-256-CBC envelopes only, and only in recent "
                                            "releases); install openssl, or name it by its absolute path in "
                                            f"${cms.OPENSSL_ENV}")
    return SmimePolicy(out.sign_cert, out.sign_key, out.signer_chain_pem,
                       encrypt_to=tuple(p for _, _, p in pems.values()),
                       recipients_pem=tuple(pem_ for pem_, _, _ in pems.values()),
                       recipient_fingerprints=tuple(pems), recipient_names=tuple(n for _, n, _ in pems.values()),
                       encryption=cipher.value)


def _short_rsa(checker: Checker, key: str, path: Path, public_key: Any) -> bool:
    """Whether `public_key` is RSA below MIN_RSA_BITS (reported): what it protects is no stronger than it."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
        checker.problem(key, f"{path}: the certificate has a {public_key.key_size}-bit RSA key; at least "
                             f"{MIN_RSA_BITS} bits")
        return True
    return False


def _kind(public_key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC ({public_key.curve.name})"
    kinds = ((rsa.RSAPublicKey, "RSA"), (ed25519.Ed25519PublicKey, "Ed25519"), (ed448.Ed448PublicKey, "Ed448"),
             (dsa.DSAPublicKey, "DSA"))
    return next((name for kind, name in kinds if isinstance(public_key, kind)), type(public_key).__name__)
