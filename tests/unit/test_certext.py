"""An extension that does not decode is named (certext.culprit), not taken for the subjectAltName: cryptography
decodes every extension at once when `.extensions` is read and says not which. Certificates built by the test PKI,
their DER edited and signed again (pki.resigned); on cryptography 38 (Debian 12) and the newest alike."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from support import pki

from certbot_smtp_dist._internal import certext, der, diagnose, relaycert

KEY_USAGE = b"\x06\x03\x55\x1d\x0f\x01\x01\xff\x04\x04\x03"  # keyUsage, critical, extnValue holding a BIT STRING
KEY_USAGE_BROKEN = KEY_USAGE[:-1] + b"\x04"  # ... holding an OCTET STRING: RFC 5280 §4.2.1.3 wants a BIT STRING
EXT_KEY_USAGE_OID, KEY_USAGE_OID = b"\x06\x03\x55\x1d\x25", b"\x06\x03\x55\x1d\x0f"
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca("certext CA")


def edited_leaf(ca: pki.Issued, old: bytes, new: bytes) -> tuple[bytes, x509.Certificate]:
    leaf = pki.issue(ca, sans=("relay.example", "mx.example")).cert.public_bytes(serialization.Encoding.DER)
    changed = pki.resigned(leaf, ca.key, old, new)
    return changed, x509.load_der_x509_certificate(changed)


def test_a_broken_key_usage_is_named_and_the_san_still_read(ca: pki.Issued) -> None:
    _, cert = edited_leaf(ca, KEY_USAGE, KEY_USAGE_BROKEN)
    with pytest.raises(ValueError):
        cert.extensions  # noqa: B018 (the premise: cryptography refuses them all, naming none)
    assert certext.culprit(cert) == certext.BadExtension("2.5.29.15", "keyUsage", "ValueError")
    assert diagnose.undecodable(cert) == ("the keyUsage extension (2.5.29.15) does not decode (ValueError)",)
    assert diagnose.subject_alt_names(cert) == ("relay.example", "mx.example")


def test_an_extension_twice_is_named(ca: pki.Issued) -> None:
    """extKeyUsage's OID made keyUsage's: keyUsage twice (RFC 5280 §4.2); the SAN is sound."""
    _, cert = edited_leaf(ca, EXT_KEY_USAGE_OID, KEY_USAGE_OID)
    said = diagnose.undecodable(cert)
    assert said == (f"the keyUsage extension (2.5.29.15) does not decode ({certext.DUPLICATE})",), said
    assert diagnose.subject_alt_names(cert) == ("relay.example", "mx.example")


def test_a_broken_san_is_still_the_san(ca: pki.Issued) -> None:
    san = b"\x82\x0drelay.example"
    _, cert = edited_leaf(ca, san, b"\x89" + san[1:])  # GeneralName has no choice [9]
    assert diagnose.undecodable(cert)[0].startswith("the subjectAltName extension (2.5.29.17) does not decode (")
    with pytest.raises(ValueError, match="the subjectAltName does not decode"):
        diagnose.subject_alt_names(cert)


def test_past_the_bound_it_is_an_extension_never_the_san(ca: pki.Issued) -> None:
    """A certificate of more extensions than certext.MAX_EXTENSIONS, the broken one last: not looked for (bounded
    work), and what is said claims no particular extension."""
    key = pki.new_key()
    builder = (x509.CertificateBuilder().subject_name(ca.cert.subject).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("relay.example")]), critical=False))
    for n in range(certext.MAX_EXTENSIONS):
        oid = x509.ObjectIdentifier(f"1.3.6.1.4.1.55555.{n}")
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, b"\x05\x00"), critical=False)
    builder = builder.add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                                    critical=True)
    built = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    cert = x509.load_der_x509_certificate(pki.resigned(built, ca.key, KEY_USAGE, KEY_USAGE_BROKEN))
    assert diagnose.undecodable(cert) == ("an extension does not decode (ValueError)",)
    assert diagnose.subject_alt_names(cert) == ("relay.example",)
    leaf = cert.public_bytes(serialization.Encoding.DER)  # the same, served by a relay: check's words for it
    found = relaycert.diagnose(leaf, [leaf], [], "relay.example", False, NOW)
    assert found is not None and found.problems[0] == ("one of the certificate's extensions does not decode "
                                                       "(ValueError): the relay must install a well-formed "
                                                       "certificate"), found.problems


def test_a_san_past_the_bound_is_not_called_absent(ca: pki.Issued) -> None:
    """The broken extension first, the subjectAltName past certext.MAX_EXTENSIONS: the names were not read, and
    check says so; it used to say the host name was not among the certificate's names, "()"."""
    key = pki.new_key()
    builder = (x509.CertificateBuilder().subject_name(ca.cert.subject).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
               .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                              critical=True))
    for n in range(certext.MAX_EXTENSIONS):
        oid = x509.ObjectIdentifier(f"1.3.6.1.4.1.55555.{n}")
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, b"\x05\x00"), critical=False)
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("relay.example")]), critical=False)
    built = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    leaf = pki.resigned(built, ca.key, KEY_USAGE, KEY_USAGE_BROKEN)
    cert = x509.load_der_x509_certificate(leaf)
    with pytest.raises(certext.Unreached):
        diagnose.subject_alt_names(cert)
    found = relaycert.diagnose(leaf, [leaf], [], "relay.example", False, NOW)
    assert found is not None and found.sans == () and relaycert.UNREACHED_SANS in found.problems, found.problems
    assert not any(p.startswith("host name") or p == relaycert.UNDECODED_SANS for p in found.problems), found.problems


def test_the_relay_certificate_names_the_extension_not_the_san(ca: pki.Issued) -> None:
    leaf, _ = edited_leaf(ca, KEY_USAGE, KEY_USAGE_BROKEN)
    found = relaycert.diagnose(leaf, [leaf], [], "relay.example", False, NOW)
    assert found is not None and found.host_matches and found.sans == ("relay.example", "mx.example")
    assert found.problems[0] == ("the certificate's keyUsage extension (2.5.29.15) does not decode (ValueError): "
                                 "the relay must install a well-formed certificate"), found.problems
    assert not any("subjectAltName" in p for p in found.problems), found.problems


@pytest.mark.parametrize(("octets", "dotted"), [
    (b"\x55\x1d\x11", "2.5.29.17"), (b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b", "1.2.840.113549.1.1.11"),
    (b"\x88\x37\x03", "2.999.3"), (b"\x00", "0.0")])
def test_oid_text_reads_x690(octets: bytes, dotted: str) -> None:
    assert der.oid_text(octets) == dotted == x509.ObjectIdentifier(dotted).dotted_string


@pytest.mark.parametrize("octets", [b"", b"\x86", b"\x80\x01", b"\xff" * 40 + b"\x01"])
def test_oid_text_refuses_what_is_malformed(octets: bytes) -> None:
    with pytest.raises(ValueError):
        der.oid_text(octets)


def test_the_extension_names_are_the_ones_cryptography_uses_where_it_has_one() -> None:
    """certext names extensions from a table of its own (cryptography's names are a private attribute); a typo
    there would misname the culprit. Where the installed cryptography has a name, it is the same one."""
    from cryptography import x509

    theirs = {oid: str(getattr(x509.ObjectIdentifier(oid), "_name", "Unknown OID")) for oid in certext._NAMES}
    known = {oid: name for oid, name in theirs.items() if name != "Unknown OID"}
    assert len(known) >= 20 and all(certext._NAMES[oid] == name for oid, name in known.items()), known
    assert certext._name("1.2.3.4") == ""
