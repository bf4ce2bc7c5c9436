"""Self-tests of the test PKI helpers (tests/support/pki.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtensionOID, NameOID
from support.pki import (
    Issued,
    KeyType,
    LineageFile,
    RelayPKI,
    fingerprint,
    issue,
    make_ca,
    not_after_utc,
    utcnow,
    write_lineage,
)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def signed_by(cert: x509.Certificate, issuer: x509.Certificate | PublicKey) -> bool:
    """Signature check that works on cryptography 38 (no verify_directly_issued_by)."""
    public_key = issuer.public_key() if isinstance(issuer, x509.Certificate) else issuer
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            public_key.verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
            )
        else:
            assert isinstance(public_key, rsa.RSAPublicKey)
            assert cert.signature_hash_algorithm is not None
            public_key.verify(
                cert.signature,
                cert.tbs_certificate_bytes,
                padding.PKCS1v15(),
                cert.signature_hash_algorithm,
            )
    except InvalidSignature:
        return False
    return True


def same_key(cert: x509.Certificate, key_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(ext, x509.SubjectAlternativeName)
    return [str(name.value) for name in ext]


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_ca_and_issue(key_type: KeyType) -> None:
    ca = make_ca("Test CA", key_type=key_type)
    leaf = issue(ca, sans=("a.example",), ip_sans=("127.0.0.1",), key_type=key_type)
    assert isinstance(leaf, Issued)
    assert signed_by(leaf.cert, ca.cert) and signed_by(ca.cert, ca.cert)
    assert leaf.cert.issuer == ca.cert.subject
    assert leaf.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.example"
    assert sans(leaf.cert) == ["a.example", "127.0.0.1"]
    assert x509.load_pem_x509_certificate(leaf.cert_pem()) == leaf.cert
    assert leaf.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert same_key(leaf.cert, leaf.key_pem())
    assert not_after_utc(leaf.cert) > utcnow()


def test_relay_certs(relay_pki: RelayPKI) -> None:
    assert relay_pki.ca_file.read_bytes() == relay_pki.ca.cert_pem()
    assert sans(relay_pki.valid.issued.cert) == ["localhost", "127.0.0.1", "::1"]
    assert sans(relay_pki.wrong_host.issued.cert) == ["wrong.example.net"]
    assert not_after_utc(relay_pki.expired.issued.cert) < utcnow()
    for cert in (relay_pki.valid, relay_pki.expired, relay_pki.wrong_host):
        assert signed_by(cert.issued.cert, relay_pki.ca.cert)
        assert same_key(cert.issued.cert, cert.key_file.read_bytes())
        assert stat.S_IMODE(cert.key_file.stat().st_mode) == 0o600


def test_lineage_layout(tmp_lineage_dir: Path) -> None:
    lineage = write_lineage(tmp_lineage_dir)
    leaf = x509.load_pem_x509_certificate(lineage.cert.read_bytes())
    chain = x509.load_pem_x509_certificate(lineage.chain.read_bytes())
    assert fingerprint(leaf) == lineage.leaf.fingerprint
    assert fingerprint(chain) == lineage.intermediate.fingerprint
    assert lineage.fullchain.read_bytes() == lineage.cert.read_bytes() + lineage.chain.read_bytes()
    assert sans(leaf) == ["test.example.com", "www.test.example.com"]
    assert signed_by(leaf, chain) and signed_by(chain, lineage.root.cert)
    assert same_key(leaf, lineage.privkey.read_bytes())
    assert stat.S_IMODE(lineage.privkey.stat().st_mode) == 0o600
    assert lineage.root_file.read_bytes() == lineage.root.cert_pem()
    assert not lineage.root_file.is_relative_to(lineage.live_dir)


def test_lineage_archive_symlinks(tmp_lineage_dir: Path) -> None:
    lineage = write_lineage(tmp_lineage_dir, archive_symlinks=True)
    for path in (lineage.cert, lineage.chain, lineage.fullchain, lineage.privkey):
        assert path.is_symlink()
        assert "archive" in str(path.resolve())
    assert same_key(lineage.leaf.cert, lineage.privkey.read_bytes())
    assert stat.S_IMODE(lineage.privkey.resolve().stat().st_mode) == 0o600


def test_lineage_expired(tmp_lineage_dir: Path) -> None:
    lineage = write_lineage(tmp_lineage_dir, expired=True)
    leaf = x509.load_pem_x509_certificate(lineage.cert.read_bytes())
    assert not_after_utc(leaf) < utcnow()


def test_lineage_key_mismatch(tmp_lineage_dir: Path) -> None:
    lineage = write_lineage(tmp_lineage_dir, key_mismatch=True)
    assert not same_key(lineage.leaf.cert, lineage.privkey.read_bytes())
    assert lineage.key is not lineage.leaf.key


def test_lineage_bad_chain_signature(tmp_lineage_dir: Path) -> None:
    lineage = write_lineage(tmp_lineage_dir, bad_chain_signature=True)
    leaf = x509.load_pem_x509_certificate(lineage.cert.read_bytes())
    chain = x509.load_pem_x509_certificate(lineage.chain.read_bytes())
    assert leaf.issuer == chain.subject  # names match...
    assert not signed_by(leaf, chain)  # ...but the intermediate did not sign it
    impostor = lineage.signer.key.public_key()
    assert signed_by(leaf, impostor)  # the impostor key (same subject name) did
    assert same_key(leaf, lineage.privkey.read_bytes())


@pytest.mark.parametrize("name", ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"])
def test_lineage_garbage(tmp_lineage_dir: Path, name: LineageFile) -> None:
    lineage = write_lineage(tmp_lineage_dir, garbage=[name])
    data = (lineage.live_dir / name).read_bytes()
    assert data.startswith(b"-----BEGIN ")
    with pytest.raises(ValueError):
        if name == "privkey.pem":
            serialization.load_pem_private_key(data, password=None)
        else:
            x509.load_pem_x509_certificate(data)
