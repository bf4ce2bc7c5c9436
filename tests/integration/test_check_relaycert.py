"""`check`'s look at a refused relay certificate, against real relays on loopback: the trust anchors it finds the
issuer among (the system store's hashed directory, `tls_ca_file`), and hostile names reported as bounded text."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import ci, pki
from support.deployenv import DeployEnv, Run

from certbot_smtp_dist._internal.diagnose import SHOWN_NAME

UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def _fresh_tls_contexts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The system store is read once per process (transport.TlsContexts): these tests point SSL_CERT_DIR and
    SSL_CERT_FILE elsewhere, so each starts with no context made under another test's environment."""
    from certbot_smtp_dist._internal import transport

    monkeypatch.setattr(transport.TlsContexts, "_made", {})
    yield


def _target(port: int, ca_file: Path | None = None) -> dict[str, Any]:
    table: dict[str, Any] = {"host": "127.0.0.1", "port": port, "tls_mode": "starttls",
                             "from_address": "certbot@example.com", "to": ["pki@example.com"], "timeout": 10}
    if ca_file is not None:
        table["tls_ca_file"] = str(ca_file)
    return table


def _hashed_store(tmp_path: Path, *cas: pki.Issued | x509.Certificate) -> dict[str, str]:
    """An environment whose system store is a c_rehash directory holding `cas`, written by `openssl rehash` (the
    links update-ca-certificates makes), and no bundle at all."""
    openssl = shutil.which("openssl")
    if openssl is None:
        ci.unavailable("openssl (the command) is needed to build a hashed certificate directory")
    directory = tmp_path / "capath"
    directory.mkdir()
    for i, ca in enumerate(cas):
        pki.write_pem(directory / f"anchor-{i}.pem", ca)
    subprocess.run([openssl, "rehash", str(directory)], check=True, capture_output=True, timeout=60)
    assert any(p.is_symlink() and p.name.endswith(".0") for p in directory.iterdir())
    return {"SSL_CERT_DIR": str(directory), "SSL_CERT_FILE": str(tmp_path / "no-bundle.pem")}


def _served(tmp_path: Path, name: str, key: Any, *certs: bytes) -> ssl.SSLContext:
    """A server context presenting `certs` (DER, leaf first) with `key`."""
    chain = tmp_path / f"{name}.crt"
    chain.write_text("".join(ssl.DER_cert_to_PEM_cert(c) for c in certs))
    pki.write_private(tmp_path / f"{name}.key", pki.key_pem(key))
    return pki.server_context(chain, tmp_path / f"{name}.key")


def _leaf(issuer: pki.Issued, key: Any, *, subject: x509.Name | None = None, sans: list[x509.GeneralName] | None
          = None, usage: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,),
          key_identifier: bool = True) -> bytes:
    """A relay certificate (DER) for 127.0.0.1 by default, with the extended key usages `usage`, and an Authority
    Key Identifier unless `key_identifier` is false (as a hand-made certificate may lack it)."""
    now = dt.datetime.now(UTC)
    names = sans if sans is not None else [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    builder = (x509.CertificateBuilder()
               .subject_name(subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")]))
               .issuer_name(issuer.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=60))
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False))
    if key_identifier:  # RFC 5280 §4.2.1.1: what every CA writes, and what Python 3.13's strict verification requires
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _der(issued: pki.Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------------------- where the issuer is looked up


@pytest.mark.parametrize("trust", ["hashed directory", "tls_ca_file"])
def test_an_issuer_trusted_only_through_a_hashed_directory_is_no_missing_intermediate(
        denv: DeployEnv, relay_factory: Callable[..., Any], tmp_path: Path, trust: str) -> None:
    """The relay's CA is an anchor OpenSSL finds in a c_rehash directory (no bundle), or in tls_ca_file. The
    handshake is refused for a reason the look cannot name (a leaf for TLS clients only, RFC 5280 §4.2.1.12), not
    for a missing intermediate; a proper leaf of the same CA verifies. (SSLContext.get_ca_certs() lists a hashed
    directory's anchor only once OpenSSL has looked it up, which the refused handshake did: the look no longer
    depends on that; tests/unit/test_relaycert.py asks a hashed directory nothing has looked into.)"""
    root = pki.make_ca("relaycert-test hashed root")
    key = pki.new_key("ec")
    clients_only = relay_factory("starttls", tls_context=_served(
        tmp_path, "clients", key, _leaf(root, key, usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))))
    proper = relay_factory("starttls", tls_context=_served(tmp_path, "proper", key, _leaf(root, key)))
    ca_file = pki.write_pem(tmp_path / "root.pem", root) if trust == "tls_ca_file" else None
    env = _hashed_store(tmp_path, *([root] if ca_file is None else [pki.make_ca("relaycert-test other root")]))
    denv.write_config({"clients": _target(clients_only.port, ca_file), "proper": _target(proper.port, ca_file)})

    run = denv.run("check", "--json", extra_env=env)

    assert run.target("proper")["verdict"] == "ok", run.stdout + run.stderr  # OpenSSL trusts the CA there
    doc = run.target("clients")
    assert doc["verdict"] == "failed" and doc["error_code"] == "SMTP_TLS", doc
    cert = doc["certificate"]
    assert cert["verified"] is False and cert["host_matches"] is True, cert
    assert not any("missing intermediate" in p for p in cert["problems"]), cert["problems"]
    assert any("cannot name" in p for p in cert["problems"]), cert["problems"]


