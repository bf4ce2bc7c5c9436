"""A relay certificate refused only by OpenSSL's strict RFC 5280 checks (Python 3.13+'s default context sets
VERIFY_X509_STRICT) is explained by what it lacks, not with the generic "cannot name" advice. The refusals are
OpenSSL's own, from in-memory handshakes whose client context sets ssl.VERIFY_X509_STRICT itself, so this runs on
every Python (CI's 3.11 included); the same handshake without the flag verifies (older Pythons accept it)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from support import memtls, pki

from certbot_smtp_dist._internal import anchors, classify, relaycert, x509strict
from certbot_smtp_dist.model import Phase

NOW = dt.datetime.now(dt.timezone.utc)
HOST = "relay.test"


def _ca(name: str, *, critical_constraints: bool = True) -> pki.Issued:
    key = pki.new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=critical_constraints)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return pki.Issued(cert=cert, key=key)


def _leaf(issuer: pki.Issued, *, key_identifier: bool = True) -> pki.Issued:
    key = pki.new_key()
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
               .issuer_name(issuer.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False))
    if key_identifier:  # RFC 5280 §4.2.1.1
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    return pki.Issued(cert=builder.sign(issuer.key, hashes.SHA256()), key=key)


def _handshake(tmp_path: Path, root: pki.Issued, leaf: pki.Issued, strict: bool) -> ssl.SSLError | None:
    """The client's refusal of `leaf` in an in-memory handshake, or None if it verified."""
    pki.write_pem(tmp_path / "leaf.pem", leaf)
    pki.write_private(tmp_path / "leaf.key", leaf.key_pem())
    server = pki.server_context(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client = ssl.create_default_context(cafile=str(pki.write_pem(tmp_path / "root.pem", root)))
    client.verify_flags = (client.verify_flags | ssl.VERIFY_X509_STRICT) if strict else (
        client.verify_flags & ~ssl.VERIFY_X509_STRICT)  # the latter: as before Python 3.13
    return memtls.handshake(server, client, HOST)


def _der(issued: pki.Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


def _store(tmp_path: Path) -> Any:
    return anchors.Store("tls_ca_file", cafile=tmp_path / "root.pem")


def test_a_leaf_without_authority_key_identifier(tmp_path: Path) -> None:
    root = _ca("strict root")
    leaf = _leaf(root, key_identifier=False)
    assert _handshake(tmp_path, root, leaf, strict=False) is None  # what older Pythons accept
    refusal = _handshake(tmp_path, root, leaf, strict=True)
    assert isinstance(refusal, ssl.SSLCertVerificationError), refusal
    assert refusal.verify_code == 85 and refusal.verify_message == "Missing Authority Key Identifier"
    failure = classify.translate(refusal, Phase.TLS, connected=True)
    assert failure.verify_code == 85 and "Missing Authority Key Identifier" in failure.detail
    # The run's own failure (deploy's output, the journal) says what mends it and which command names the culprit.
    assert "must be reissued with an Authority Key Identifier" in failure.detail, failure.detail
    assert "RFC 5280 §4.2.1.1" in failure.detail and "`certbot-smtp-dist check` names which" in failure.detail

    found = relaycert.diagnose(_der(leaf), [], [_store(tmp_path)], HOST, False, NOW, failure.verify_code)
    assert found is not None and len(found.problems) == 1, found
    said = found.problems[0]
    assert said.startswith("the relay's certificate must be reissued with an Authority Key Identifier"), said
    assert "RFC 5280 §4.2.1.1" in said and "Python 3.13" in said and "older Pythons accepted it" in said, said
    assert "tls_skip_verify" not in said and "cannot name" not in said, said
    # Without OpenSSL's reason (what check had before): the generic advice.
    before = relaycert.diagnose(_der(leaf), [], [_store(tmp_path)], HOST, False, NOW)
    assert before is not None and "cannot name" in before.problems[0], before


def test_a_ca_whose_basic_constraints_are_not_critical(tmp_path: Path) -> None:
    root = _ca("strict lax root", critical_constraints=False)
    leaf = _leaf(root)
    assert _handshake(tmp_path, root, leaf, strict=False) is None
    refusal = _handshake(tmp_path, root, leaf, strict=True)
    assert isinstance(refusal, ssl.SSLCertVerificationError), refusal
    assert refusal.verify_message == "Basic Constraints of CA cert not marked critical"
    code = classify.translate(refusal, Phase.TLS, connected=True).verify_code
    assert code == 89
    # The chain the relay sent names the CA (Python 3.13+ tells it); the leaf alone cannot (before 3.13).
    sent = relaycert.diagnose(_der(leaf), [_der(leaf), _der(root)], [_store(tmp_path)], HOST, False, NOW, code)
    assert sent is not None and sent.problems[0].startswith(
        "the CA certificate CN=strict lax root must be reissued with basicConstraints marked critical"), sent
    alone = relaycert.diagnose(_der(leaf), [], [_store(tmp_path)], HOST, False, NOW, code)
    assert alone is not None and alone.problems[0].startswith(
        "the relay's certificate, or a CA certificate of its chain, must be reissued with basicConstraints"), alone


def test_a_refusal_every_python_makes_gets_no_strict_hint(tmp_path: Path) -> None:
    """A leaf from a CA the client does not trust (OpenSSL's code 20), refused with and without the strict flag:
    the run's failure says what OpenSSL said, nothing about Python 3.13."""
    trusted, other = _ca("strict trusted root"), _ca("strict other root")
    leaf = _leaf(other)
    pki.write_pem(tmp_path / "leaf.pem", leaf)
    pki.write_private(tmp_path / "leaf.key", leaf.key_pem())
    server = pki.server_context(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client = ssl.create_default_context(cafile=str(pki.write_pem(tmp_path / "root.pem", trusted)))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    refusal = memtls.handshake(server, client, HOST)
    assert isinstance(refusal, ssl.SSLCertVerificationError) and refusal.verify_code == 20, refusal
    failure = classify.translate(refusal, Phase.TLS, connected=True)
    assert failure.verify_code == 20 and failure.detail.startswith("relay certificate not trusted: ")
    assert "Python 3.13" not in failure.detail and "reissued" not in failure.detail, failure.detail


@pytest.mark.parametrize("code", [10, 18, 19, 20, 21, 62, 79])  # expired, self-signed, no issuer, host...
def test_the_other_refusals_are_not_taken_for_strict_ones(code: int, tmp_path: Path) -> None:
    """Reasons every Python refuses keep their own analysis (79, invalid CA, sits in OpenSSL's strict list but
    is raised without the flag)."""
    assert not x509strict.is_strict_only(code)
    root = _ca("strict other root")
    pki.write_pem(tmp_path / "root.pem", root)
    found = relaycert.diagnose(_der(_leaf(root)), [], [_store(tmp_path)], HOST, False, NOW, code)
    assert found is not None and not any("Python 3.13" in p for p in found.problems), found


def test_a_strict_refusal_of_a_leaf_whose_extensions_do_not_decode_is_explained_not_raised(tmp_path: Path) -> None:
    """A hostile relay's leaf, issued by a trusted CA: no Authority Key Identifier, and an extension twice (RFC 5280
    §4.2; an unknown OID, which OpenSSL lets pass). OpenSSL refuses it for the missing identifier (85); reading the
    leaf's extensions raises cryptography's DuplicateExtension, no ValueError: `check` ended in a traceback."""
    root = _ca("strict twice root")
    first, second = (x509.ObjectIdentifier(f"1.3.6.1.4.1.55555.{n}") for n in (1, 2))
    built = _leaf(root, key_identifier=False)
    builder = (x509.CertificateBuilder().subject_name(built.cert.subject).issuer_name(root.cert.subject)
               .public_key(built.key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
               .add_extension(x509.UnrecognizedExtension(first, b"\x05\x00"), critical=False)
               .add_extension(x509.UnrecognizedExtension(second, b"\x05\x00"), critical=False))
    oid = b"\x06\x09\x2b\x06\x01\x04\x01\x83\xb2\x03"  # 1.3.6.1.4.1.55555. (X.690 §8.19), then the last arc
    twice = pki.resigned(builder.sign(root.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER),
                         root.key, oid + b"\x02", oid + b"\x01")
    leaf = pki.Issued(cert=x509.load_der_x509_certificate(twice), key=built.key)
    with pytest.raises(x509.DuplicateExtension):
        leaf.cert.extensions  # noqa: B018 (the premise)
    refusal = _handshake(tmp_path, root, leaf, strict=True)
    assert isinstance(refusal, ssl.SSLCertVerificationError) and refusal.verify_code == 85, refusal
    found = relaycert.diagnose(twice, [twice, _der(root)], [_store(tmp_path)], HOST, False, NOW, 85)
    assert found is not None and len(found.problems) == 2, found
    assert "(1.3.6.1.4.1.55555.1) does not decode" in found.problems[0], found
    assert found.problems[1].startswith("the relay's certificate, or a CA certificate of its chain, must be "
                                        "reissued with an Authority Key Identifier"), found
