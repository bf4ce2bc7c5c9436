"""A lineage whose certificate names do not decode, deployed against a real relay on loopback: caught before any
connection (exit 65, SMTP_PAYLOAD naming the file, the journal and spool as for any unusable certificate); and
one whose names decode but are hostile, delivered with those names printable and bounded in the mail, the
output and the logs."""

from __future__ import annotations

import email
import email.policy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from support import pki
from support.deployenv import DeployEnv, Run, relay_target

from certbot_smtp_dist._internal.journal import Journal

EX_DATAERR = 65
RAW = ("\x1b", "\x07", "\r\nBcc", "\u202e", "\\u001b", "\\u0007", "\\u202e")  # raw, or escaped by JSON


def _no_raw_text(run: Run) -> None:
    out = run.stdout + run.stderr
    assert "Traceback" not in out, out
    assert not [r for r in RAW if r in out], out
    assert all(line.isprintable() for line in out.splitlines()), out


def _spool(denv: DeployEnv) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((denv.state_dir / "spool").glob("*.json"))]


@pytest.mark.parametrize("kind", pki.UNDECODABLE)
def test_a_certificate_whose_names_do_not_decode_is_caught_before_any_connection(
        denv: DeployEnv, relay_factory: Callable[..., Any], tmp_path: Path, kind: pki.Undecodable) -> None:
    lin = pki.write_undecodable_lineage(tmp_path / "live" / "undecodable.example", kind)
    relay = relay_factory("starttls")
    denv.write_config({"a": relay_target(relay), "b": relay_target(relay, to=["b@example.com"])})

    run = denv.run("deploy", "--json", extra_env={"RENEWED_LINEAGE": str(lin.live_dir)})  # certbot's deploy hook

    _no_raw_text(run)
    assert run.returncode == EX_DATAERR, run.stdout + run.stderr
    assert relay.connections == 0 and relay.messages == []
    for name in ("a", "b"):
        target = run.target(name)
        assert target["status"] == "failed" and target["error_code"] == "SMTP_PAYLOAD", target
        assert f"fullchain file {lin.fullchain}: certificate #1" in target["detail"], target["detail"]
        assert "does not decode" in target["detail"] or "does not parse" in target["detail"], target["detail"]
    assert f"fullchain file {lin.fullchain}" in run.stderr and "nothing was sent" in run.stderr
    journal = list(Journal(denv.state_dir, None).records())
    attempts = [r for r in journal if r.get("event") == "attempt"]
    assert sorted(r["target"] for r in attempts) == ["a", "b"], journal
    assert all(r["outcome"] == "failed" and r["error_code"] == "SMTP_PAYLOAD" for r in attempts), attempts
    [blocked] = _spool(denv)
    assert blocked["kind"] == "blocked" and blocked["last_failure"]["error_code"] == "SMTP_PAYLOAD", blocked

    retried = denv.run("retry", "--include-failed")  # the blocked entry, its files read again: still refused
    _no_raw_text(retried)
    assert retried.returncode == 69 and relay.connections == 0, retried.stdout + retried.stderr  # still blocked
    assert f"fullchain file {lin.fullchain}: certificate #1" in retried.stderr, retried.stderr

    inspected = denv.run("inspect", "--lineage", str(lin.live_dir), "--ca-file", str(lin.root_file), "--json")
    _no_raw_text(inspected)
    doc = json.loads(inspected.stdout)
    assert inspected.returncode == EX_DATAERR and doc["exit_status"] == EX_DATAERR and doc["verdict"] == "error"
    assert {f["code"] for f in doc["findings"] if f["severity"] == "error"} <= {"undecodable", "unparseable"}
    assert relay.connections == 0


ESCAPES = "relay\r\nBcc: thief@example.net\x1b[2J\x1b]0;t\x07"


def test_hostile_names_that_decode_are_delivered_printable_and_bounded(
        denv: DeployEnv, relay_factory: Callable[..., Any], tmp_path: Path) -> None:
    """The CN holds a CR LF, terminal escapes, a bidi override and 5 kB; a SAN escapes, another 5 kB: the mail
    goes out, its header fields only ours and its Subject bounded printable text; the output and the -v log
    carry no escape, raw or JSON-escaped."""
    with warnings.catch_warnings():  # cryptography warns of a CN over 64 characters
        warnings.simplefilter("ignore", UserWarning)
        cn = x509.NameAttribute(NameOID.COMMON_NAME, ESCAPES + "\u202e" + "x" * 5000, _validate=False)
    sans: list[x509.GeneralName] = [x509.DNSName("hostile.example"), x509.DNSName(f"a{ESCAPES}.example"),
                                    x509.DNSName("b" * 5000 + ".example")]
    lin = pki.write_named_lineage(tmp_path / "live" / "hostile.example", x509.Name([cn]), sans)
    relay = relay_factory("starttls")
    denv.write_config({"a": relay_target(relay)})

    run = denv.run("deploy", "--lineage", str(lin.live_dir), "--json", "-v")

    _no_raw_text(run)
    assert run.returncode == 0, run.stdout + run.stderr
    certificate = run.json["certificate"]
    assert certificate["common_name"].startswith("relay??Bcc: thief@example.net?[2J?]0;t??x")
    assert len(certificate["common_name"]) <= 163 and all(len(s) <= 258 for s in certificate["sans"])
    assert len(run.stdout) < 6000 and len(run.stderr) < 20000, (len(run.stdout), len(run.stderr))
    [message] = relay.wait_for_messages(1, timeout=30)
    head = message.data.partition(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert "bcc" not in {k.lower() for k in parsed.keys()}
    subject = str(parsed["Subject"])
    assert subject.isprintable() and len(subject) < 300, subject
