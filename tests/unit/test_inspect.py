"""`inspect`: the offline diagnosis of a lineage, its exit statuses, its JSON document and its hostile-input safety.

Each case writes real files (support.pki) and runs the real command in-process; the trust store is the test
root given with --ca-file, or a hashed directory / bundle the test builds and points SSL_CERT_DIR / SSL_CERT_FILE at.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from support import pki
from support.deployenv import DeployEnv, Run

from certbot_smtp_dist._internal import anchors

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT = 0, 64, 65, 66
HOSTILE_CN = "evil\r\nX-Injected: yes =?utf-8?q?=0D=0A?=\x1b\u2028Diagnostics:"  # 56 bytes: CN allows 64


@pytest.fixture
def denv(tmp_path: Path) -> DeployEnv:
    return DeployEnv(tmp_path / "env")


@pytest.fixture
def lin(tmp_path: Path) -> pki.LineagePaths:
    return pki.write_lineage(tmp_path / "live" / "test.example.com", archive_symlinks=True)


def inspect(denv: DeployEnv, *args: str, env: dict[str, str] | None = None) -> Run:
    run = denv.run("inspect", *args, extra_env=env)
    assert "Traceback" not in run.stderr, run.stderr
    return run


def as_json(denv: DeployEnv, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    run = inspect(denv, *args, "--json", env=env)
    doc = json.loads(run.stdout)
    assert doc["exit_status"] == run.returncode
    return run.returncode, doc


def codes(doc: dict[str, Any], severity: str | None = None) -> list[str]:
    return [f["code"] for f in doc["findings"] if severity is None or f["severity"] == severity]


def files_args(lin: pki.LineagePaths, fullchain: Path) -> list[str]:
    return ["--fullchain", str(fullchain), "--key", str(lin.privkey), "--ca-file", str(lin.root_file)]


def test_good_lineage_with_its_root_is_ok(denv: DeployEnv, lin: pki.LineagePaths) -> None:
    """live/ links into archive/, as certbot writes them: read as deploy reads them."""
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file))
    assert status == EX_OK and doc["verdict"] == "ok", doc["findings"]
    assert codes(doc, "error") == [] and codes(doc, "warning") == []
    assert {"key", "trust-anchor", "validity"} <= set(codes(doc, "info"))
    assert [c["role"] for c in doc["chain"]] == ["leaf", "intermediate"]
    assert doc["trust_anchor"] == "CN=Test ACME Root X1"
    assert doc["certificate"]["sans"] == ["test.example.com", "www.test.example.com"]
    assert doc["certificate"]["key"] == "ECDSA P-256" and 88 <= doc["certificate"]["days_left"] <= 90
    text = inspect(denv, "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file))
    assert text.returncode == EX_OK and text.stdout.splitlines()[0].endswith("OK (0 error(s), 0 warning(s))")


def test_leaf_only_names_the_missing_intermediate(denv: DeployEnv, lin: pki.LineagePaths) -> None:
    status, doc = as_json(denv, *files_args(lin, lin.cert))  # cert.pem given as the full chain
    assert status == EX_DATAERR and doc["verdict"] == "error"
    [missing] = [f for f in doc["findings"] if f["code"] == "missing-intermediate"]
    assert "CN=Test ACME Intermediate R1" in missing["message"]
    assert "fullchain.pem, not cert.pem" in missing["fix"]
    assert [c["role"] for c in doc["chain"]] == ["leaf"]


def test_wrong_order_is_an_error_that_gives_the_order(denv: DeployEnv, lin: pki.LineagePaths,
                                                      tmp_path: Path) -> None:
    swapped = pki.write_pem(tmp_path / "swapped.pem", lin.intermediate, lin.leaf)
    status, doc = as_json(denv, *files_args(lin, swapped))
    assert status == EX_DATAERR
    [order] = [f for f in doc["findings"] if f["code"] == "chain-order"]
    assert order["severity"] == "error"
    assert "1. CN=test.example.com, 2. CN=Test ACME Intermediate R1" in order["fix"]
    assert [c["role"] for c in doc["chain"]] == ["intermediate", "leaf"]
    assert "key-mismatch" not in codes(doc)  # the key is matched to the leaf wherever it sits


def test_root_included_is_a_warning_only(denv: DeployEnv, lin: pki.LineagePaths, tmp_path: Path) -> None:
    with_root = pki.write_pem(tmp_path / "with-root.pem", lin.leaf, lin.intermediate, lin.root)
    status, doc = as_json(denv, *files_args(lin, with_root))
    assert status == EX_OK and doc["verdict"] == "warning"
    assert codes(doc, "warning") == ["root-included"] and codes(doc, "error") == []
    assert [c["role"] for c in doc["chain"]] == ["leaf", "intermediate", "root"]
    text = inspect(denv, *files_args(lin, with_root)).stdout
    assert "warning: the chain includes the root CN=Test ACME Root X1" in text
    assert "fix: ship the chain without its last certificate" in text


def test_key_mismatch(denv: DeployEnv, tmp_path: Path) -> None:
    lin = pki.write_lineage(tmp_path / "live" / "m.example.com", key_mismatch=True)
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file))
    assert status == EX_DATAERR and codes(doc, "error") == ["key-mismatch"]


def test_expired_leaf(denv: DeployEnv, tmp_path: Path) -> None:
    lin = pki.write_lineage(tmp_path / "live" / "old.example.com", expired=True)
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file))
    assert status == EX_DATAERR and codes(doc, "error") == ["expired"]
    assert doc["certificate"]["days_left"] < 0


def test_expired_intermediate_and_soon_expiring_leaf(denv: DeployEnv, lin: pki.LineagePaths,
                                                     tmp_path: Path) -> None:
    before, after = pki.expired_window()
    old = pki.issue(lin.root, common_name="Old Intermediate", is_ca=True, not_before=before, not_after=after)
    soon = pki.issue(old, sans=["soon.example"], key=lin.key, not_after=pki.utcnow() + dt.timedelta(days=3))
    chain = pki.write_pem(tmp_path / "chain.pem", soon, old)
    status, doc = as_json(denv, *files_args(lin, chain))
    assert status == EX_DATAERR
    assert any("the issuer CN=Old Intermediate expired" in f["message"] for f in doc["findings"]
               if f["code"] == "expired")
    assert "expires-soon" in codes(doc, "warning")


def test_expired_cross_signature_after_the_anchor_is_not_an_error(denv: DeployEnv, lin: pki.LineagePaths,
                                                                    tmp_path: Path) -> None:
    """Let's Encrypt's former long chain: ISRG Root X1 cross-signed by an expired DST Root CA X3, shipped after
    the intermediate for old clients. A verifier stops at the anchor; so does inspect."""
    before, after = pki.expired_window()
    old_root = pki.make_ca("Old Root CA", not_before=before - dt.timedelta(days=3000), not_after=after)
    cross = pki.issue(old_root, common_name="Test ACME Root X1", is_ca=True, key=lin.root.key, not_before=before,
                      not_after=after)
    chain = pki.write_pem(tmp_path / "long.pem", lin.leaf, lin.intermediate, cross)
    status, doc = as_json(denv, *files_args(lin, chain))
    assert status == EX_OK and codes(doc, "error") == [], doc["findings"]
    [anchored] = [f for f in doc["findings"] if f["code"] == "trust-anchor"]
    assert "1 certificate(s) after that are not needed" in anchored["message"]
    assert doc["trust_anchor"] == "CN=Test ACME Root X1"


@pytest.mark.parametrize(("key_type", "shown"), [("rsa", "RSA 2048 bits"), ("ec", "ECDSA P-256"),
                                                  ("ed25519", "Ed25519")])
def test_key_types_on_this_stack(denv: DeployEnv, tmp_path: Path, key_type: pki.KeyType, shown: str) -> None:
    """The whole chain signed with each key type: on cryptography 38 through the direct signature checks."""
    lin = pki.write_lineage(tmp_path / "live" / f"{key_type}.example.com", key_type=key_type)
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file))
    assert status == EX_OK and doc["certificate"]["key"] == shown, doc["findings"]
    assert f"the private key matches the leaf ({shown})" in [f["message"] for f in doc["findings"]]


def test_weak_key_and_missing_san(denv: DeployEnv, lin: pki.LineagePaths, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf = pki.issue(lin.intermediate, common_name="weak.example", key=weak)  # a CN and no SAN
    chain = pki.write_pem(tmp_path / "weak.pem", leaf, lin.intermediate)
    key = tmp_path / "weak.key"
    pki.write_private(key, pki.key_pem(weak))
    status, doc = as_json(denv, "--fullchain", str(chain), "--key", str(key), "--ca-file", str(lin.root_file))
    assert status == EX_DATAERR and codes(doc, "error") == ["weak-key"] and codes(doc, "warning") == ["no-san"]


def test_forged_intermediate_is_named(denv: DeployEnv, tmp_path: Path) -> None:
    lin = pki.write_lineage(tmp_path / "live" / "f.example.com", bad_chain_signature=True)
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file))
    assert status == EX_DATAERR and "chain-signature" in codes(doc, "error")
    assert codes(doc, "warning") == ["unrelated-certificate"]


def test_duplicate_and_unrelated_certificates_are_warnings(denv: DeployEnv, lin: pki.LineagePaths,
                                                           tmp_path: Path) -> None:
    stranger = pki.make_ca("Somebody Else")
    chain = pki.write_pem(tmp_path / "extra.pem", lin.leaf, lin.intermediate, lin.intermediate, stranger)
    status, doc = as_json(denv, *files_args(lin, chain))
    assert status == EX_OK
    assert sorted(codes(doc, "warning")) == ["duplicate-certificate", "unrelated-certificate"]


def _hashed_dir(tmp_path: Path, *cas: pki.Issued) -> Path:
    """A c_rehash-style directory: <subject hash>.0 for each CA (what update-ca-certificates writes)."""
    directory = tmp_path / "capath"
    directory.mkdir(exist_ok=True)
    for ca in cas:
        digest = hashlib.sha1(anchors.canonical(ca.cert.subject.public_bytes())).digest()
        (directory / f"{int.from_bytes(digest[:4], 'little'):08x}.0").write_bytes(ca.cert_pem())
    return directory


def test_system_store_by_hashed_directory(denv: DeployEnv, lin: pki.LineagePaths, tmp_path: Path) -> None:
    untrusted, doc = as_json(denv, "--lineage", str(lin.live_dir))
    assert untrusted == EX_DATAERR and codes(doc, "error") == ["no-trust-anchor"]
    assert "--ca-file" in doc["findings"][0]["fix"] and doc["trust_anchor"] is None
    env = {"SSL_CERT_DIR": str(_hashed_dir(tmp_path, lin.root)), "SSL_CERT_FILE": str(tmp_path / "none.pem")}
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), env=env)
    assert status == EX_OK, doc["findings"]
    assert doc["trust_anchor"] == "CN=Test ACME Root X1" and doc["trust_store"] == "the system trust store"


def test_system_store_by_bundle_when_no_hashed_directory(denv: DeployEnv, lin: pki.LineagePaths,
                                                         tmp_path: Path) -> None:
    bundle = pki.write_pem(tmp_path / "bundle.pem", pki.make_ca("Other Root"), lin.root)
    env = {"SSL_CERT_DIR": str(tmp_path / "no-such-dir"), "SSL_CERT_FILE": str(bundle)}
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), env=env)
    assert status == EX_OK and doc["trust_anchor"] == "CN=Test ACME Root X1", doc["findings"]


def test_ca_file_that_does_not_issue_the_chain(denv: DeployEnv, lin: pki.LineagePaths, tmp_path: Path) -> None:
    impostor = pki.make_ca("Test ACME Root X1")  # same name, other key: no anchor
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file",
                          str(pki.write_pem(tmp_path / "impostor.pem", impostor)))
    assert status == EX_DATAERR and codes(doc, "error") == ["no-trust-anchor"]


def test_ca_file_unreadable_or_empty(denv: DeployEnv, lin: pki.LineagePaths, tmp_path: Path) -> None:
    missing, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(tmp_path / "nope.pem"))
    assert missing == EX_NOINPUT and codes(doc) == ["unreadable"] and "nope.pem" in doc["findings"][0]["message"]
    (tmp_path / "empty.pem").write_text("nothing here\n")
    empty, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(tmp_path / "empty.pem"))
    assert empty == EX_DATAERR and "holds no PEM certificate" in doc["findings"][0]["message"]


def test_unreadable_inputs_go_through_the_bounded_readers(denv: DeployEnv, lin: pki.LineagePaths,
                                                          tmp_path: Path) -> None:
    gone, doc = as_json(denv, "--lineage", str(tmp_path / "live" / "absent"))
    assert gone == EX_NOINPUT and set(codes(doc)) == {"unreadable"} and doc["certificate"] is None
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)  # a FIFO would block a plain open(): refused before it is opened
    status, doc = as_json(denv, "--fullchain", str(fifo), "--key", str(lin.privkey))
    assert status == EX_NOINPUT and "not a regular file" in doc["findings"][0]["message"]


def test_key_file_open_to_others_is_a_warning(denv: DeployEnv, lin: pki.LineagePaths) -> None:
    lin.privkey.chmod(0o644)  # through live/'s link, onto the archive file: what is read is what is judged
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file))
    assert status == EX_OK and codes(doc, "warning") == ["key-file-exposed"]
    [exposed] = [f for f in doc["findings"] if f["code"] == "key-file-exposed"]
    assert "mode 0644" in exposed["message"] and exposed["fix"].startswith("chmod 600 ")


def test_usage_errors(denv: DeployEnv, lin: pki.LineagePaths) -> None:
    assert inspect(denv).returncode == EX_USAGE
    both = inspect(denv, "--lineage", str(lin.live_dir), "--cert", str(lin.cert))
    assert both.returncode == EX_USAGE and "exclusive" in both.stderr


SCHEMA_KEYS = {"schema", "verdict", "exit_status", "source", "trust_store", "certificate", "chain", "trust_anchor",
               "findings"}


def test_json_document_schema(denv: DeployEnv, lin: pki.LineagePaths, tmp_path: Path) -> None:
    """Every key README.rst documents, with its type, for a good and a broken artefact."""
    readme = (Path(__file__).parents[2] / "README.rst").read_text()
    for args in (["--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file)], files_args(lin, lin.cert)):
        _, doc = as_json(denv, *args)
        assert set(doc) == SCHEMA_KEYS and doc["schema"] == "certbot-smtp-dist/inspect/1"
        assert doc["verdict"] in ("ok", "warning", "error") and isinstance(doc["exit_status"], int)
        assert set(doc["source"]) == {"lineage", "cert", "chain", "fullchain", "key"}
        assert set(doc["certificate"]) == {"subject", "issuer", "sans", "key", "not_before", "not_after",
                                           "days_left", "serial"}
        for cert in doc["chain"]:
            assert set(cert) == {"position", "role", "subject", "issuer", "not_after", "sha256_fingerprint"}
            assert cert["role"] in ("leaf", "intermediate", "root", "unrelated")
        for finding in doc["findings"]:
            assert set(finding) == {"severity", "code", "message", "fix"}
            assert finding["severity"] in ("error", "warning", "info")
            assert f"``{finding['code']}``" in readme, f"finding code {finding['code']} is not documented"
        for key in SCHEMA_KEYS:
            assert f"``{key}``" in readme, f"{key} is not documented in README.rst"


def test_hostile_certificate_cannot_inject_lines(denv: DeployEnv, tmp_path: Path) -> None:
    root = pki.make_ca(HOSTILE_CN)
    leaf = pki.issue(root, common_name=HOSTILE_CN, sans=["ok.example", "evil\n.example"])
    chain = pki.write_pem(tmp_path / "hostile.pem", leaf, root)
    key = tmp_path / "hostile.key"
    pki.write_private(key, leaf.key_pem())
    run = inspect(denv, "--fullchain", str(chain), "--key", str(key))
    assert run.returncode == EX_DATAERR  # the hostile root is in no store
    lines = run.stdout.splitlines()
    assert not [ln for ln in lines if re.match(r"\s*(X-Injected|Bcc|Diagnostics)", ln)], run.stdout
    assert all(ln.isprintable() for ln in lines), [ln for ln in lines if not ln.isprintable()]
    assert "evil??X-Injected: yes" in run.stdout
    doc = json.loads(inspect(denv, "--fullchain", str(chain), "--key", str(key), "--json").stdout)
    assert all(c["subject"].isprintable() for c in doc["chain"])
    assert all(f["message"].isprintable() for f in doc["findings"])
    assert "evil?.example" in doc["certificate"]["sans"]


@pytest.mark.parametrize("part", ["subjectAltName", "subject", "issuer"])
def test_a_leaf_whose_names_do_not_decode_is_unparseable_not_a_traceback(denv: DeployEnv, tmp_path: Path,
                                                                        part: str) -> None:
    """A subjectAltName DNSName of bytes over 0x7F (signed by its issuer: the chain verifies), or a subject or
    issuer with a NumericString of such bytes: cryptography decodes names and extensions on first use and raised
    ValueError out of inspect (diagnose, the chain check) and deploy (lineage facts), a traceback instead of exit
    65 naming the file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtensionOID, NameOID

    lin = pki.write_lineage(tmp_path / "live" / "bad.example")
    now = dt.datetime.now(dt.timezone.utc)
    san = bytes([0x30, 11, 0x82, 9]) + b"\xff\xfe.exampl"  # SEQUENCE { [2] IA5String }: not ASCII
    mark = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bad.example"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QQQQQQQQ")])
    builder = (x509.CertificateBuilder()
               .subject_name(mark if part == "subject" else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                         "bad.example")]))
               .issuer_name(mark if part == "issuer" else lin.intermediate.cert.subject)
               .public_key(lin.leaf.key.public_key()).serial_number(4242)
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30)))
    if part == "subjectAltName":
        builder = builder.add_extension(x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san),
                                        critical=False)
    der = builder.sign(lin.intermediate.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    der = der.replace(b"\x0c\x08QQQQQQQQ", b"\x12\x08" + bytes(range(0xF8, 0x100)))  # the signature breaks: parsed first
    cert = x509.load_der_x509_certificate(der)
    pki.write_pem(lin.cert, cert)
    pki.write_pem(lin.fullchain, cert, lin.intermediate)
    status, doc = as_json(denv, "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file))
    assert status == EX_DATAERR and set(codes(doc, "error")) == {"undecodable"}, doc["findings"]  # cert, fullchain
    assert "certificate #1" in doc["findings"][0]["message"], doc["findings"]
    assert "does not decode" in doc["findings"][0]["message"], doc["findings"]
    denv.write_config({"t": {"host": "127.0.0.1", "port": 2, "from_address": "certbot@example.com",
                             "to": ["pki@example.com"]}})
    run = denv.run("deploy", "--dry-run", "--output", str(tmp_path / "out"), "--lineage", str(lin.live_dir))
    assert "Traceback" not in run.stderr and run.returncode == EX_DATAERR, run.stderr
    assert "certificate #1" in run.stderr and "does not decode" in run.stderr, run.stderr


def test_a_chain_that_loops_is_named_as_a_loop(denv: DeployEnv, lin: pki.LineagePaths, tmp_path: Path) -> None:
    """A issues B and B issues A (each signature real): the path stops, and the finding does not claim that the
    issuer is missing from a chain that holds it."""
    b_root = pki.make_ca("loop B")
    a = pki.issue(b_root, common_name="loop A", is_ca=True)  # issuer B, signed by B's key
    b = pki.issue(a, common_name="loop B", is_ca=True, key=b_root.key)  # issuer A, signed by A's key
    leaf = pki.issue(a, sans=("loop.example",))
    fullchain = tmp_path / "loop.pem"
    fullchain.write_bytes(leaf.cert_pem() + a.cert_pem() + b.cert_pem())
    key = tmp_path / "loop.key"
    pki.write_private(key, leaf.key_pem())

    status, doc = as_json(denv, "--fullchain", str(fullchain), "--key", str(key), "--ca-file", str(lin.root_file))

    assert status == EX_DATAERR and "no-trust-anchor" in codes(doc, "error")
    [finding] = [f for f in doc["findings"] if f["code"] == "no-trust-anchor"]
    assert "neither in the chain" not in finding["message"] and "loop" in finding["message"], finding


@pytest.mark.parametrize("case", ["nothing given", "both given"])
def test_usage_errors_print_one_json_document(denv: DeployEnv, lin: pki.LineagePaths, case: str) -> None:
    """Every --json path prints one document, a usage error (exit 64) too: the keys of the schema, empty, and
    `usage_error` saying what was wrong (the line on stderr stays)."""
    args = [] if case == "nothing given" else ["--lineage", str(lin.live_dir), "--cert", str(lin.cert)]
    code, doc = as_json(denv, *args)
    assert code == EX_USAGE and set(doc) == SCHEMA_KEYS | {"usage_error"}
    assert doc["schema"] == "certbot-smtp-dist/inspect/1" and doc["verdict"] == "error" and doc["findings"] == []
    assert ("exclusive" if case == "both given" else "give --lineage") in doc["usage_error"]
