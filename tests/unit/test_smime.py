"""S/MIME (RFC 8551): config-time validation of the smime_* keys, and the signed / encrypted message, checked with the
OpenSSL 3 command line (`openssl cms`, `openssl smime`) on both backends."""

from __future__ import annotations

import base64
import email
import email.policy
import logging
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from support.exposed import EXPOSURES, Exposure, exposed_file
from support.pki import (
    LineagePaths,
    SmimeFiles,
    der_pem,
    expired_window,
    issue_smime,
    resigned,
    write_lineage,
    write_pem,
    write_private,
    write_smime,
)

from certbot_smtp_dist._internal import cms, lineage, pipeline, plugins
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.errors import ConfigError, ErrorCode
from certbot_smtp_dist.model import (
    Artefact,
    Attachment,
    Message,
    PayloadFormat,
    Phase,
    Secret,
    Target,
)

FORMATS: dict[str, PayloadFormat] = {f.name: f for f in BUILTIN_FORMATS}
BASE = {"host": "smtp.example.com", "from_address": "certbot@example.com", "to": ["pki@example.com"],
        "cc": ["ops@example.com"], "payload": "pem_and_key"}
NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
SAYS_VERSION_3 = 'if [ "$1" = version ]; then echo "OpenSSL 3.0.99 (a test double)"; exit 0; fi'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SmimeFiles:
    return write_smime(tmp_path_factory.mktemp("smime"))


@pytest.fixture(scope="module")
def lin(tmp_path_factory: pytest.TempPathFactory) -> LineagePaths:
    return write_lineage(tmp_path_factory.mktemp("live") / "test.example.com")