@pytest.mark.parametrize("trust", ["hashed directory", "tls_ca_file"])
def test_an_intermediate_the_relay_omits_is_still_named_missing(
        denv: DeployEnv, relay_factory: Callable[..., Any], tmp_path: Path, trust: str) -> None:
    root = pki.make_ca("relaycert-test chained root")
    intermediate = pki.issue(root, common_name="relaycert-test intermediate", is_ca=True)
    key = pki.new_key("ec")
    leaf = _leaf(intermediate, key)
    omitted = relay_factory("starttls", tls_context=_served(tmp_path, "omitted", key, leaf))
    whole = relay_factory("starttls", tls_context=_served(tmp_path, "whole", key, leaf, _der(intermediate)))
    ca_file = pki.write_pem(tmp_path / "root.pem", root) if trust == "tls_ca_file" else None
    env = _hashed_store(tmp_path, *([root] if ca_file is None else [pki.make_ca("relaycert-test other root")]))
    denv.write_config({"omitted": _target(omitted.port, ca_file), "whole": _target(whole.port, ca_file)})

    run = denv.run("check", "--json", extra_env=env)

    assert run.target("whole")["verdict"] == "ok", run.stdout + run.stderr
    problems = run.target("omitted")["certificate"]["problems"]
    assert any("missing intermediate" in p and "CN=relaycert-test intermediate" in p for p in problems), problems


def test_a_self_signed_relay_certificate_in_no_store_is_named_self_signed(
        denv: DeployEnv, relay_factory: Callable[..., Any], tmp_path: Path) -> None:
    alone = pki.make_ca("relaycert-test alone")
    relay = relay_factory("starttls", tls_context=_served(tmp_path, "alone", alone.key, _der(alone)))
    env = _hashed_store(tmp_path, pki.make_ca("relaycert-test other root"))
    denv.write_config({"alone": _target(relay.port)})

    run = denv.run("check", "--json", extra_env=env)

    problems = run.target("alone")["certificate"]["problems"]
    assert any("self-signed and not a trust anchor" in p for p in problems), problems
    assert not any("missing intermediate" in p for p in problems), problems


def _pinned(key: Any, host: str) -> bytes:
    """A self-signed relay certificate that is no CA (basicConstraints CA false): what a private relay pins."""
    now = dt.datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"relaycert-test pinned {host}")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=60))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize("trust", ["hashed directory", "tls_ca_file"])
