"""The building blocks of chain diagnosis: signature checks on both cryptography stacks, and OpenSSL's subject hash.

The signature checks run through the version-dependent path (`verify`: verify_directly_issued_by on cryptography
40+, the public key directly on Debian 12's 38) and through the direct one (`verify_with_key`) on every stack, so
the code Debian runs is exercised in the venv too.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from support import pki

from certbot_smtp_dist._internal import anchors, der, pem, signatures

KEY_TYPES: tuple[pki.KeyType, ...] = ("rsa", "ec", "ed25519")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_signature_of_the_issuer_verifies(key_type: pki.KeyType) -> None:
    ca = pki.make_ca(f"{key_type} CA", key_type=key_type)
    leaf = pki.issue(ca, sans=["a.example"])
    signatures.verify(leaf.cert, ca.cert)
    signatures.verify_with_key(leaf.cert, ca.cert.public_key())
    assert signatures.issued(leaf.cert, ca.cert) and signatures.self_signed(ca.cert)
    assert not signatures.self_signed(leaf.cert)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_signature_of_an_impostor_does_not(key_type: pki.KeyType) -> None:
    """Same name, other key: what a forged or stale intermediate looks like."""
    ca = pki.make_ca("Same Name", key_type=key_type)
    impostor = pki.make_ca("Same Name", key_type=key_type)
    leaf = pki.issue(ca, sans=["a.example"])
    with pytest.raises(signatures.SignatureMismatch):
        signatures.verify(leaf.cert, impostor.cert)
    with pytest.raises(InvalidSignature):
        signatures.verify_with_key(leaf.cert, impostor.cert.public_key())
    assert not signatures.issued(leaf.cert, impostor.cert)


def test_a_key_of_another_type_is_a_mismatch_not_a_crash() -> None:
    ca = pki.make_ca("EC CA", key_type="ec")
    other = pki.make_ca("EC CA", key_type="rsa")
    leaf = pki.issue(ca, sans=["a.example"])
    assert not signatures.issued(leaf.cert, other.cert)


def _name(*entries: tuple[int, bytes]) -> bytes:
    """A Name (DER) of CN entries, one RDN each, with the given string tag and raw value bytes."""
    cn = bytes.fromhex("0603550403")
    rdns = [der.encode(0x31, der.encode(0x30, cn + der.encode(tag, value))) for tag, value in entries]
    return der.encode(0x30, b"".join(rdns))


def test_canonical_name_folds_case_space_and_string_type() -> None:
    """OpenSSL's x509_name_canon: as UTF8String, ASCII lowercased, outer space gone, inner runs one space."""
    printable = _name((0x13, b"  Test \t ACME   Root  "))
    utf8 = _name((0x0C, b"test acme root"))
    bmp = _name((0x1E, "TEST ACME ROOT".encode("utf-16-be")))
    assert anchors.canonical(printable) == anchors.canonical(utf8) == anchors.canonical(bmp) != b""
    assert anchors.canonical(_name((0x0C, "Ä".encode()))) != anchors.canonical(_name((0x0C, "ä".encode())))
    assert anchors.canonical(b"\x30\x05\x31") == b""  # malformed: matches nothing


@pytest.mark.filterwarnings("ignore:Parsed a serial number")  # an old root in the store; not ours to judge
def test_subject_hash_matches_the_system_store() -> None:
    """Every hashed link update-ca-certificates wrote is named by the hash computed here (the real oracle)."""
    store = Path("/etc/ssl/certs")
    links = sorted(p for p in store.glob("*.0") if re.fullmatch(r"[0-9a-f]{8}\.0", p.name)) if store.is_dir() else []
    if not links:
        pytest.skip("no OpenSSL hashed directory at /etc/ssl/certs")
    for link in links[:400]:
        blob = next(b.der for b in pem.blocks(link.read_bytes()) if b.label == pem.CERTIFICATE)
        subject = anchors.subject_der(blob)
        assert subject == x509.load_der_x509_certificate(blob).subject.public_bytes()
        digest = hashlib.sha1(anchors.canonical(subject)).digest()
        assert f"{int.from_bytes(digest[:4], 'little'):08x}" == link.name[:8], link


def test_store_candidates_by_hash_and_by_bundle(tmp_path: Path) -> None:
    ca = pki.make_ca("  Mixed   Case CA ")
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "mixed case ca")]).public_bytes()
    digest = hashlib.sha1(anchors.canonical(ca.cert.subject.public_bytes())).digest()
    capath = tmp_path / "capath"
    capath.mkdir()
    (capath / f"{int.from_bytes(digest[:4], 'little'):08x}.0").write_bytes(ca.cert_pem())
    assert list(anchors.Store("t", (capath,), None).candidates(name)) == [ca.cert]
    bundle = pki.write_pem(tmp_path / "bundle.pem", pki.make_ca("Other"), ca)
    assert list(anchors.Store("t", (), bundle).candidates(name)) == [ca.cert]
    # Not thorough (the deploy path): a miss in a hashed directory is not searched for again in the bundle...
    other = tmp_path / "other"
    other.mkdir()
    (other / "0badc0de.0").write_bytes(pki.make_ca("Unrelated").cert_pem())
    assert list(anchors.Store("t", (other,), bundle, thorough=False).candidates(name)) == []
    assert list(anchors.Store("t", (other,), bundle, thorough=True).candidates(name)) == [ca.cert]
    # ...but a directory of bundles only (Fedora's /etc/pki/tls/certs) answers nothing: the bundle does.
    bundles_only = tmp_path / "pki-tls-certs"
    bundles_only.mkdir()
    (bundles_only / "ca-bundle.crt").write_bytes(bundle.read_bytes())
    assert list(anchors.Store("t", (bundles_only,), bundle, thorough=False).candidates(name)) == [ca.cert]


def _openssl_pss_chain(directory: Path, digest: str, salt: str) -> tuple[x509.Certificate, x509.Certificate]:
    """An RSA CA and a leaf it signed with RSASSA-PSS (RFC 4055), made by the openssl command: cryptography 38
    (Debian 12) cannot sign with PSS itself."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", f"rsa_pss_saltlen:{salt}", f"-{digest}"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
        "-subj", "/CN=PSS CA", *pss)
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=a.example")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "7", "-out",
        "leaf.pem", "-days", "20", *pss)
    return (x509.load_pem_x509_certificate((directory / "leaf.pem").read_bytes()),
            x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()))


@pytest.mark.parametrize(("digest", "salt"), [("sha256", "32"), ("sha384", "20"), ("sha256", "digest")])
def test_an_rsassa_pss_signature_verifies_on_every_stack(tmp_path: Path, digest: str, salt: str) -> None:
    """RFC 4055 §3.1: the hash, mask generation and salt length are in the signature algorithm's parameters;
    cryptography before 41 does not read them, so they are read from the certificate."""
    leaf, ca = _openssl_pss_chain(tmp_path, digest, salt)
    signatures.verify(leaf, ca)
    signatures.verify_with_key(leaf, ca.public_key())
    ca.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, *signatures.pss_parameters(leaf))  # 38's way
    assert signatures.issued(leaf, ca) and signatures.self_signed(ca)
    impostor = pki.make_ca("PSS CA", key_type="rsa")
    assert not signatures.issued(leaf, impostor.cert)
