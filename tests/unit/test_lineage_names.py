"""Certificate names in a lineage: one that does not decode is refused as the file is read, naming the file and
what does not decode (deploy, retry, the certbot plugin: CertificateError, exit 65; inspect: an `undecodable`
finding); one that decodes but is hostile (escapes, line breaks, kilobytes) reaches the facts, and from there
mail headers, bodies, logs and JSON, printable and bounded.

cryptography reads names lazily: these certificates load, then raise ValueError or TypeError where a name is
read (on cryptography 38 and today's alike; today's refuses a few at load already: "does not parse").
"""

from __future__ import annotations

import email
import email.policy
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from support import pki

from certbot_smtp_dist._internal import anchors, diagnose, inspection, lineage, report
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist._internal.render import render
from certbot_smtp_dist.errors import CertificateError
from certbot_smtp_dist.model import Payload, Severity

NOW = datetime.now(timezone.utc)
# What each kind makes a reader say, and the files it is said of (the leaf is in cert.pem and fullchain.pem; the
# "issuer" kind's intermediate, whose subject is the leaf's issuer name, in chain.pem and fullchain.pem).
SAID: dict[pki.Undecodable, str] = {
    "numeric subject": "its subject does not decode", "printable subject": "its subject does not decode",
    "odd bmp subject": "its subject does not decode", "bit string subject": "its subject does not decode",
    "issuer": "its issuer name does not decode",
    "san dns name": "the subjectAltName extension (2.5.29.17) does not decode",
    "san tag": "the subjectAltName extension (2.5.29.17) does not decode",
    "duplicate extension": "the subjectAltName extension (2.5.29.17) does not decode (it appears twice",
    "key usage": "the keyUsage extension (2.5.29.15) does not decode"}  # not the SAN: cryptography decodes all
REFUSED_AT_LOAD = "does not parse"  # cryptography >= 39 refuses a PrintableString over 0x7F, an odd BMPString


