"""Every delivered email carries a Diagnostics section with inspect's findings, and each non-info finding is a warning
in the run's output: a real aiosmtpd relay on loopback receives the message, the real CLI runs in-process."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from support import pki
from support.deployenv import DeployEnv, Run, relay_target

pytestmark = pytest.mark.timeout(60)
HEADING = "Diagnostics (checked by the sender before sending):"
HOSTILE = "evil\r\nX-Injected: yes =?utf-8?q?=0D=0A?=\x1b\u2028Bcc: x@example.net"


def body_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("plain",))
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text


def diagnostics(body: str) -> list[str]:
    """The section's lines: from its heading to the blank line that ends it."""
    lines = body.splitlines()
    start = lines.index(HEADING)
    end = lines.index("", start)
    return lines[start + 1:end]


def deploy(denv: DeployEnv, relay_factory, *args: str) -> tuple[Run, str]:  # type: ignore[no-untyped-def]
    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})
    run = denv.run("deploy", *args)
    assert run.returncode == 0, run.stderr
    [received] = relay.messages
    return run, body_of(received.data)


def cert_warnings(run: Run) -> list[str]:
    return [ln for ln in run.stderr.splitlines() if ": WARNING: certificate " in ln]


def test_good_lineage_diagnostics_and_no_warning(denv: DeployEnv, relay_factory, lineage: pki.LineagePaths,
                                                 tmp_path: Path) -> None:
    run, body = deploy(denv, relay_factory, "--lineage", str(lineage.live_dir))
    section = diagnostics(body)
    assert "  info:    the private key matches the leaf (ECDSA P-256)" in section
    assert any(ln.startswith("  info:    the leaf expires in 8") for ln in section)
    assert not [ln for ln in section if ln.startswith(("  error:", "  warning:"))], section
    assert cert_warnings(run) == []
    assert body.index(HEADING) < body.index("Attachments:")  # after the facts, before the attachments

    out = tmp_path / "eml"  # a dry run renders the same section into its .eml
    dry = denv.run("deploy", "--lineage", str(lineage.live_dir), "--dry-run", "--output", str(out))
    assert dry.returncode == 0, dry.stderr
    assert diagnostics(body_of((out / "archive.eml").read_bytes())) == section


def test_leaf_only_is_delivered_with_the_missing_intermediate_named(denv: DeployEnv, relay_factory,
                                                                    lineage: pki.LineagePaths) -> None:
    run, body = deploy(denv, relay_factory, "--fullchain", str(lineage.cert), "--key", str(lineage.privkey))
    section = " ".join(" ".join(ln.split()) for ln in diagnostics(body))  # the wrapped lines as one
    assert "error: missing intermediate: the chain holds the leaf alone, and its issuer CN=Test ACME " \
           "Intermediate R1" in section
    assert "fix: ship fullchain.pem, not cert.pem" in section
    [warning] = cert_warnings(run)
    assert "missing intermediate" in warning and "CN=Test ACME Intermediate R1" in warning
    assert "fix: ship fullchain.pem, not cert.pem" in warning


def test_deploy_json_carries_the_diagnostics(denv: DeployEnv, relay_factory, lineage: pki.LineagePaths) -> None:
    """Monitoring reads `deploy --json`: the same findings as the email's section, in inspect's form."""
    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})

    whole = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    leaf_only = denv.run("deploy", "--fullchain", str(lineage.cert), "--key", str(lineage.privkey), "--json")

    assert whole.returncode == 0, whole.stderr
    codes = {f["code"]: f["severity"] for f in whole.json["diagnostics"]}
    assert codes.get("key") == "info" and "error" not in codes.values(), codes
    assert set(whole.json["diagnostics"][0]) == {"severity", "code", "message", "fix"}
    [missing] = [f for f in leaf_only.json["diagnostics"] if f["severity"] == "error"]
    assert "missing intermediate" in missing["message"] and "fullchain.pem" in missing["fix"]
    assert len(relay.messages) == 2


def test_root_included_is_a_warning_in_output_and_body(denv: DeployEnv, relay_factory, lineage: pki.LineagePaths,
                                                       tmp_path: Path) -> None:
    chain = pki.write_pem(tmp_path / "with-root.pem", lineage.leaf, lineage.intermediate, lineage.root)
    run, body = deploy(denv, relay_factory, "--fullchain", str(chain), "--key", str(lineage.privkey))
    assert any(ln.startswith("  warning: the chain includes the root CN=Test ACME Root X1") for ln in diagnostics(body))
    [warning] = cert_warnings(run)
    assert "the chain includes the root CN=Test ACME Root X1" in warning


def test_hostile_names_inject_no_line_and_no_header(denv: DeployEnv, relay_factory, tmp_path: Path) -> None:
    """A private CA can put anything in a name: CR LF, an encoded word, an escape, a Unicode line separator."""
    root = pki.make_ca(HOSTILE[:64])
    leaf = pki.issue(root, common_name=HOSTILE[:64], sans=["ok.example", "evil\r\nBcc: y@example.net"])
    chain = pki.write_pem(tmp_path / "hostile.pem", leaf, root)
    key = tmp_path / "hostile.key"
    pki.write_private(key, leaf.key_pem())
    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})
    run = denv.run("deploy", "--fullchain", str(chain), "--key", str(key), "--name", "hostile")
    assert run.returncode == 0, run.stderr
    [received] = relay.messages
    assert received.rcpt_tos == ("pki@example.com",)  # no Bcc made it into the envelope
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    assert "X-Injected" not in msg and "Bcc" not in msg
    section = diagnostics(body_of(received.data))
    assert any("root-included" in w or "includes the root" in w for w in cert_warnings(run))
    assert all(ln.isprintable() for ln in section), section
    assert not [ln for ln in section if ln.lstrip().startswith(("X-Injected", "Bcc"))], section
    assert not [ln for ln in body_of(received.data).splitlines() if ln.startswith(("X-Injected", "Bcc:"))]
    assert not [ln for ln in run.stderr.splitlines() if ln.startswith(("X-Injected", "Bcc", "\x1b"))]
    assert all(ln.isprintable() for ln in cert_warnings(run))


def test_deploy_refuses_a_wrong_order_and_gives_the_right_one(denv: DeployEnv, relay_factory,
                                                              lineage: pki.LineagePaths, tmp_path: Path) -> None:
    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})
    swapped = pki.write_pem(tmp_path / "swapped.pem", lineage.intermediate, lineage.leaf)
    run = denv.run("deploy", "--fullchain", str(swapped), "--key", str(lineage.privkey))
    assert run.returncode == 65 and relay.messages == []
    assert "write them in this order: 1. CN=test.example.com, 2. CN=Test ACME Intermediate R1" in run.stderr