def test_a_pinned_self_signed_relay_certificate_is_found_among_the_anchors(
        denv: DeployEnv, relay_factory: Callable[..., Any], tmp_path: Path, trust: str) -> None:
    """SSLContext.get_ca_certs() lists only CA certificates: a relay's own self-signed certificate, pinned in
    `tls_ca_file` or the system store, is an anchor OpenSSL uses but was reported "self-signed and not a trust
    anchor here". Refused for its host name only, the look names the host name only; for 127.0.0.1 it verifies."""
    key = pki.new_key("ec")
    wrong, right = _pinned(key, "wrong.example.net"), _pinned(key, "localhost")
    relays = {"wrong": relay_factory("starttls", tls_context=_served(tmp_path, "wrong", key, wrong)),
              "right": relay_factory("starttls", tls_context=_served(tmp_path, "right", key, right))}
    pinned = [x509.load_der_x509_certificate(wrong), x509.load_der_x509_certificate(right)]
    ca_file = pki.write_pem(tmp_path / "pinned.pem", *pinned) if trust == "tls_ca_file" else None
    env = _hashed_store(tmp_path, *pinned) if ca_file is None else _hashed_store(tmp_path, pki.make_ca("other"))
    denv.write_config({"wrong": _target(relays["wrong"].port, ca_file),
                       "right": {**_target(relays["right"].port, ca_file), "host": "localhost"}})

    run = denv.run("check", "--json", extra_env=env)

    assert run.target("right")["verdict"] == "ok", run.stdout + run.stderr  # OpenSSL takes it as an anchor
    problems = run.target("wrong")["certificate"]["problems"]
    assert any("not among the certificate's names" in p for p in problems), problems
    assert not any("self-signed" in p or "missing intermediate" in p for p in problems), problems


# ------------------------------------------------------------------------------- hostile names, bounded text


_edited = pki.edited  # the signature no longer matches: the look is at a refused certificate anyway


MARK = b"QQQQQQQQ"
CA_NAME = "relaycert-test hostile CA"


def _hostile(kind: str, ca: pki.Issued, key: Any) -> bytes:
    """A relay certificate (DER) for the wrong host, whose names are hostile in the way `kind` says."""
    cn = NameOID.COMMON_NAME
    wrong = [x509.DNSName("wrong.example.net")]
    if kind == "escapes":
        evil = "relay\r\nX-Injected: 1\x1b[2J\x1b]0;title\x07\x00\u202e"
        return _leaf(ca, key, subject=x509.Name([x509.NameAttribute(cn, evil[:64])]),
                     sans=[x509.DNSName(f"a{evil[:20]}.example"), *wrong])
    if kind == "huge name":  # 300 RDNs of 60 characters: a subject of 20 kB
        return _leaf(ca, key, subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{i:03}" * 20)
                                                 for i in range(300)]), sans=wrong)
    if kind == "many SANs":
        return _leaf(ca, key, sans=[x509.DNSName(f"n{i}.{'x' * 200}.example") for i in range(300)])
    subject = x509.Name([x509.NameAttribute(cn, "relay.test"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, MARK.decode())])
    if kind == "san":  # a DNSName (IA5String) of bytes over 0x7f: OpenSSL serves it, cryptography cannot read it
        return _edited(_leaf(ca, key, sans=[x509.DNSName(f"{MARK.decode()}.example")]), MARK, bytes(range(0xF8, 0x100)))
    der = _leaf(ca, key, subject=subject, sans=wrong)
    if kind == "issuer":  # the issuer's common name as a NumericString of bytes over 0x7F
        ca_name = CA_NAME.encode()
        return _edited(der, bytes([0x0C, len(ca_name)]) + ca_name, bytes([0x12, len(ca_name)]) + b"\xff" * len(ca_name))
    if kind == "numeric string":  # a NumericString of bytes over 0x7f: ValueError when the subject is read
        return _edited(der, b"\x0c\x08" + MARK, b"\x12\x08" + bytes(range(0xF8, 0x100)))
    assert kind == "bit string"  # an organizationName as a BIT STRING: TypeError when the subject is read
    return _edited(der, b"\x0c\x08" + MARK, b"\x03\x08\x00" + MARK[1:])


