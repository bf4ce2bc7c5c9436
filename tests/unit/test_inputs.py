"""The artefact is what the payload promises: PEM parsed block by block, bounded reads, formats judged by their
declarations. Real files in a temporary directory; nothing mocked."""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.pki import LineagePaths, write_lineage

from certbot_smtp_dist._internal import files, lineage, pem
from certbot_smtp_dist._internal import payload as payloads
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.errors import CertificateError, ConfigError, PayloadError
from certbot_smtp_dist.model import Artefact, Attachment, PayloadFormat, Secret

UTC = dt.timezone.utc
OPENSSL_TEXT = b"subject=CN = test.example.com\nissuer=CN = Test ACME Intermediate R1\n\n"


@pytest.fixture
def lin(tmp_path: Path) -> LineagePaths:
    return write_lineage(tmp_path / "live" / "test.example.com")


def key_der(lin: LineagePaths) -> bytes:
    return pem.blocks(lin.privkey.read_bytes())[0].der


# ---------------------------------------------------------------------------------------------------- PEM blocks


def test_blocks_skip_explanatory_text_and_encode_canonically(lin: LineagePaths) -> None:
    chain = lin.fullchain.read_bytes()
    messy = OPENSSL_TEXT + chain.replace(b"\n", b"\r\n") + b"trailing words\n"
    found = pem.blocks(messy)
    assert [b.label for b in found] == ["CERTIFICATE", "CERTIFICATE"]
    assert b"".join(b.encode() for b in found) == chain  # cryptography's PEM is the canonical form


