"""Validate a target's `smime_*` keys at config time into a `SmimePolicy`: certificates, signer key, cipher."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from certbot_smtp_dist._internal import diagnose, files, ownership, pem
from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist.model import SmimePolicy

MAX_RECIPIENTS = 20
MAX_SIGNER_CHAIN = 10  # the signer and its issuers: a real S/MIME chain has 2 to 4
MIN_RSA_BITS = 2048  # NIST SP 800-131A: RSA below 2048 bits is disallowed for key transport and signatures


class Checker(Protocol):
    """What config.py's target checker offers: typed reads of the merged table, and problems keyed by key."""

    base_dir: Path
    from_defaults: frozenset[str]
    signers: dict[object, Any]  # shared by the targets of one load: see _signer_key and _load_signer

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


def _certificates(checker: Checker, key: str, path: Path, most: int, too_many: str) -> list[Any]:
    """The file's PEM certificates, parsed; none (reported) when there is none, or more than `most` (then
    `too_many` says why: counted before any is parsed)."""
    from cryptography import x509

    data = _read(checker, key, path)
    if data is None:
        return []
    try:
        blocks = [b for b in pem.blocks(data) if b.label == "CERTIFICATE"]
    except pem.PemError as exc:  # our wording (pem.py): which block and why, never its content
        checker.problem(key, f"{path}: {exc}")
        return []
    if not blocks:
        checker.problem(key, f"{path} holds no PEM certificate")
        return []
    if len(blocks) > most:
        checker.problem(key, f"{path} holds {len(blocks)} certificates; {too_many}")
        return []
    try:
        certs = [x509.load_pem_x509_certificate(b.encode()) for b in blocks]
    except Exception as exc:  # ValueError, or UnsupportedAlgorithm: worded here, never echoed
        checker.problem(key, f"{path} holds a certificate that does not parse ({type(exc).__name__})")
        return []
    for cert in certs:  # names and extensions decode lazily: a malformed one would raise wherever first read
        bad = diagnose.undecodable(cert)
        if bad:
            checker.problem(key, f"{path} holds a certificate that cannot be read: {'; '.join(bad)}")
            return []
    return certs


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
    certs = _certificates(checker, "smime_sign_cert", cert_path, MAX_SIGNER_CHAIN,
                          f"at most {MAX_SIGNER_CHAIN} (the signer's certificate, then its issuers)")
    key = _signer_key(checker, key_path)
    if not certs or key is None:
        return out
    leaf = certs[0]
    if not _usable(checker, "smime_sign_cert", cert_path, leaf, now, "digital_signature"):
        return out
    if not isinstance(leaf.public_key(), (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        checker.problem("smime_sign_cert", f"{cert_path}: the certificate's key is "
                                           f"{diagnose.key_text(leaf.public_key())}; S/MIME signing supports RSA "
                                           "and EC keys")
        return out
    if _short_rsa(checker, "smime_sign_cert", cert_path, leaf.public_key()):
        return out
    chain = tuple(bytes(c.public_bytes(Encoding.PEM)) for c in certs)
    signer = _load_signer(checker, key, certs, chain)
    if signer is None:
        checker.problem("smime_sign_key", f"{key_path} is not the key of the certificate in {cert_path}")
        return out
    return replace(out, sign_cert=cert_path, sign_key=key_path, signer_chain_pem=chain, signer=signer)


def _load_signer(checker: Checker, key: tuple[bytes, Any], certs: list[Any], chain: tuple[bytes, ...]) -> Any:
    """The signer value (cms.Signer: the key and the chain, checked to belong together), or None when the key is
    not the signer certificate's. One per configuration load for each key and chain, shared by the targets that
    name them (a [defaults] signer); it lives as long as the settings (the run), never in a module of ours."""
    from certbot_smtp_dist._internal import cms

    if (key[0], chain) not in checker.signers:
        try:
            checker.signers[key[0], chain] = cms.Signer(key[1], tuple(certs))
        except cms.SignerMismatch:
            checker.signers[key[0], chain] = None
    return checker.signers[key[0], chain]


def _signer_key(checker: Checker, path: Path) -> tuple[bytes, Any] | None:
    """The key file's one unencrypted private key, as read (PEM) and parsed; warned about as the lineage's privkey
    is when exposed. Parsed once per configuration load, however many targets name it (`checker.signers`):
    parsing an RSA key checks it in full, tens of milliseconds, and 500 targets may share a [defaults] signer.
    Keyed by the bytes read, so each target is checked against what its file held."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        status = None
    data = _read(checker, "smime_sign_key", path)
    if data is None or status is None:
        return None
    for problem in files.exposure(path, status, os.geteuid(), "S/MIME signer key file"):
        checker.warning("smime_sign_key", problem)
    try:
        keys = [b for b in pem.blocks(data) if b.is_private_key]
    except pem.PemError as exc:  # our wording (pem.py): which block and why, never its content
        checker.problem("smime_sign_key", f"{path}: {exc}")
        return None
    if len(keys) != 1 or keys[0].label == "ENCRYPTED PRIVATE KEY":
        checker.problem("smime_sign_key", f"{path} must hold exactly one unencrypted PEM private key")
        return None
    from certbot_smtp_dist._internal import cms  # only for a target with smime_* keys

    key_pem = keys[0].encode()
    if key_pem not in checker.signers:
        try:
            checker.signers[key_pem] = cms.load_key(key_pem)
        except cms.CmsError as exc:  # worded by cms.py: never the key, never a foreign text
            checker.signers[key_pem] = exc
    parsed = checker.signers[key_pem]
    if isinstance(parsed, cms.CmsError):
        checker.problem("smime_sign_key", f"{path} holds a private key that {parsed}")
        return None
    return key_pem, parsed


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
        certs = _certificates(checker, key, path, 1, "a file holds one recipient's certificate: give each recipient its "
                              "own file, listed in smime_encrypt_to (no chain: only the recipient's certificate is "
                              "used, and each one listed can decrypt)")
        if not certs or not _usable(checker, key, path, certs[0], now, "key_encipherment"):
            continue
        if diagnose.is_ca(certs[0]):  # the CA's file named by mistake: its key holder, not the person, could decrypt
            checker.problem(key, f"{path} is a CA certificate (basicConstraints cA, RFC 5280 §4.2.1.9), not a "
                                 "recipient's own")
            continue
        if not isinstance(certs[0].public_key(), rsa.RSAPublicKey):
            checker.problem(key, f"{path}: the certificate's key is {diagnose.key_text(certs[0].public_key())}; "
                                 "S/MIME encryption supports RSA recipient certificates only")
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
    return replace(out, encrypt_to=tuple(p for _, _, p in pems.values()),
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