@pytest.fixture(params=pki.UNDECODABLE)
def undecodable(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[pki.Undecodable, pki.LineagePaths]:
    kind: pki.Undecodable = request.param
    return kind, pki.write_undecodable_lineage(tmp_path / "live" / "undecodable.example", kind)


def test_a_name_that_does_not_decode_is_a_certificate_error_naming_each_file(
        undecodable: tuple[pki.Undecodable, pki.LineagePaths]) -> None:
    kind, lin = undecodable
    with pytest.raises(CertificateError) as err:
        lineage.load(lineage.from_lineage_dir(lin.live_dir), NOW)
    problems = err.value.problems
    files = {"cert": lin.cert, "fullchain": lin.fullchain} | ({"chain": lin.chain} if kind == "issuer" else {})
    for label, path in files.items():
        [said] = [p for p in problems if p.startswith(f"{label} file {path}: certificate #1")]
        expected = SAID["numeric subject"] if (kind, label) == ("issuer", "chain") else SAID[kind]
        assert expected in said or REFUSED_AT_LOAD in said, said
        assert said.isprintable() and len(said) < 400, said
    if kind in ("numeric subject", "bit string subject", "issuer", "san dns name", "san tag", "duplicate extension",
                "key usage"):
        assert all(SAID[kind] in p or "its subject does not decode" in p for p in problems), problems  # both stacks
    if kind.startswith("san") or kind in ("duplicate extension", "key usage"):
        assert f"(CN={pki.UNDECODABLE_CN})" in problems[0], problems  # the subject decodes: it names the certificate


def test_the_same_certificate_given_as_files_is_refused_as_well(
        undecodable: tuple[pki.Undecodable, pki.LineagePaths]) -> None:
    """lego's one file (--fullchain with --key): the file named is that one, nothing else is read."""
    _, lin = undecodable
    with pytest.raises(CertificateError) as err:
        lineage.load(lineage.from_files(None, str(lin.privkey), None, str(lin.fullchain), "x"), NOW)
    assert [p.split(":")[0] for p in err.value.problems] == [f"fullchain file {lin.fullchain}"]


def test_undecodable_says_what_does_not_decode_and_nothing_of_a_sound_certificate(tmp_path: Path) -> None:
    sound = pki.write_lineage(tmp_path / "sound")
    assert diagnose.undecodable(sound.leaf.cert) == () and diagnose.undecodable(sound.intermediate.cert) == ()
    for kind in ("numeric subject", "bit string subject", "issuer", "san tag", "duplicate extension", "key usage"):
        lin = pki.write_undecodable_lineage(tmp_path / kind.replace(" ", "-"), kind)
        leaf = x509.load_pem_x509_certificate(lin.cert.read_bytes())
        said = diagnose.undecodable(leaf)
        assert len(said) == 1 and SAID[kind] in said[0] and diagnose.NOT_DECODED in said[0], (kind, said)
        if kind == "issuer":
            assert diagnose.undecodable(x509.load_pem_x509_certificate(lin.chain.read_bytes())) == (
                "its subject does not decode (ValueError)",)


def test_inspect_reports_an_undecodable_finding_with_exit_65_and_valid_json(
        undecodable: tuple[pki.Undecodable, pki.LineagePaths]) -> None:
    kind, lin = undecodable
    found = inspection.inspect(lineage.from_lineage_dir(lin.live_dir), anchors.file_store(lin.root_file), NOW)
    assert found.exit_status == report.EX_DATAERR and found.verdict == "error"
    errors = [f for f in found.findings if f.severity is Severity.ERROR]
    assert errors and all(f.code in ("undecodable", "unparseable") for f in errors), errors
    if kind != "printable subject" and kind != "odd bmp subject":  # refused at load by cryptography >= 39
        assert {f.code for f in errors} == {"undecodable"}
        assert all(f.fix == inspection.UNDECODABLE_FIX for f in errors)
    doc = json.loads(inspection.as_json(found))
    assert doc["exit_status"] == 65 and doc["certificate"] is None and doc["chain"] == []
    assert any(str(lin.fullchain) in f["message"] for f in doc["findings"])
    text = inspection.as_text(found)
    assert all(line.isprintable() for line in text.splitlines()) and "ERROR" in text.splitlines()[0]


def test_the_certbot_plugin_names_no_names_for_it(undecodable: tuple[pki.Undecodable, pki.LineagePaths]) -> None:
    """The plugin matches `certificates` filters against the lineage's names before deploying: none, no
    traceback inside certbot (the deploy that follows fails with exit 65, as above)."""
    from certbot_smtp_dist._internal import certbot_adapter

    _, lin = undecodable
    assert certbot_adapter.certificate_names(lineage.from_lineage_dir(lin.live_dir)) == ()


def test_an_anchor_whose_subject_does_not_decode_is_no_anchor(tmp_path: Path) -> None:
    """--ca-file holds the issuer again with its common name as a PrintableString of Latin-1 octets: OpenSSL's
    canonical form (anchors.canonical) matches it to the leaf's UTF8String issuer name, cryptography 38 loads
    it and raises when its subject is read (today's refuses it at load). It is no anchor: no traceback."""
    ca = pki.make_ca("Test CA \u00e4")
    leaf = pki.issue(ca, sans=["anchor.example"])
    utf8, latin1 = b"\x0c\x0aTest CA \xc3\xa4", b"\x13\x0aTest CA  \xe4"  # canonically both "test ca \xe4"
    anchor = pki.resigned(ca.cert.public_bytes(serialization.Encoding.DER), ca.key, utf8, latin1, count=2)
    ca_file = tmp_path / "anchor.pem"
    ca_file.write_bytes(pki.der_pem(anchor))
    pki.write_private(tmp_path / "key.pem", leaf.key_pem())
    source = lineage.from_files(None, str(tmp_path / "key.pem"), None, str(pki.write_pem(tmp_path / "c.pem", leaf)),
                                None)
    found = inspection.run(source, ca_file, NOW)
    assert found.exit_status == report.EX_DATAERR and found.anchor is None
    assert [f.code for f in found.findings if f.severity is Severity.ERROR] == ["missing-intermediate"]


# ------------------------------------------------------------------------ names that decode, but are hostile

ESCAPES = "relay\r\nBcc: thief@example.net\x1b[2J\x1b]0;t\x07"  # a dNSName is ASCII (an IA5String)
HUGE = 5000


def _hostile_lineage(tmp_path: Path) -> pki.LineagePaths:
    with warnings.catch_warnings():  # cryptography warns of a CN over 64 characters (RFC 5280 ub-common-name)
        warnings.simplefilter("ignore", UserWarning)
        cn = x509.NameAttribute(NameOID.COMMON_NAME, ESCAPES + "\u202e" + "x" * HUGE, _validate=False)
    sans: list[x509.GeneralName] = [x509.DNSName(f"a{ESCAPES}.example"), x509.DNSName("b" * HUGE + ".example"),
                                    *(x509.DNSName(f"n{i}.example") for i in range(50))]
    return pki.write_named_lineage(tmp_path / "live" / "hostile", x509.Name([cn]), sans)


def _printable_and_within(text: str, limit: int) -> bool:
    return text.isprintable() and len(text) <= limit + 3  # and "..."


def test_hostile_names_reach_the_facts_printable_and_bounded(tmp_path: Path) -> None:
    lin = _hostile_lineage(tmp_path)
    facts = lineage.load(lineage.from_lineage_dir(lin.live_dir), NOW).facts
    assert _printable_and_within(facts.common_name, diagnose.SHOWN_NAME), facts.common_name
    assert facts.common_name.startswith("relay??Bcc: thief@example.net?[2J?]0;t??")
    assert len(facts.sans) == 52 and all(_printable_and_within(s, diagnose.SHOWN_SAN) for s in facts.sans)
    assert facts.sans[0] == "arelay??Bcc: thief@example.net?[2J?]0;t?.example" and facts.sans[2] == "n0.example"
    assert _printable_and_within(facts.issuer, diagnose.SHOWN_NAME) and facts.name == "hostile"
    shown = json.dumps(facts.to_json())
    assert "\\u001b" not in shown and "\\r" not in shown and len(shown) < 4000, len(shown)


def test_hostile_names_in_the_mail_are_printable_and_the_subject_bounded(tmp_path: Path) -> None:
    """render.py writes the Subject itself (RFC 2047 words of printable text): from a real lineage, a CN with a
    CR LF, escapes and 5 kB gives the written header fields only, each line within RFC 5322 §2.1.1's 78, and a
    Subject of bounded printable text; the body has no escape either."""
    lin = _hostile_lineage(tmp_path)
    facts = lineage.load(lineage.from_lineage_dir(lin.live_dir), NOW).facts
    doc = {"targets": {"t": {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "robot@example.com",
                             "to": ["pki@example.com"]}}}
    target = parse_settings(doc, Path("c.toml"), {}, {"pem": BUILTIN_FORMATS[0]}).targets[0]
    message = render(target, facts, Payload("pem", ()), "<id@example.com>", NOW)
    head, _, _ = message.data.partition(b"\r\n\r\n")
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert {k.lower() for k in parsed.keys()} == {"from", "to", "subject", "date", "message-id", "auto-submitted",
                                                   "mime-version", "content-type", "content-transfer-encoding"}
    subject = str(parsed["Subject"])
    assert subject.isprintable() and len(subject) < 300 and "Bcc: thief" in subject, subject
    body = parsed.get_content()
    assert not any(c in body for c in "\x1b\x07\u202e") and "\r\nBcc" not in body
    assert max(len(line) for line in body.splitlines()) < 2000


def test_a_leaf_whose_public_key_does_not_decode_is_a_certificate_error(tmp_path: Path) -> None:
    """An EC key on a named curve nobody knows (RFC 5480 §2.1.1.1), properly signed: cryptography 38 (Debian 12)
    loads the certificate and raises ValueError where its key is read (lineage.check matching it to the private
    key: a traceback out of deploy, retry and the certbot hook); today's refuses it at load ("does not parse")."""
    lin = pki.write_lineage(tmp_path / "live" / "curve.example")
    prime256v1 = bytes.fromhex("06082a8648ce3d030107")
    leaf = pki.resigned(lin.leaf.cert.public_bytes(serialization.Encoding.DER), lin.intermediate.key, prime256v1,
                        prime256v1[:-1] + b"\x99")
    lin.cert.write_bytes(pki.der_pem(leaf))
    lin.fullchain.write_bytes(pki.der_pem(leaf) + lin.intermediate.cert_pem())
    with pytest.raises(CertificateError) as err:
        lineage.load(lineage.from_lineage_dir(lin.live_dir), NOW)
    for label, path in (("cert", lin.cert), ("fullchain", lin.fullchain)):
        [said] = [p for p in err.value.problems if p.startswith(f"{label} file {path}: certificate #1")]
        assert "its public key does not decode" in said or REFUSED_AT_LOAD in said, said
        assert said.isprintable() and len(said) < 400, said
    found = inspection.inspect(lineage.from_lineage_dir(lin.live_dir), anchors.file_store(lin.root_file), NOW)
    assert found.exit_status == 65
    assert {f.code for f in found.findings if f.severity is Severity.ERROR} <= {"undecodable", "unparseable"}


LONG_NAMES = {"ascii": "a" * 3000, "wildcards": "*." * 1500, "non-ascii": "\u00e9" * 1500 + "x",
              "cjk": "\u8a3c\u660e\u66f8" * 1000}


@pytest.mark.parametrize("name", LONG_NAMES.values(), ids=LONG_NAMES.keys())
def test_a_long_certificate_name_is_cut_to_a_stable_readable_bound(name: str) -> None:
    """`deploy --name` or an ACME client's name of 3,000 characters began attachment file names of kilobytes,
    over the 255 bytes a file name may have: its head and a digest of the whole now, the same every run."""
    safe = lineage.given_name(name)
    assert safe is not None and len(safe.encode()) <= 128, len(safe.encode())  # README's bound
    head, _, digest = safe.rpartition("-")
    assert len(digest) == 12 and int(digest, 16) >= 0 and len(head) > 20  # readable: most of it is the name
    assert lineage.given_name(safe) == safe and lineage.given_name(name) == safe  # stable, and idempotent
    assert lineage.given_name(name[:-1] + "b") != safe  # names sharing a head stay apart
    assert lineage.given_name("x" * 128) == "x" * 128  # at the bound: untouched


def test_attachments_of_a_3000_character_name_fit_a_file_name(tmp_path: Path) -> None:
    """End to end (`deploy --dry-run --output`, pem_and_key and pkcs12): every attachment's file name fits in 255
    bytes, begins with the name's head, and is the same on a second run."""
    from support.deployenv import DeployEnv

    env = DeployEnv(tmp_path / "host")
    table = {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "c@example.com", "to": ["p@example.com"]}
    env.write_config({"keyed": {**table, "payload": "pem_and_key"},
                      "p12": {**table, "payload": "pkcs12", "pkcs12_passphrase_credential": "p12"}})
    env.set_credential("p12", "smtp_pkcs12_passphrase", "a long enough passphrase")
    lin = pki.write_lineage(tmp_path / "live" / "x")
    names: list[list[str]] = []
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        run = env.run("deploy", "--dry-run", "--output", str(out), "--fullchain", str(lin.fullchain), "--key",
                      str(lin.privkey), "--name", "host-" + "a" * 3000)
        assert run.returncode == 0, run.stderr
        files = [m.get_filename() for eml in sorted(out.glob("*.eml"))
                 for m in email.message_from_bytes(eml.read_bytes(), policy=email.policy.default).iter_attachments()]
        names.append(files)
    assert names[0] == names[1] and len(names[0]) == 3, names
    for name in names[0]:
        assert name.startswith("host-aaaa") and len(name.encode()) <= 255, name
        assert name.split(".", 1)[0] == lineage.given_name("host-" + "a" * 3000)