@pytest.mark.parametrize(("text", "why"), [
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "never ended"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END PRIVATE KEY-----\n", "ends as PRIVATE KEY"),
    (b"-----BEGIN CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "line 2"),
    (b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END RSA PRIVATE KEY-----\n", "headers"),
    (b"-----BEGIN CERTIFICATE-----\nAA*A\n-----END CERTIFICATE-----\n", "base64"),
])
def test_malformed_blocks_are_refused_with_the_reason(text: bytes, why: str) -> None:
    with pytest.raises(pem.PemError, match=why):
        pem.blocks(text)


@given(st.lists(st.tuples(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                          st.binary(max_size=100)), max_size=5))
def test_blocks_round_trip_whatever_text_lies_between(items: list[tuple[str, bytes]]) -> None:
    # Runs of dashes shrink below five: the noise can never begin or end a block of its own.
    text = b"".join(noise.replace("-----", "").encode() + b"\n" + pem.Block("CERTIFICATE", der, 0).encode()
                    for noise, der in items)
    assert [b.der for b in pem.blocks(text)] == [der for _, der in items]


# ---------------------------------------------------------------------------------------------------- bounded reads


def test_read_regular_follows_symlinks_like_certbots_live_directory(tmp_path: Path) -> None:
    lin = write_lineage(tmp_path / "live" / "a.example", archive_symlinks=True)
    assert lin.privkey.is_symlink()
    data, status = files.read_regular(lin.privkey)
    assert data == lin.privkey.read_bytes() and stat.S_ISREG(status.st_mode)


def test_read_regular_refuses_what_is_not_a_bounded_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a plain open() would block forever
    big = tmp_path / "big"
    big.write_bytes(b"x" * (files.MAX_INPUT_BYTES + 1))
    cases = {fifo: "FIFO", tmp_path: "directory", Path("/dev/zero"): "character device", big: "1 MiB"}
    for path, why in cases.items():
        with pytest.raises(files.RefusedFile) as err:
            files.read_regular(path)
        assert why in str(err.value.strerror), path
    # A regular file whose size says 0 but which holds more (procfs): bounded by what is read, not by st_size.
    assert Path("/proc/self/status").stat().st_size == 0
    with pytest.raises(files.RefusedFile, match="grew past 10 bytes"):
        files.read_regular(Path("/proc/self/status"), limit=10)
    exact = tmp_path / "exact"
    exact.write_bytes(b"y" * files.MAX_INPUT_BYTES)
    assert len(files.read_regular(exact)[0]) == files.MAX_INPUT_BYTES


# ---------------------------------------------------------------------------------------------------- what ships


def combined(lin: LineagePaths, where: Path) -> Path:
    """One file with the key first, then the chain, with OpenSSL's explanatory text around."""
    where.write_bytes(lin.privkey.read_bytes() + OPENSSL_TEXT + lin.fullchain.read_bytes())
    where.chmod(0o600)
    return where


def test_key_in_a_certificate_file_is_warned_about_and_never_in_the_chain(
        lin: LineagePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fullchain = combined(lin, tmp_path / "fullchain-with-key.pem")
    source = lineage.from_files(None, str(lin.privkey), None, str(fullchain), None)
    artefact = lineage.load(source)
    assert artefact.fullchain_pem == lin.fullchain.read_bytes()
    assert artefact.key_pem == lin.privkey.read_bytes()
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(fullchain) in warning and "private key" in warning


def test_one_combined_file_gives_chain_and_key_apart_without_a_warning(
        lin: LineagePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    both = combined(lin, tmp_path / "both.pem")
    artefact = lineage.load(lineage.from_files(None, str(both), None, str(both), None))
    assert artefact.fullchain_pem == lin.fullchain.read_bytes()
    assert artefact.key_pem == lin.privkey.read_bytes()
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


def test_stray_blocks_are_named_once_per_file(lin: LineagePaths, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    cert = tmp_path / "cert.pem"
    params = pem.Block("EC PARAMETERS", b"\x06\x08*\x86H\xce=\x03\x01\x07", 0).encode()
    cert.write_bytes(lin.cert.read_bytes() + params + lin.privkey.read_bytes())
    # Named twice (as --cert and --fullchain), read once, warned about once.
    artefact = lineage.load(lineage.from_files(str(cert), str(lin.privkey), None, str(cert), None))
    assert artefact.fullchain_pem == lin.cert.read_bytes()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum(str(cert) in w and "private key" in w for w in warnings) == 1
    assert sum(str(cert) in w and "EC PARAMETERS" in w for w in warnings) == 1


def test_key_file_must_hold_exactly_one_plain_private_key(lin: LineagePaths, tmp_path: Path) -> None:
    two = tmp_path / "two.pem"
    two.write_bytes(lin.privkey.read_bytes() * 2)
    enc = tmp_path / "enc.pem"
    enc.write_bytes(pem.Block("ENCRYPTED PRIVATE KEY", b"\x30\x00", 0).encode())
    for path, why in ((two, "2 private keys"), (enc, "encrypted"), (lin.cert, "no PEM private key")):
        with pytest.raises(CertificateError, match=why) as err:
            lineage.load(lineage.from_files(None, str(path), None, str(lin.fullchain), None))
        assert str(path) in str(err.value)


def test_a_leaf_outside_its_validity_window_is_refused_with_its_dates(tmp_path: Path) -> None:
    start = dt.datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    lin = write_lineage(tmp_path / "live" / "future", not_before=start, not_after=start + dt.timedelta(days=90))
    source = lineage.from_lineage_dir(lin.live_dir)
    with pytest.raises(CertificateError, match="not valid yet") as early:
        lineage.load(source, now=start - dt.timedelta(days=1))
    assert "2030-01-02 03:04" in str(early.value) and "2030-04-02 03:04" in str(early.value)
    with pytest.raises(CertificateError, match="expired") as late:
        lineage.load(source, now=start + dt.timedelta(days=91))
    assert "2030-01-02 03:04" in str(late.value) and "2030-04-02 03:04" in str(late.value)
    assert lineage.load(source, now=start + dt.timedelta(days=1)).facts.not_before == start
    # A host clock a little behind the CA's, just after issuance: tolerated up to CLOCK_SKEW, not beyond.
    assert lineage.load(source, now=start - lineage.CLOCK_SKEW).facts.not_before == start
    with pytest.raises(CertificateError, match="not valid yet"):
        lineage.load(source, now=start - lineage.CLOCK_SKEW - dt.timedelta(seconds=1))


# ---------------------------------------------------------------------------------------------------- key file


def status(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 1, 1, 1, uid, 0, 100, 0, 0, 0))


@pytest.mark.parametrize(("mode", "uid", "expected"), [
    (0o600, 0, []),
    (0o400, 1000, []),  # the runner's own file
    (0o640, 0, ["group", "mode 0640", "chmod 600 '/etc/k y.pem'"]),
    (0o604, 0, ["others", "chmod 600"]),
    (0o660, 0, ["group"]),
    (0o600, 4242, ["uid 4242", "chown 1000 '/etc/k y.pem'"]),
])
def test_key_file_warnings_name_the_file_and_the_fix(mode: int, uid: int, expected: list[str]) -> None:
    text = " | ".join(files.exposure(Path("/etc/k y.pem"), status(mode, uid), 1000, "private key file"))
    assert all(part in text for part in expected), text
    assert bool(text) == bool(expected)
    assert ("/etc/k y.pem" in text) == bool(expected)


def test_a_directory_holding_secrets_is_held_to_0700_by_the_same_check() -> None:
    open_dir = os.stat_result((stat.S_IFDIR | 0o755, 1, 1, 1, 1000, 0, 100, 0, 0, 0))
    (problem,) = files.exposure(Path("/etc/x/credentials"), open_dir, 1000, "credentials directory")
    assert problem == ("credentials directory /etc/x/credentials is open to group and others (mode 0755); it should "
                       "be 0700; fix: chmod 700 /etc/x/credentials")
    assert files.exposure(Path("/etc/x/credentials"), os.stat_result((stat.S_IFDIR | 0o700, 1, 1, 1, 0, 0, 100, 0, 0,
                                                                       0)), 1000, "credentials directory") == []


# ---------------------------------------------------------------------------------------------------- declarations


def clear_key_builder(artefact: Artefact, secret: Secret | None) -> tuple[Attachment, ...]:
    return (Attachment("k.pem", "application/x-pem-file", artefact.key_pem, contains_private_key=True),)


def test_an_extension_shipping_the_key_in_clear_is_held_to_pem_and_keys_rules() -> None:
    formats: dict[str, Any] = {f.name: f for f in BUILTIN_FORMATS}
    formats["vault"] = PayloadFormat("vault", "the key, in clear", clear_key_builder, ships_private_key=True)
    base = {"host": "relay.example.com", "tls_mode": "plaintext", "from_address": "a@example.com",
            "to": ["b@example.com"]}
    for name, refused in (("vault", True), ("pem_and_key", True), ("pkcs12", False), ("pem", False)):
        table = {**base, "payload": name, "pkcs12_passphrase_credential": "p12"}
        doc = {"targets": {"t": table}}
        try:
            parse_settings(doc, Path("c.toml"), {"p12": "smtp_pkcs12_passphrase"}, formats)
            problems = set()
        except ConfigError as exc:
            problems = {(p.target, p.key) for p in exc.problems}
        assert (("t", "payload") in problems) == refused, name


def test_key_encrypted_needs_a_credential_to_encrypt_with() -> None:
    with pytest.raises(ValueError, match="credential_type"):
        PayloadFormat("x", "", clear_key_builder, ships_private_key=True, key_encrypted=True)
    assert not BUILTIN_FORMATS[2].key_in_clear and BUILTIN_FORMATS[1].key_in_clear


def test_a_format_gets_the_key_only_if_it_declares_shipping_it(lin: LineagePaths) -> None:
    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    undeclared = PayloadFormat("sneaky", "", lambda a, s: (Attachment("k", "text/plain", a.key_pem),))
    [att] = payloads.build(undeclared, artefact, None).attachments
    assert att.data == b""
    flagged = PayloadFormat("flagged", "", clear_key_builder)
    with pytest.raises(PayloadError, match="ships_private_key"):
        payloads.build(flagged, artefact, None)
    declared = PayloadFormat("open", "", clear_key_builder, ships_private_key=True)
    [att] = payloads.build(declared, artefact, None).attachments
    assert base64.b64encode(key_der(lin))[:40] in att.data.replace(b"\n", b"")


def test_a_path_no_system_call_accepts_is_a_certificate_problem_not_a_traceback(lin: LineagePaths) -> None:
    source = lineage.from_files(None, "key\0.pem", None, str(lin.fullchain), None)  # e.g. from a spool entry
    with pytest.raises(CertificateError, match="not a valid path"):
        lineage.load(source)


def test_every_format_shipping_the_key_in_clear_is_warned_about_on_every_run(caplog: pytest.LogCaptureFixture) -> None:
    from certbot_smtp_dist._internal.pipeline import warn_about

    vault = PayloadFormat("vault", "the key, in clear", clear_key_builder, ships_private_key=True)
    formats: dict[str, Any] = {**{f.name: f for f in BUILTIN_FORMATS}, "vault": vault}
    table = {"host": "relay.example.com", "from_address": "a@example.com", "to": ["b@example.com"]}
    target = parse_settings({"targets": {"t": table}}, Path("c.toml"), {}, formats).targets[0]
    warned = {}
    for fmt in formats.values():
        caplog.clear()
        warn_about(target, fmt)
        warned[fmt.name] = any("PRIVATE KEY" in r.getMessage() and fmt.name in r.getMessage() for r in caplog.records)
    assert warned == {"pem": False, "pem_and_key": True, "pkcs12": False, "notice": False,
                      "vault": True}


def test_a_hostile_file_cannot_make_a_message_long(lin: LineagePaths, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Labels and stray blocks are quoted bounded: a 1 MiB label or a thousand odd blocks do not flood logs or JSON."""
    huge = "A" * 500_000
    with pytest.raises(pem.PemError) as err:
        pem.blocks(f"-----BEGIN {huge}-----\nAAAA\n".encode())
    assert len(str(err.value)) < 200
    cert = tmp_path / "cert.pem"
    odd = b"".join(pem.Block(f"ODD {i} {huge[:100]}", b"x", 0).encode() for i in range(1000))
    cert.write_bytes(lin.fullchain.read_bytes() + odd)
    lineage.load(lineage.from_files(None, str(lin.privkey), None, str(cert), None))
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "and 995 more" in warning and len(warning) < 600


def test_a_chain_of_more_certificates_than_any_real_one_is_refused(lin: LineagePaths, tmp_path: Path) -> None:
    long_chain = tmp_path / "fullchain.pem"
    long_chain.write_bytes(lin.fullchain.read_bytes() + lin.chain.read_bytes() * (lineage.MAX_CERTIFICATES - 1))
    with pytest.raises(CertificateError, match=f"holds {lineage.MAX_CERTIFICATES + 1} certificates") as err:
        lineage.load(lineage.from_files(None, str(lin.privkey), None, str(long_chain), None))
    assert str(long_chain) in str(err.value)