@pytest.fixture(params=["cryptography", "openssl"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test twice: the backend this stack picks, then the `openssl cms` subprocess forced."""
    if request.param == "openssl":
        monkeypatch.setattr(cms, "FORCED", cms.Backend.OPENSSL)
    yield str(request.param)


def target(table: dict[str, Any], formats: dict[str, PayloadFormat] = FORMATS) -> Target:
    return parse_settings({"targets": {"t": table}}, Path("/etc/x/config.toml"), {}, formats).targets[0]


def problems(table: dict[str, Any], formats: dict[str, PayloadFormat] = FORMATS) -> dict[str | None, str]:
    with pytest.raises(ConfigError) as err:
        parse_settings({"targets": {"t": table}}, Path("/etc/x/config.toml"), {}, formats)
    return {p.key: p.problem for p in err.value.problems}


def smime_keys(pki: SmimeFiles, sign: bool = True, encrypt: bool = True, **extra: Any) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if sign:
        keys.update(smime_sign_cert=str(pki.signer_cert), smime_sign_key=str(pki.signer_key))
    if encrypt:
        keys["smime_encrypt_to"] = [str(p) for p in pki.recipient_certs]
    return {**BASE, **keys, **extra}


def message_for(t: Target, lin: LineagePaths) -> tuple[bytes, Artefact]:
    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    job = pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, message_hook=plugins.message_hook(plugins.make_manager(
        load_entry_points=False)))
    assert job.message is not None, job.failure
    return job.message.data, artefact


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60, check=False)


def attachments(mime: bytes) -> dict[str, bytes]:
    msg = email.message_from_bytes(mime, policy=email.policy.default)
    return {str(p.get_filename()): p.get_payload(decode=True) for p in msg.walk()  # type: ignore[attr-defined]
            if p.get_filename() and p.get_filename() != "smime.p7s"}


# ------------------------------------------------------------------------------------------------ configuration


def test_sign_and_encrypt_keys_become_a_policy(pki: SmimeFiles) -> None:
    t = target(smime_keys(pki))
    assert t.smime is not None and t.smime.signs and t.smime.encrypts and t.message_encrypted
    assert t.smime.encryption == "aes256-cbc"
    assert t.smime.recipient_fingerprints == tuple(r.fingerprint for r in pki.recipients)
    assert len(t.smime.signer_chain_pem) == 2  # the signer, then the CA that followed it in the file
    assert target(BASE).smime is None and not target(BASE).message_encrypted


@pytest.mark.parametrize("kind", ["expired", "not_a_certificate", "ec_key", "missing", "no_key_encipherment",
                                  "eku_without_email"])
def test_an_unusable_recipient_certificate_is_a_config_error(pki: SmimeFiles, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad.pem"
    if kind == "expired":
        before, after = expired_window()
        bad.write_bytes(issue_smime(pki.ca, "old@example.com", not_before=before, not_after=after).cert_pem())
    elif kind == "not_a_certificate":
        bad.write_bytes(pki.recipients[0].key_pem())
    elif kind == "ec_key":
        bad.write_bytes(issue_smime(pki.ca, "ec@example.com", key_type="ec").cert_pem())
    elif kind == "no_key_encipherment":
        bad.write_bytes(issue_smime(pki.ca, "s@example.com", key_encipherment=False).cert_pem())
    elif kind == "eku_without_email":
        from cryptography.x509.oid import ExtendedKeyUsageOID

        bad.write_bytes(issue_smime(pki.ca, "w@example.com",
                                    extended_usages=[ExtendedKeyUsageOID.SERVER_AUTH]).cert_pem())
    found = problems({**BASE, "smime_encrypt_to": [str(pki.recipient_certs[0]), str(bad)]})
    assert list(found) == ["smime_encrypt_to"]
    assert str(bad) in found["smime_encrypt_to"]
    expected = {"expired": "expired on", "not_a_certificate": "holds no PEM certificate", "ec_key": "RSA recipient",
                "missing": "cannot read", "no_key_encipherment": "key encipherment",
                "eku_without_email": "email protection"}[kind]
    assert expected in found["smime_encrypt_to"]


def test_a_certificate_without_an_eku_may_encrypt(pki: SmimeFiles, tmp_path: Path) -> None:
    free = tmp_path / "free.pem"
    free.write_bytes(issue_smime(pki.ca, "f@example.com", extended_usages=None).cert_pem())
    assert target({**BASE, "smime_encrypt_to": [str(free)]}).message_encrypted


def test_signer_problems(pki: SmimeFiles, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    write_private(other, pki.recipients[0].key_pem())
    assert "not the key of the certificate" in problems(smime_keys(pki, smime_sign_key=str(other)))["smime_sign_key"]
    no_sign = issue_smime(pki.ca, "n@example.com", digital_signature=False)
    (tmp_path / "n.pem").write_bytes(no_sign.cert_pem())
    write_private(tmp_path / "n.key", no_sign.key_pem())
    found = problems(smime_keys(pki, smime_sign_cert=str(tmp_path / "n.pem"), smime_sign_key=str(tmp_path / "n.key")))
    assert "digital signature" in found["smime_sign_cert"]
    only_cert = {**BASE, "smime_sign_cert": str(pki.signer_cert)}
    assert "signing needs both" in problems(only_cert)["smime_sign_key"]
    assert "must be one of aes256-cbc, aes256-gcm" in problems(smime_keys(pki, smime_encryption="des"))[
        "smime_encryption"]


@pytest.mark.parametrize("key", ["smime_encrypt_to", "smime_sign_cert", "smime_sign_key"])
def test_a_malformed_pem_file_is_a_config_error_naming_it(pki: SmimeFiles, tmp_path: Path, key: str) -> None:
    """A block that is not base64, or never ended: pem.PemError escaped the configuration load (a traceback from
    `check` or `deploy`, not exit 78 naming the key and the file)."""
    bad = tmp_path / "bad.pem"
    if key == "smime_sign_key":
        write_private(bad, b"-----BEGIN PRIVATE KEY-----\nMIIE\n")  # never ended: a truncated file
    else:
        bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    table = smime_keys(pki, **{key: [str(bad)] if key == "smime_encrypt_to" else str(bad)})
    found = problems(table)
    assert list(found) == [key], found
    assert str(bad) in found[key] and ("not valid base64" in found[key] or "never ended" in found[key]), found


@pytest.mark.parametrize("part", ["subjectAltName", "subject"])
@pytest.mark.parametrize("key", ["smime_encrypt_to", "smime_sign_cert"])
def test_a_certificate_whose_extensions_do_not_decode_is_a_config_error(pki: SmimeFiles, tmp_path: Path,
                                                                       key: str, part: str) -> None:
    """An rfc822Name of bytes over 0x7F in the subjectAltName, or a NumericString of such bytes in the subject:
    cryptography decodes extensions and names on first use, and the key usage check or the recipient's name for
    the warnings raised ValueError out of the configuration load (a traceback, not exit 78)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtensionOID, NameOID

    san = bytes([0x30, 11, 0x81, 9]) + b"\xff\xfe@exampl"  # SEQUENCE { [1] IA5String }: not ASCII
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd"),
                                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QQQQQQQQ")]))
               .issuer_name(pki.ca.cert.subject).public_key(pki.signer.cert.public_key()).serial_number(4243)
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30)))
    if part == "subjectAltName":
        builder = builder.add_extension(x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san),
                                        critical=False)
    der = builder.sign(pki.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    if part == "subject":
        der = der.replace(b"\x0c\x08QQQQQQQQ", b"\x12\x08" + bytes(range(0xF8, 0x100)))
    odd = write_pem(tmp_path / "odd.pem", x509.load_der_x509_certificate(der))
    found = problems(smime_keys(pki, **{key: [str(odd)] if key == "smime_encrypt_to" else str(odd)}))
    assert list(found) == [key] and str(odd) in found[key] and "does not decode" in found[key], found


def test_an_exposed_signer_key_is_warned_about_as_privkey_is(pki: SmimeFiles, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    write_private(loose, pki.signer.key_pem())
    loose.chmod(0o644)
    settings = parse_settings({"targets": {"t": smime_keys(pki, smime_sign_key=str(loose))}},
                              Path("/etc/x/config.toml"), {}, FORMATS)
    [warning] = [w for w in settings.warnings if w.key == "smime_sign_key"]
    assert "open to group and others (mode 0644)" in warning.problem and "chmod 600" in warning.problem


def test_encryption_lets_pem_and_key_cross_a_plaintext_relay(pki: SmimeFiles) -> None:
    """The relay check reads the facts: the format ships the key in clear, unless the message is encrypted."""
    plain = {**BASE, "tls_mode": "plaintext", "host": "relay.example.com"}
    assert "payload" in problems(plain)
    assert target({**plain, "smime_encrypt_to": [str(pki.recipient_certs[0])]}).message_encrypted
    assert "payload" in problems({**plain, "smime_sign_cert": str(pki.signer_cert),
                                  "smime_sign_key": str(pki.signer_key)})  # signing hides nothing


def test_an_extension_format_with_the_key_in_clear_is_held_to_the_same_rule(pki: SmimeFiles) -> None:
    def build(artefact: Artefact, secret: Secret | None) -> tuple[Attachment, ...]:
        return (Attachment("k.pem", "application/x-pem-file", artefact.key_pem, contains_private_key=True),)

    formats = {**FORMATS, "vault": PayloadFormat("vault", "the key, in clear", build, ships_private_key=True)}
    plain = {**BASE, "tls_mode": "plaintext", "host": "relay.example.com", "payload": "vault"}
    assert "payload" in problems(plain, formats)
    assert target({**plain, "smime_encrypt_to": [str(pki.recipient_certs[0])]}, formats).message_encrypted


def test_the_warning_names_to_whom_the_key_is_encrypted(pki: SmimeFiles, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    pipeline.warn_about(target(smime_keys(pki, sign=False)), FORMATS["pem_and_key"])
    [record] = [r.getMessage() for r in caplog.records if "PRIVATE KEY" in r.getMessage()]
    assert "encrypted (S/MIME) to" in record and "pki@example.com" in record and "ops@example.com" in record
    assert "in clear" not in record


# ------------------------------------------------------------------------------------------------------ messages


def test_encrypted_message_decrypts_for_each_recipient_with_cms_and_smime(
        pki: SmimeFiles, lin: LineagePaths, backend: str) -> None:
    raw, artefact = message_for(target(smime_keys(pki)), lin)
    outer = email.message_from_bytes(raw, policy=email.policy.default)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data" and outer.get_param("name") == "smime.p7m"
    assert str(outer["Subject"]) == "Certificate test.example.com"
    assert {k.lower() for k in outer.keys()} == {"from", "to", "cc", "date", "message-id", "auto-submitted",
                                                 "subject", "mime-version", "content-type",
                                                 "content-transfer-encoding", "content-disposition"}
    assert b"PRIVATE KEY" not in raw
    for data in (artefact.key_pem, artefact.fullchain_pem):
        assert base64.b64encode(data)[:60] not in raw.replace(b"\r\n", b"")
    for cert, key in zip(pki.recipient_certs, pki.recipient_keys, strict=True):
        for tool in ("cms", "smime"):
            done = openssl(tool, "-decrypt", "-inkey", str(key), "-recip", str(cert), data=raw)
            assert done.returncode == 0, done.stderr
            verified = openssl("cms", "-verify", "-CAfile", str(pki.ca_file), data=done.stdout)
            assert verified.returncode == 0, verified.stderr
            assert attachments(verified.stdout) == {"test.example.com.fullchain.pem": artefact.fullchain_pem,
                                                    "test.example.com.key.pem": artefact.key_pem}


def test_cbc_envelope_is_aes_256(pki: SmimeFiles, lin: LineagePaths, backend: str) -> None:
    raw, _ = message_for(target(smime_keys(pki, sign=False)), lin)
    der = email.message_from_bytes(raw, policy=email.policy.default).get_payload(decode=True)  # type: ignore[union-attr]
    printed = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER"], input=der,
                             capture_output=True, timeout=60, check=True).stdout
    assert b"aes-256-cbc" in printed and b"pkcs7-envelopedData" in printed


def test_gcm_opt_in_is_auth_enveloped_data(pki: SmimeFiles, lin: LineagePaths, backend: str) -> None:
    raw, artefact = message_for(target(smime_keys(pki, smime_encryption="aes256-gcm")), lin)
    outer = email.message_from_bytes(raw, policy=email.policy.default)
    assert outer.get_param("smime-type") == "authEnveloped-data"
    done = openssl("cms", "-decrypt", "-inkey", str(pki.recipient_keys[1]), "-recip", str(pki.recipient_certs[1]),
                   data=raw)
    assert done.returncode == 0, done.stderr
    verified = openssl("cms", "-verify", "-CAfile", str(pki.ca_file), data=done.stdout)
    assert verified.returncode == 0 and attachments(verified.stdout)["test.example.com.key.pem"] == artefact.key_pem


def test_signed_only_verifies_and_fails_after_one_changed_byte(
        pki: SmimeFiles, lin: LineagePaths, backend: str, tmp_path: Path) -> None:
    raw, artefact = message_for(target(smime_keys(pki, encrypt=False, payload="pem")), lin)
    outer = email.message_from_bytes(raw, policy=email.policy.default)
    assert outer.get_content_type() == "multipart/signed"
    assert (outer.get_param("protocol"), outer.get_param("micalg")) == ("application/pkcs7-signature", "sha-256")
    assert str(outer["Subject"]).startswith("Certificate for test.example.com issued")  # nothing hidden: kept
    verified = openssl("cms", "-verify", "-CAfile", str(pki.ca_file), data=raw)
    assert verified.returncode == 0, verified.stderr
    assert attachments(verified.stdout) == {"test.example.com.fullchain.pem": artefact.fullchain_pem}
    assert b"\r\n" in verified.stdout and b"\n" not in verified.stdout.replace(b"\r\n", b"")  # canonical CRLF
    at = raw.index(b"Serial:")
    tampered = raw[:at] + b"s" + raw[at + 1:]
    assert openssl("cms", "-verify", "-CAfile", str(pki.ca_file), data=tampered).returncode != 0


def test_8bit_text_is_made_seven_bit_before_signing(pki: SmimeFiles, lin: LineagePaths) -> None:
    """RFC 8551 §3.1.2: a relay that downgrades 8bit text would break the signature, so none is signed."""
    from email.message import EmailMessage

    from certbot_smtp_dist._internal import smime

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.com", "x"
    msg.set_content("Zertifikat für Köln\n", charset="utf-8", cte="8bit")
    rendered = Message("<1@example.com>", "x", "a@example.com", ("b@example.com",), msg.as_bytes())
    assert not rendered.data.isascii()
    policy = target(smime_keys(pki, encrypt=False)).smime
    assert policy is not None
    signed = smime.protect(rendered, policy, lineage.load(lineage.from_lineage_dir(lin.live_dir)).facts, 30)
    assert signed.data.isascii() and signed.signed and signed.encrypted_to == ()
    verified = openssl("cms", "-verify", "-CAfile", str(pki.ca_file), data=signed.data)
    assert verified.returncode == 0, verified.stderr
    inner = email.message_from_bytes(verified.stdout, policy=email.policy.default)
    assert inner.get_content().replace("\r\n", "\n") == "Zertifikat für Köln\n"  # type: ignore[attr-defined]


def test_an_ec_signer_signs(tmp_path: Path, lin: LineagePaths, backend: str) -> None:
    ec = write_smime(tmp_path / "ec", signer_key_type="ec")
    raw, _ = message_for(target(smime_keys(ec, encrypt=False)), lin)
    assert openssl("cms", "-verify", "-CAfile", str(ec.ca_file), data=raw).returncode == 0


def test_a_failing_backend_fails_that_target_with_smtp_payload(
        pki: SmimeFiles, lin: LineagePaths, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "openssl"
    fake.write_text(f"#!/bin/sh\n{SAYS_VERSION_3}\n"
                    "echo '40E7:error:1E08010C:DECODER routines::unsupported:secret/path' >&2\nexit 3\n")
    fake.chmod(0o700)
    monkeypatch.setenv(cms.OPENSSL_ENV, str(fake))
    monkeypatch.setattr(cms, "FORCED", cms.Backend.OPENSSL)
    t = target(smime_keys(pki))
    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    job = pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, message_hook=plugins.message_hook(
        plugins.make_manager(load_entry_points=False)))
    assert job.message is None and job.failure is not None
    assert (job.failure.code, job.failure.phase) == (ErrorCode.SMTP_PAYLOAD, Phase.PAYLOAD)
    assert "exit status 3" in job.failure.detail and "DECODER: unsupported" in job.failure.detail
    assert "secret/path" not in job.failure.detail


def test_the_openssl_backend_leaves_no_files_and_puts_no_key_on_argv(
        pki: SmimeFiles, lin: LineagePaths, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []
    real = subprocess.run

    modes: set[tuple[int, int]] = set()

    def spy(args: list[str], **kw: Any) -> Any:
        seen.append(list(args))
        for arg in args:
            if arg.endswith(".pem"):  # the certificates handed over: 0600 files in a 0700 directory
                modes.add((Path(arg).stat().st_mode & 0o777, Path(arg).parent.stat().st_mode & 0o777))
        return real(args, **kw)

    monkeypatch.setattr(cms, "FORCED", cms.Backend.OPENSSL)
    monkeypatch.setattr(cms.subprocess, "run", spy)
    monkeypatch.setattr(cms.tempfile, "tempdir", str(tmp_path))
    message_for(target(smime_keys(pki)), lin)
    assert [a[1:3] for a in seen] == [["cms", "-sign"], ["cms", "-encrypt"]]
    key_text = pki.signer.key_pem().decode()
    assert not any(key_text[30:60] in arg or str(pki.signer_key) == arg for a in seen for arg in a)
    assert modes == {(0o600, 0o700)}
    assert list(tmp_path.iterdir()) == []  # the private directories are gone


def test_smime_encryption_without_recipients_is_warned_about_in_a_target_only(pki: SmimeFiles) -> None:
    def warnings(doc: dict[str, Any]) -> list[str]:
        return [str(w) for w in parse_settings(doc, Path("/etc/x/config.toml"), {}, FORMATS).warnings]

    assert warnings({"targets": {"t": {**BASE, "smime_encryption": "aes256-gcm"}}}) == [
        "targets.t.smime_encryption: is ignored: no smime_encrypt_to"]
    assert warnings({"defaults": {"smime_encryption": "aes256-gcm"}, "targets": {"t": BASE}}) == []


def test_message_hooks_chain_in_call_order_and_a_bad_return_fails_the_target(lin: LineagePaths) -> None:
    from dataclasses import replace

    from certbot_smtp_dist.hookspecs import hookimpl

    class First:
        @hookimpl(tryfirst=True)
        def smtp_dist_message(self, target: Target, facts: Any, message: Message) -> Message:
            return replace(message, data=b"X-First: 1\r\n" + message.data)

    class Second:
        @hookimpl
        def smtp_dist_message(self, target: Target, facts: Any, message: Message) -> Message | None:
            assert message.data.startswith(b"X-First: 1\r\n")
            return replace(message, data=b"X-Second: 2\r\n" + message.data)

    class Unchanged:
        @hookimpl
        def smtp_dist_message(self, target: Target, facts: Any, message: Message) -> None:
            return None

    class Wrong:
        @hookimpl
        def smtp_dist_message(self, target: Target, facts: Any, message: Message) -> bytes:
            return message.data

    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    t = target({**BASE, "payload": "pem"})
    chain = plugins.message_hook(plugins.make_manager(load_entry_points=False, extra=(Second(), First(), Unchanged())))
    job = pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, message_hook=chain)
    assert job.message is not None and job.message.data.startswith(b"X-Second: 2\r\nX-First: 1\r\n")
    wrong = plugins.message_hook(plugins.make_manager(load_entry_points=False, extra=(Wrong(),)))
    failed = pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, message_hook=wrong)
    assert failed.message is None and failed.failure is not None
    assert failed.failure.code is ErrorCode.SMTP_PAYLOAD and "returned bytes, not a Message" in failed.failure.detail


def test_a_stalled_openssl_is_stopped_at_the_deadline(pki: SmimeFiles, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    fake = tmp_path / "openssl"
    fake.write_text(f"#!/bin/sh\n{SAYS_VERSION_3}\nexec sleep 60\n")
    fake.chmod(0o700)
    monkeypatch.setenv(cms.OPENSSL_ENV, str(fake))
    monkeypatch.setattr(cms, "FORCED", cms.Backend.OPENSSL)
    with pytest.raises(cms.CmsError, match="took longer than the 1.0s left"):
        cms.encrypt(b"x", [pki.recipients[0].cert_pem()], cms.Cipher.AES256_GCM, 1)


def test_a_hostile_recipient_subject_brings_no_line_break_into_the_warning(
        pki: SmimeFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    forged = tmp_path / "forged.pem"
    forged.write_bytes(issue_smime(pki.ca, "x@example.com", common_name="x\nWARNING forged line").cert_pem())
    t = target({**BASE, "smime_encrypt_to": [str(forged)]})
    caplog.set_level(logging.WARNING)
    pipeline.warn_about(t, FORMATS["pem_and_key"])
    [record] = [r.getMessage() for r in caplog.records if "PRIVATE KEY" in r.getMessage()]
    assert "\n" not in record and "forged line" in record


@pytest.mark.parametrize("version", ["OpenSSL 1.1.1w  11 Sep 2023", "LibreSSL 3.8.2"])
def test_gcm_without_openssl_3_is_a_config_error(pki: SmimeFiles, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 version: str) -> None:
    fake = tmp_path / "openssl"
    fake.write_text(f"#!/bin/sh\necho '{version}'\n")
    fake.chmod(0o700)
    monkeypatch.setenv(cms.OPENSSL_ENV, str(fake))
    found = problems(smime_keys(pki, smime_encryption="aes256-gcm"))
    assert list(found) == ["smime_encryption"] and "OpenSSL 3" in found["smime_encryption"]


def test_openssl_is_found_on_a_fixed_path_never_on_the_callers(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """The signer key is piped into whatever `openssl` names: a PATH of the environment's (".", a user's bin)
    must not choose it, and neither may a relative $CERTBOT_SMTP_DIST_OPENSSL resolved against the cwd."""
    planted = tmp_path / "openssl"
    planted.write_text(f"#!/bin/sh\n{SAYS_VERSION_3}\nexit 0\n")
    planted.chmod(0o755)
    monkeypatch.delenv(cms.OPENSSL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f".:{tmp_path}:/usr/bin:/bin")
    found = cms.openssl_binary()
    assert found is not None and Path(found).resolve() != planted.resolve()
    assert Path(found).is_absolute()
    monkeypatch.setenv(cms.OPENSSL_ENV, "openssl")
    assert cms.openssl_binary() is None
    monkeypatch.setenv(cms.OPENSSL_ENV, str(planted))  # named by its absolute path: the operator's choice
    assert cms.openssl_binary() == str(planted)


@pytest.mark.parametrize("how", EXPOSURES)
def test_a_recipient_certificate_others_could_replace_is_a_config_error(pki: SmimeFiles, tmp_path: Path,
                                                                         how: Exposure) -> None:
    """Whoever can swap a recipient certificate chooses who can decrypt the private key: the config file's rule
    (ownership.py: ours or root's, writable by nobody else, nor any directory above it) holds for it too."""
    named = exposed_file(tmp_path, "pki.pem", pki.recipients[0].cert_pem(), how)
    found = problems({**BASE, "smime_encrypt_to": [str(pki.recipient_certs[1]), str(named)]})
    assert list(found) == ["smime_encrypt_to"]
    assert "writable by group or others" in found["smime_encrypt_to"]
    assert target({**BASE, "smime_encrypt_to": [str(pki.recipient_certs[1])]}).message_encrypted


def test_a_ca_certificate_is_no_recipient(pki: SmimeFiles, tmp_path: Path) -> None:
    """A CA certificate (basicConstraints cA, RFC 5280 §4.2.1.9) without a key usage extension passed every other
    check: pointing smime_encrypt_to at the CA file instead of the person's certificate would encrypt the private
    key to whoever holds the CA key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(datetime(2020, 1, 1))
          .not_valid_after(datetime(2040, 1, 1)).add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                                               critical=True)
          .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(Encoding.PEM))
    found = problems({**BASE, "smime_encrypt_to": [str(tmp_path / "ca.pem")]})
    assert "is a CA certificate" in found["smime_encrypt_to"]


def _rsa_1024_smime(pki: SmimeFiles, email_address: str) -> tuple[bytes, bytes]:
    """An S/MIME certificate (and key, PEM) like issue_smime's, on a 1024-bit RSA key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email_address)]))
            .issuer_name(pki.ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(datetime(2020, 1, 1))
            .not_valid_after(datetime(2040, 1, 1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .sign(pki.ca.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_a_short_rsa_key_is_refused_for_encryption_and_signing(pki: SmimeFiles, tmp_path: Path) -> None:
    """A private key wrapped for an RSA-1024 recipient is as safe as RSA-1024 is (not: NIST SP 800-131A),
    and a signature by one can be forged the same way."""
    cert, key = _rsa_1024_smime(pki, "weak@example.com")
    (tmp_path / "weak.pem").write_bytes(cert)
    write_private(tmp_path / "weak.key", key)
    found = problems({**BASE, "smime_encrypt_to": [str(tmp_path / "weak.pem")],
                      "smime_sign_cert": str(tmp_path / "weak.pem"), "smime_sign_key": str(tmp_path / "weak.key")})
    assert "1024-bit RSA key; at least 2048 bits" in found["smime_encrypt_to"]
    assert "1024-bit RSA key; at least 2048 bits" in found["smime_sign_cert"]


def test_a_line_over_998_octets_is_made_base64_before_signing(pki: SmimeFiles, lin: LineagePaths) -> None:
    """RFC 5321 §4.5.3.1.6: no line over 998 octets crosses SMTP unchanged (Postfix folds it, others cut it), so a
    7bit part with one (an extension hook's, say) would reach the recipient with a broken signature."""
    from email.message import EmailMessage

    from certbot_smtp_dist._internal import smime

    text = "inventory: " + "host.example.com " * 80 + "\n"
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.com", "x"
    msg.set_content(text, cte="7bit")
    rendered = Message("<1@example.com>", "x", "a@example.com", ("b@example.com",), msg.as_bytes())
    assert max(len(line) for line in rendered.data.split(b"\r\n")) > 998
    policy = target(smime_keys(pki, encrypt=False)).smime
    assert policy is not None
    signed = smime.protect(rendered, policy, lineage.load(lineage.from_lineage_dir(lin.live_dir)).facts, 30)
    assert max(len(line) for line in signed.data.split(b"\r\n")) <= 998
    verified = openssl("cms", "-verify", "-CAfile", str(pki.ca_file), data=signed.data)
    assert verified.returncode == 0, verified.stderr
    inner = email.message_from_bytes(verified.stdout, policy=email.policy.default)
    assert inner.get_content().replace("\r\n", "\n") == text  # type: ignore[attr-defined]


@pytest.mark.parametrize("smime_on", [False, True])
def test_a_message_hook_that_adds_a_bcc_field_fails_its_target(pki: SmimeFiles, lin: LineagePaths,
                                                                smime_on: bool) -> None:
    """Bcc recipients live in the envelope only (RFC 5322 §3.6.3): a Bcc field would show every To and Cc
    recipient who was blind-copied; signing keeps the outer header as it is, so it would go out as written."""
    from dataclasses import replace

    from certbot_smtp_dist.hookspecs import hookimpl

    class Blind:
        @hookimpl
        def smtp_dist_message(self, target: Target, facts: Any, message: Message) -> Message:
            return replace(message, data=b"X-Audit: 1\r\nbcc : hidden@example.com\r\n" + message.data)

    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    t = target(smime_keys(pki, encrypt=False, payload="pem", bcc=["hidden@example.com"]) if smime_on
               else {**BASE, "payload": "pem", "bcc": ["hidden@example.com"]})
    chain = plugins.message_hook(plugins.make_manager(load_entry_points=False, extra=(Blind(),)))
    job = pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, message_hook=chain)
    assert job.message is None and job.failure is not None
    assert job.failure.code is ErrorCode.SMTP_PAYLOAD and "added a Bcc field" in job.failure.detail
    assert "hidden@example.com" not in job.failure.detail
    plain = pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, message_hook=plugins.message_hook(
        plugins.make_manager(load_entry_points=False)))
    assert plain.message is not None and b"hidden@" not in plain.message.data
    assert "hidden@example.com" in plain.message.envelope_to


def test_hook_implementations_may_take_a_subset_of_the_arguments(lin: LineagePaths, caplog: pytest.LogCaptureFixture
                                                                  ) -> None:
    """pluggy lets an implementation declare only the arguments it uses; the chain and the observers, which call
    the implementations one by one, must pass only those, as pluggy's own hook call does."""
    from dataclasses import replace

    from certbot_smtp_dist.hookspecs import hookimpl
    from certbot_smtp_dist.model import DeliveryResult, Status

    seen: list[str] = []

    class Lean:
        @hookimpl
        def smtp_dist_message(self, message: Message) -> Message:
            return replace(message, data=b"X-Lean: 1\r\n" + message.data)

        @hookimpl
        def smtp_dist_delivery_finished(self, result: DeliveryResult) -> None:
            seen.append(result.target)

    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    pm = plugins.make_manager(load_entry_points=False, extra=(Lean(),))
    job = pipeline.prepare_job(target({**BASE, "payload": "pem"}), artefact, FORMATS, {}, NOW,
                               message_hook=plugins.message_hook(pm))
    assert job.message is not None, job.failure
    assert job.message.data.startswith(b"X-Lean: 1\r\n")
    caplog.set_level(logging.ERROR)
    plugins.notify_finished(pm, artefact.facts, DeliveryResult("t", Status.DELIVERED))
    assert seen == ["t"] and not caplog.records


def test_the_openssl_backend_refuses_a_temporary_directory_others_can_write(
        pki: SmimeFiles, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The recipient certificates are handed to `openssl cms -encrypt` as files: in a $TMPDIR whose owner or
    writers could rename our directory away, they could swap a certificate before openssl reads it and have the
    key encrypted to themselves."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit
    monkeypatch.setattr(cms.tempfile, "tempdir", str(shared))
    monkeypatch.setattr(cms, "FORCED", cms.Backend.OPENSSL)
    with pytest.raises(cms.CmsError, match="writable by group or others"):
        cms.encrypt(b"x", [pki.recipients[0].cert_pem()], cms.Cipher.AES256_CBC, 30)
    assert list(shared.iterdir()) == []
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: others cannot rename what is ours
    monkeypatch.setattr(cms.tempfile, "tempdir", str(sticky))
    assert cms.encrypt(b"x", [pki.recipients[0].cert_pem()], cms.Cipher.AES256_CBC, 30)


@pytest.mark.parametrize("field", ["message_id", "envelope_from", "envelope_to"])
def test_a_message_hook_that_changes_the_message_id_or_envelope_fails_its_target(lin: LineagePaths,
                                                                                 field: str) -> None:
    """The contract says keep them: the spool and `retry` rely on the Message-ID (a re-send the recipient can
    recognise), and the envelope is what the configuration checked (who gets the certificate, and its key)."""
    from dataclasses import replace

    from certbot_smtp_dist.hookspecs import hookimpl

    changed: dict[str, Any] = {"message_id": "<other@example.com>", "envelope_from": "x@example.net",
                               "envelope_to": ("pki@example.com", "thief@example.net")}

    class Redirect:
        @hookimpl
        def smtp_dist_message(self, message: Message) -> Message:
            return replace(message, **{field: changed[field]})

    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    chain = plugins.message_hook(plugins.make_manager(load_entry_points=False, extra=(Redirect(),)))
    job = pipeline.prepare_job(target({**BASE, "payload": "pem"}), artefact, FORMATS, {}, NOW, message_hook=chain)
    assert job.message is None and job.failure is not None
    assert job.failure.code is ErrorCode.SMTP_PAYLOAD and "changed the Message-ID or the envelope" in job.failure.detail
    assert "thief" not in job.failure.detail


# ------------------------------------------------------------------------- certificate counts and signer material


@pytest.mark.parametrize("extra", ["another_recipient", "the_issuing_ca"])
def test_a_recipient_file_with_more_than_one_certificate_is_a_config_error(pki: SmimeFiles, tmp_path: Path,
                                                                         extra: str) -> None:
    """Two recipients' certificates concatenated into one file: only the first could decrypt, while the operator
    believes both can. A file names one recipient; a second certificate in it is refused, never ignored."""
    both = tmp_path / "both.pem"
    second = pki.recipients[1].cert_pem() if extra == "another_recipient" else pki.ca.cert_pem()
    both.write_bytes(pki.recipients[0].cert_pem() + second)
    found = problems({**BASE, "smime_encrypt_to": [str(pki.recipient_certs[1]), str(both)]})
    assert list(found) == ["smime_encrypt_to"]
    text = found["smime_encrypt_to"]
    assert str(both) in text and "holds 2 certificates" in text and "its own file" in text
    assert target({**BASE, "smime_encrypt_to": [str(p) for p in pki.recipient_certs]}).message_encrypted


def test_a_signer_chain_of_more_than_ten_certificates_is_a_config_error(pki: SmimeFiles, tmp_path: Path) -> None:
    """The chain a signature carries is bounded like a sane chain, not only by the 1 MiB read."""
    long_chain = tmp_path / "long.pem"
    long_chain.write_bytes(pki.signer.cert_pem() + pki.ca.cert_pem() * 10)
    found = problems(smime_keys(pki, encrypt=False, smime_sign_cert=str(long_chain)))
    assert list(found) == ["smime_sign_cert"]
    assert str(long_chain) in found["smime_sign_cert"] and "holds 11 certificates; at most 10" in found[
        "smime_sign_cert"]
    long_chain.write_bytes(pki.signer.cert_pem() + pki.ca.cert_pem() * 9)
    policy = target(smime_keys(pki, encrypt=False, smime_sign_cert=str(long_chain))).smime
    assert policy is not None and len(policy.signer_chain_pem) == 10


def test_a_signer_key_swapped_during_a_run_never_makes_a_bad_signature(
        pki: SmimeFiles, lin: LineagePaths, tmp_path: Path, backend: str) -> None:
    """The signer's key and chain are one value, loaded and checked against each other when the configuration is
    loaded: a key file replaced after that does not reach this run's signatures (they verify), and the next load
    refuses the mismatching key (a configuration error)."""
    signer = tmp_path / "signer.key"
    write_private(signer, pki.signer.key_pem())
    keys = smime_keys(pki, encrypt=False, payload="pem", smime_sign_key=str(signer))
    loaded = target(keys)
    write_private(signer, pki.recipients[0].key_pem())  # swapped for a key of another certificate
    raw, _ = message_for(loaded, lin)
    verified = openssl("cms", "-verify", "-CAfile", str(pki.ca_file), data=raw)
    assert verified.returncode == 0, verified.stderr
    assert "not the key of the certificate" in problems(keys)["smime_sign_key"]


def test_signer_material_refuses_a_key_that_does_not_match_its_certificate(pki: SmimeFiles) -> None:
    """The key and chain are one value that cannot be built from a key and a certificate that do not belong
    together: signing with it could only make a signature no one can verify."""
    chain = (pki.signer.cert, pki.ca.cert)
    good = cms.Signer(cms.load_key(pki.signer.key_pem()), chain)
    assert good.chain_pem == (pki.signer.cert_pem(), pki.ca.cert_pem())
    assert repr(good) == "Signer()"  # the key is never shown
    assert cms.sign(b"content\r\n", good, 30)
    with pytest.raises(cms.SignerMismatch, match="does not match"):
        cms.Signer(cms.load_key(pki.recipients[0].key_pem()), chain)
    with pytest.raises(cms.CmsError, match=r"^does not parse \(ValueError\)$"):
        cms.load_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_one_signer_is_loaded_once_for_every_target_and_message(pki: SmimeFiles, lin: LineagePaths,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading an RSA key checks it in full (tens of ms): 500 targets sharing a [defaults] signer took 35 s. One
    load of the configuration parses it once, its targets share one signer value, and the messages sign with it."""
    real, loads = cms.load_key, []

    def counting(key_pem: bytes) -> Any:
        loads.append(1)
        return real(key_pem)

    monkeypatch.setattr(cms, "load_key", counting)
    defaults = {k: v for k, v in smime_keys(pki, encrypt=False).items() if k.startswith("smime_")}
    settings = parse_settings({"defaults": {**BASE, **defaults}, "targets": {f"t{i}": {} for i in range(5)}},
                              Path("/etc/x/config.toml"), {}, FORMATS)
    hook = plugins.message_hook(plugins.make_manager(load_entry_points=False))
    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    for t in settings.targets:
        assert pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, message_hook=hook).message is not None
    assert len(loads) == 1
    assert len({id(t.smime.signer) for t in settings.targets if t.smime is not None}) == 1


@pytest.mark.parametrize(("where", "key_type", "shown"), [("recipient", "ec", "ECDSA P-256"),
                                                          ("signer", "ed25519", "Ed25519")])
def test_an_unsupported_key_is_described_as_inspect_describes_it(pki: SmimeFiles, tmp_path: Path, where: str,
                                                                  key_type: Any, shown: str) -> None:
    """One description of a key (diagnose.key_text) for `inspect` and the S/MIME checks."""
    from certbot_smtp_dist._internal import diagnose

    issued = issue_smime(pki.ca, "k@example.com", key_type=key_type)
    (tmp_path / "k.pem").write_bytes(issued.cert_pem())
    write_private(tmp_path / "k.key", issued.key_pem())
    assert diagnose.key_text(issued.cert.public_key()) == shown
    if where == "recipient":
        found = problems({**BASE, "smime_encrypt_to": [str(tmp_path / "k.pem")]})["smime_encrypt_to"]
    else:
        found = problems({**BASE, "smime_sign_cert": str(tmp_path / "k.pem"),
                          "smime_sign_key": str(tmp_path / "k.key")})["smime_sign_cert"]
    assert f"the certificate's key is {shown};" in found




def test_a_signing_policy_without_a_loaded_signer_fails_rather_than_sends_unsigned(pki: SmimeFiles,
                                                                                  lin: LineagePaths) -> None:
    """A policy that asks for signing but carries no signer value (not made by a configuration load) is an error
    for its target: never a message sent without the signature the configuration asked for."""
    from dataclasses import replace

    from certbot_smtp_dist._internal import smime
    from certbot_smtp_dist.errors import PayloadError

    loaded = target(smime_keys(pki, encrypt=False, payload="pem")).smime
    assert loaded is not None and loaded.signs and isinstance(loaded.signer, cms.Signer)
    rendered = Message("<1@example.com>", "x", "a@example.com", ("b@example.com",),
                       b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n")
    facts = lineage.load(lineage.from_lineage_dir(lin.live_dir)).facts
    with pytest.raises(PayloadError, match="cannot sign: no signer key and certificate were loaded"):
        smime.protect(rendered, replace(loaded, signer=None), facts, 30)
    assert smime.protect(rendered, loaded, facts, 30).signed


def test_a_recipient_certificate_whose_subject_does_not_decode_is_a_config_error(pki: SmimeFiles,
                                                                                tmp_path: Path) -> None:
    """cryptography decodes names lazily: a recipient certificate whose subject is a NumericString of octets over
    0x7F loads, then raised ValueError where its subject was first read (a traceback at config load). It is a
    config problem naming the file, like a certificate that does not parse."""
    from cryptography import x509 as _x509
    from cryptography.hazmat.primitives import serialization as _ser

    recipient = pki.recipients[0].cert
    cn = recipient.subject.get_attributes_for_oid(_x509.NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str)
    old = b"\x0c" + bytes([len(cn)]) + cn.encode()
    new = b"\x12" + bytes([len(cn)]) + b"\xff" * len(cn)
    hostile = tmp_path / "hostile.pem"
    hostile.write_bytes(der_pem(resigned(recipient.public_bytes(_ser.Encoding.DER), pki.ca.key, old, new)))
    found = problems({**BASE, "smime_encrypt_to": [str(hostile)]})
    assert list(found) == ["smime_encrypt_to"]
    assert str(hostile) in found["smime_encrypt_to"] and "does not decode" in found["smime_encrypt_to"]