def _assert_bounded_text(run: Run) -> None:
    out = run.stdout + run.stderr
    assert "Traceback" not in out, out
    assert not any(c in out for c in "\x1b\x07\r\x00\u202e"), out
    assert "\\u001b" not in out and "\\u0007" not in out and "\\u202e" not in out
    assert not any(line.startswith("X-Injected") for line in run.stdout.splitlines())


@pytest.mark.parametrize("kind", ["escapes", "huge name", "many SANs", "san", "numeric string", "bit string",
                                  "issuer"])
def test_a_hostile_relay_certificate_is_reported_as_bounded_printable_text(
        denv: DeployEnv, relay_factory: Callable[..., Any], tmp_path: Path, kind: str) -> None:
    ca = pki.make_ca(CA_NAME)
    key = pki.new_key("ec")
    relay = relay_factory("starttls", tls_context=_served(tmp_path, "hostile", key, _hostile(kind, ca, key)))
    denv.write_config({"hostile": _target(relay.port, pki.write_pem(tmp_path / "ca.pem", ca))})

    run = denv.run("check", "--json")

    _assert_bounded_text(run)
    assert run.returncode == 69, run.stdout + run.stderr
    cert = run.target("hostile")["certificate"]
    assert cert is not None and cert["verified"] is False and cert["host_matches"] is False, cert
    for field in ("subject", "issuer"):
        assert 0 < len(cert[field]) <= SHOWN_NAME + 3 and cert[field].isprintable(), cert[field]
    assert len(cert["sans"]) <= 100 and all(len(s) <= 255 and s.isprintable() for s in cert["sans"])
    assert cert["problems"] and all(len(p) <= 1200 and p.isprintable() for p in cert["problems"])
    if kind == "many SANs":
        assert cert["sans_total"] == 300 and len(cert["sans"]) == 100, cert["sans_total"]
        assert "n1.x" in cert["problems"][0] and "and 298 more" in cert["problems"][0], cert["problems"]
    if kind in ("numeric string", "bit string", "issuer"):
        assert cert["subject" if kind != "issuer" else "issuer"] == "(a name that does not decode)", cert
    if kind == "san":
        assert cert["sans"] == [] and any("subjectAltName does not decode" in p for p in cert["problems"]), cert
    human = denv.run("check")
    _assert_bounded_text(human)
    assert human.returncode == 69 and len(human.stdout) < 6000, human.stdout
    if kind == "many SANs":
        assert human.stdout.count("and 298 more") == 2, human.stdout  # the certificate line and the problem
    assert all(line.isprintable() for line in human.stdout.splitlines())


# ------------------------------------------------------------------------------- Python 3.13's strict verification


def test_a_relay_certificate_refused_only_by_strict_verification_is_explained(
        denv: DeployEnv, relay_factory: Callable[..., Any], tmp_path: Path) -> None:
    """A relay leaf without an Authority Key Identifier, from a CA in tls_ca_file. Python 3.13 refuses it ("Missing
    Authority Key Identifier": ssl.create_default_context sets VERIFY_X509_STRICT from 3.13 on), and check says that
    certificate must be reissued with one, and why. Older Pythons accept it, and check says nothing of the kind
    (tests/unit/test_x509strict.py produces the same refusal on every Python by setting the flag itself)."""
    root = pki.make_ca("relaycert-test strict root")
    key = pki.new_key("ec")
    relay = relay_factory("starttls", tls_context=_served(tmp_path, "no-akid", key, _leaf(root, key,
                                                                                      key_identifier=False)))
    denv.write_config({"relay": _target(relay.port, pki.write_pem(tmp_path / "root.pem", root))})

    run = denv.run("check", "--json")

    doc = run.target("relay")
    assert relay.messages == []
    if sys.version_info < (3, 13):
        assert doc["verdict"] != "failed" and "Authority Key Identifier" not in json.dumps(doc), doc
        return
    assert doc["verdict"] == "failed" and "Missing Authority Key Identifier" in doc["detail"], doc
    problems = doc["certificate"]["problems"]
    assert problems and problems[0].startswith(
        "the relay's certificate must be reissued with an Authority Key Identifier"), problems
    assert "Python 3.13" in problems[0] and not any("cannot name" in p for p in problems), problems
