"""The built-in payload formats (pem, pem_and_key, pkcs12, notice), registered through the same hook as extensions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from certbot_smtp_dist._internal import pem
from certbot_smtp_dist.errors import PayloadError
from certbot_smtp_dist.hookspecs import hookimpl
from certbot_smtp_dist.model import Artefact, Attachment, Payload, PayloadFormat, Secret

PASSPHRASE_TYPE = "smtp_pkcs12_passphrase"
# RFC 8555 §9.1: the media type of a PEM certificate chain.
PEM_CHAIN_TYPE = "application/pem-certificate-chain"
PEM_KEY_TYPE = "application/x-pem-file"  # no registered type for a bare PEM private key
PKCS12_TYPE = "application/pkcs12"  # RFC 7292 Appendix D
PKCS12_KDF_ROUNDS = 200_000


def build(fmt: PayloadFormat, artefact: Artefact, secret: Secret | None) -> Payload:
    """`fmt`'s attachments for `artefact`, by its declaration: the private key reaches only a format that declares
    `ships_private_key`, and the secret only one that declares a `credential_type`. Raises PayloadError."""
    shown = artefact if fmt.ships_private_key else replace(artefact, key_pem=b"")
    attachments = fmt.build(shown, secret if fmt.credential_type else None)
    if not fmt.ships_private_key and any(a.contains_private_key for a in attachments):
        raise PayloadError(f"payload format {fmt.name!r} marks an attachment as a private key but does not declare "
                           "ships_private_key")
    return Payload(fmt.name, attachments)


def _fullchain(artefact: Artefact) -> Attachment:
    return Attachment(f"{artefact.facts.name}.fullchain.pem", PEM_CHAIN_TYPE, artefact.fullchain_pem)


def build_pem(artefact: Artefact, secret: Secret | None) -> tuple[Attachment, ...]:
    return (_fullchain(artefact),)


def build_pem_and_key(artefact: Artefact, secret: Secret | None) -> tuple[Attachment, ...]:
    key = Attachment(f"{artefact.facts.name}.key.pem", PEM_KEY_TYPE, artefact.key_pem, contains_private_key=True)
    return (_fullchain(artefact), key)


def build_pkcs12(artefact: Artefact, secret: Secret | None) -> tuple[Attachment, ...]:
    """RFC 7292 bundle: key + leaf + chain, PBES2/PBKDF2-SHA256/AES-256-CBC, SHA-256 MAC (cryptography >= 38)."""
    if secret is None or not secret.reveal():
        raise PayloadError("pkcs12 needs a non-empty passphrase credential")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key: Any = serialization.load_pem_private_key(artefact.key_pem, password=None)
        # The chain as lineage.py wrote it (canonical PEM, certificates only), split by the one PEM reader; the same
        # on every cryptography version (load_pem_x509_certificates is 39+).
        certs = [x509.load_der_x509_certificate(b.der) for b in pem.blocks(artefact.fullchain_pem)
                 if b.label == pem.CERTIFICATE]
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(PKCS12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(secret.reveal().encode("utf-8"))
        )
        data = pkcs12.serialize_key_and_certificates(
            artefact.facts.name.encode("utf-8"), key, certs[0], certs[1:] or None, encryption
        )
    except (ValueError, TypeError) as exc:
        # Never echo the exception text: it is ours to word, and must not carry secrets.
        raise PayloadError(f"cannot build the PKCS#12 bundle ({type(exc).__name__})") from exc
    return (Attachment(f"{artefact.facts.name}.p12", PKCS12_TYPE, data, contains_private_key=True),)


def build_notice(artefact: Artefact, secret: Secret | None) -> tuple[Attachment, ...]:
    """Nothing attached: the body alone carries the certificate's facts (for the lists that only need to know)."""
    return ()


BUILTIN_FORMATS = (
    PayloadFormat("pem", "the full chain as PEM; the key never leaves", build_pem),
    PayloadFormat("pem_and_key", "full chain and the private key as PEM (every SMTP hop can read the key)",
                  build_pem_and_key, ships_private_key=True),
    PayloadFormat("pkcs12", "passphrase-protected PKCS#12 bundle (key + chain)", build_pkcs12,
                  credential_type=PASSPHRASE_TYPE, ships_private_key=True, key_encrypted=True),
    PayloadFormat("notice", "the certificate's facts in the body, nothing attached", build_notice),
)


class BuiltinPayloads:
    """Registers the built-in formats through the public hook."""

    @hookimpl
    def smtp_dist_payload_formats(self) -> list[PayloadFormat]:
        return list(BUILTIN_FORMATS)
