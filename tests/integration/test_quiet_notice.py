"""Issue 19 parts 3 and 4: `payload = "notice"` (the facts, nothing attached) and quiet targets (`min_interval`),
through the real CLI against aiosmtpd relays on loopback."""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import socket
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from support.deployenv import DeployEnv, Run, relay_target
from support.faultscript import CLOSE
from support.pki import LineagePaths, PrivateKey, issue, new_key, write_private


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def colon_fingerprint(hex_digest: str) -> str:
    up = hex_digest.upper()
    return ":".join(up[i:i + 2] for i in range(0, len(up), 2))


# ------------------------------------------------------------------------------------------------------ notice mode


def test_notice_payload_attaches_nothing_and_names_the_certificate(denv: DeployEnv, lineage: LineagePaths,
                                                                   relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"lists": relay_target(relay, payload="notice")})

    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")

    assert run.returncode == 0, run.stderr
    assert run.target("lists")["status"] == "delivered"
    [received] = relay.messages
    msg = parse(received.data)
    assert list(msg.iter_attachments()) == []
    assert not msg.is_multipart() or all(p.get_content_type() == "text/plain" for p in msg.walk()
                                         if not p.is_multipart())
    assert b"BEGIN CERTIFICATE" not in received.data and b"PRIVATE KEY" not in received.data
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "No certificate is attached" in text
    assert "carries a certificate" not in text
    assert "Certificate:   test.example.com" in text and "www.test.example.com" in text
    assert colon_fingerprint(lineage.leaf.fingerprint) in text
    assert "private key material" not in text


def test_notice_is_registered_through_the_hook_and_declares_no_key() -> None:
    from certbot_smtp_dist._internal.plugins import make_manager, payload_formats

    fmt = payload_formats(make_manager(load_entry_points=False))["notice"]
    assert not fmt.ships_private_key and not fmt.key_in_clear and fmt.credential_type is None


# ---------------------------------------------------------------------------------------------------- quiet targets

EX_TEMPFAIL = 75


def renew(lineage: LineagePaths, *, key: PrivateKey | None = None, names: tuple[str, ...] | None = None,
          later: int = 0) -> None:
    """The lineage's next certificate, as an ACME client writes it: a new leaf (and serial) from the same issuer,
    with the same key (certbot's --reuse-key) unless `key` is given, for the same names unless `names` is given.
    `later`: seconds its validity starts after the default (an hour ago): two renewals within one second are
    otherwise equally new (X.509 times count whole seconds)."""
    names = names or lineage.names
    key = key or lineage.key
    start = datetime.now(timezone.utc) - timedelta(hours=1) + timedelta(seconds=later)
    leaf = issue(lineage.intermediate, common_name=names[0], sans=names, key=key, not_before=start)
    (lineage.live_dir / "cert.pem").write_bytes(leaf.cert_pem())
    (lineage.live_dir / "fullchain.pem").write_bytes(leaf.cert_pem() + lineage.intermediate.cert_pem())
    write_private(lineage.live_dir / "privkey.pem", leaf.key_pem())


def deploy(denv: DeployEnv, lineage: LineagePaths, *extra: str) -> Run:
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json", *extra)
    assert "Traceback" not in run.stderr, run.stderr
    return run


def journal_events(denv: DeployEnv, target: str) -> list[dict[str, Any]]:
    run = denv.run("history", "--all", "--json", "--target", target)
    assert run.returncode == 0, run.stderr
    return [r for r in json.loads(run.stdout)["history"] if r.get("event") in ("attempt", "skipped")]


def test_a_renewal_within_min_interval_is_skipped_and_journalled(denv: DeployEnv, lineage: LineagePaths,
                                                                 relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"quiet": relay_target(relay, min_interval="7d"), "loud": relay_target(relay)})
    first = deploy(denv, lineage)
    assert first.returncode == 0 and first.target("quiet")["status"] == "delivered"
    delivered_id = first.target("quiet")["message_id"]
    assert first.target("quiet")["reason"] is None
    renew(lineage)  # same key, same names: a routine renewal

    second = deploy(denv, lineage)

    assert second.returncode == 0, second.stderr
    quiet, loud = second.target("quiet"), second.target("loud")
    assert quiet["status"] == "skipped" and loud["status"] == "delivered"
    assert quiet["reason"].startswith("min_interval: ") and delivered_id in quiet["reason"]
    assert quiet["message_id"] is None and quiet["error_code"] is None
    assert len(relay.messages) == 3  # quiet once, loud twice
    assert "quiet: skipped (min_interval: delivered" in second.stderr and "`deploy --force`" in second.stderr
    events = journal_events(denv, "quiet")
    assert [(e["event"], e["outcome"]) for e in events] == [("attempt", "delivered"), ("skipped", "skipped")]
    skipped = events[-1]
    assert skipped["reason"] == "min_interval" and delivered_id in skipped["detail"]
    assert skipped["serial"] != events[0]["serial"]  # the renewal that was held back, by its own serial
    history = denv.run("history", "--all", "--target", "quiet")
    assert "skipped certificate=test.example.com" in history.stdout and "cause: min_interval:" in history.stdout


def test_min_interval_from_defaults_and_zero_opts_out(denv: DeployEnv, lineage: LineagePaths,
                                                      relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"quiet": relay_target(relay), "every": relay_target(relay, min_interval="0d")},
                      defaults={"min_interval": "36h"})
    assert deploy(denv, lineage).returncode == 0
    renew(lineage)
    second = deploy(denv, lineage)
    assert (second.target("quiet")["status"], second.target("every")["status"]) == ("skipped", "delivered")
    assert "less than 36h ago" in second.target("quiet")["reason"]


@pytest.mark.parametrize("change", ["new_key", "names", "force"])
def test_each_exception_to_min_interval_sends(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                              change: str) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"quiet": relay_target(relay, min_interval="7d")})
    assert deploy(denv, lineage).target("quiet")["status"] == "delivered"
    extra: tuple[str, ...] = ()
    if change == "new_key":
        renew(lineage, key=new_key())
    elif change == "names":
        renew(lineage, names=(*lineage.names, "api.test.example.com"))  # same key, one more SAN
    else:
        renew(lineage)
        extra = ("--force",)

    run = deploy(denv, lineage, *extra)

    assert run.returncode == 0, run.stderr
    assert run.target("quiet")["status"] == "delivered" and run.target("quiet")["reason"] is None
    assert len(relay.messages) == 2
    assert [e["outcome"] for e in journal_events(denv, "quiet")] == ["delivered", "delivered"]


def test_an_uncertain_delivery_is_not_a_success(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                                fault_server) -> None:
    """The final reply was lost: the relay may have the message, or not. min_interval counts only a known success."""
    lost = fault_server(replies={"DATA_END": CLOSE})
    denv.write_config({"quiet": {"host": "127.0.0.1", "port": lost.port, "tls_mode": "plaintext", "timeout": 5,
                                 "from_address": "certbot@example.com", "to": ["pki@example.com"],
                                 "min_interval": "7d"}})
    first = deploy(denv, lineage)
    assert first.returncode == EX_TEMPFAIL and first.target("quiet")["status"] == "uncertain"
    assert lost.wait_idle()
    relay = relay_factory("plaintext")
    denv.write_config({"quiet": relay_target(relay, min_interval="7d")})

    second = deploy(denv, lineage)  # the same certificate: a deploy run again, as the hook would

    assert second.target("quiet")["status"] == "delivered", second.stderr
    assert len(relay.messages) == 1


def test_a_journal_failing_verification_does_not_suppress_a_send(denv: DeployEnv, lineage: LineagePaths,
                                                                 relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"quiet": relay_target(relay, min_interval="7d")})
    assert deploy(denv, lineage).target("quiet")["status"] == "delivered"
    journal = denv.state_dir / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert any(b'"outcome":"delivered"' in ln for ln in lines)
    # Someone edits a line (here: the first one's time), keeping the rest intact.
    lines[0] = lines[0].replace(b'"time":"2', b'"time":"1', 1)
    journal.write_bytes(b"".join(lines))
    renew(lineage)

    run = deploy(denv, lineage)

    assert run.target("quiet")["status"] == "delivered", run.stderr
    assert len(relay.messages) == 2
    assert "fails verification" in run.stderr and "min_interval is not applied" in run.stderr


def test_a_forged_delivered_line_cannot_hold_back_a_renewal(denv: DeployEnv, lineage: LineagePaths,
                                                            relay_factory) -> None:
    """A "delivered" line for exactly the renewal's key and names, an hour old, appended without the journal key
    (as a local user who could write the file would): it fails its MAC, so it holds nothing back."""
    relay = relay_factory("plaintext")
    denv.write_config({"quiet": relay_target(relay, min_interval="7d")})
    assert deploy(denv, lineage).target("quiet")["status"] == "delivered"
    key = new_key()
    renew(lineage, key=key)
    spki = hashlib.sha256(key.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    when = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    forged = {"seq": 999, "time": when, "event": "attempt", "outcome": "delivered", "target": "quiet",
              "certificate": "test.example.com", "message_id": "<forged@example.com>", "spki_sha256": spki,
              "names": sorted(lineage.names), "prev": "0" * 64, "mac": "0" * 64}
    with (denv.state_dir / "journal.jsonl").open("a") as handle:
        handle.write(json.dumps(forged, separators=(",", ":")) + "\n")

    run = deploy(denv, lineage)

    assert run.target("quiet")["status"] == "delivered", run.stderr
    assert run.json["certificate"]["spki_sha256"] == spki  # the forged line named exactly this key
    assert "fails verification" in run.stderr and len(relay.messages) == 2


def test_the_certbot_plugin_path_holds_back_the_same_renewal(denv: DeployEnv, lineage: LineagePaths,
                                                             relay_factory) -> None:
    """The installer calls the same core (a renewal, from_renewal): a quiet target is skipped there too, and a skip
    is no problem for certbot to report."""
    from certbot_smtp_dist._internal import certbot_adapter as installer

    relay = relay_factory("plaintext")
    denv.write_config({"quiet": relay_target(relay, min_interval="7d")})
    assert deploy(denv, lineage).target("quiet")["status"] == "delivered"
    renew(lineage)
    live = lineage.live_dir
    source = installer.lineage_source(str(live / "cert.pem"), str(live / "privkey.pem"), str(live / "chain.pem"),
                                      str(live / "fullchain.pem"), live.name)

    shipment = installer.ship(installer.Options(denv.config, (), denv.state_dir), source)

    assert shipment.ok and shipment.problems() == [] and shipment.failed_targets() == ()
    assert shipment.report is not None
    [result] = shipment.report.results
    assert result.status.value == "skipped" and result.reason is not None and result.reason.startswith("min_interval")
    assert len(relay.messages) == 1
    assert [e["event"] for e in journal_events(denv, "quiet")] == ["attempt", "skipped"]


def test_a_held_back_renewal_supersedes_an_older_certificate_still_pending(denv: DeployEnv, lineage: LineagePaths,
                                                                           relay_factory) -> None:
    """C1 delivered; C2's delivery (`--force`, past min_interval) fails and stays pending; C3 (same key) is held
    back by min_interval. C2 is older than what the lineage now holds: it is closed as superseded right away, not
    left pending for `status` to warn about and for `retry` to send (an entry naming fixed certificate files would
    have sent C2 after C3 existed)."""
    relay = relay_factory("plaintext")
    denv.write_config({"quiet": relay_target(relay, min_interval="7d")})
    assert deploy(denv, lineage).target("quiet")["status"] == "delivered"
    renew(lineage)
    with socket.socket() as closed:  # a port nobody listens on: C2's delivery fails, transiently
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    denv.write_config({"quiet": relay_target(relay, min_interval="7d", port=dead, timeout=3)})
    failed = deploy(denv, lineage, "--force")
    assert failed.returncode == EX_TEMPFAIL and denv.run("status").returncode == 1  # C2 pending
    renew(lineage, later=2)  # C3: newer than C2 even when issued within the same second
    denv.write_config({"quiet": relay_target(relay, min_interval="7d")})

    third = deploy(denv, lineage)

    assert third.returncode == 0 and third.target("quiet")["status"] == "skipped", third.stderr
    status = denv.run("status")
    assert status.returncode == 0, status.stdout
    closed_events = [r for r in json.loads(denv.run("history", "--all", "--json").stdout)["history"]
                     if r.get("event") == "superseded"]
    assert len(closed_events) == 1 and "held back by min_interval" in str(closed_events[0].get("detail"))
    assert denv.run("retry").returncode == 0 and len(relay.messages) == 1  # C1 only


def renew_valid(lineage: LineagePaths, days_ago: int) -> None:
    """renew(), valid from `days_ago` days ago for 90 days: of two, the one issued fewer days ago is the newer."""
    start = datetime.now(timezone.utc) - timedelta(days=days_ago, hours=1)
    leaf = issue(lineage.intermediate, common_name=lineage.names[0], sans=lineage.names, key=lineage.key,
                 not_before=start, not_after=start + timedelta(days=90))
    (lineage.live_dir / "cert.pem").write_bytes(leaf.cert_pem())
    (lineage.live_dir / "fullchain.pem").write_bytes(leaf.cert_pem() + lineage.intermediate.cert_pem())


@pytest.mark.parametrize("min_interval", ["7d", None])
def test_an_older_certificate_never_supersedes_a_newer_one_pending(denv: DeployEnv, lineage: LineagePaths,
                                                                  relay_factory, min_interval: str | None) -> None:
    """C1 delivered; the newer C2's delivery fails and stays pending; then C1 is deployed again (files put back by
    hand): held back by min_interval (same key, names), or delivered without it. Neither closes C2, which is newer:
    it stays pending for `retry`, which is how the recipients get the certificate they must end up with."""
    relay = relay_factory("plaintext")
    extra = {} if min_interval is None else {"min_interval": min_interval}
    denv.write_config({"quiet": relay_target(relay, **extra)})
    renew_valid(lineage, days_ago=10)
    assert deploy(denv, lineage).target("quiet")["status"] == "delivered"
    first = {name: (lineage.live_dir / name).read_bytes() for name in ("cert.pem", "fullchain.pem")}
    renew_valid(lineage, days_ago=0)
    with socket.socket() as closed:  # a port nobody listens on: C2's delivery fails, transiently
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    denv.write_config({"quiet": relay_target(relay, port=dead, timeout=3, **extra)})
    assert deploy(denv, lineage, "--force").returncode == EX_TEMPFAIL and denv.run("status").returncode == 1
    for name, data in first.items():
        (lineage.live_dir / name).write_bytes(data)  # C1 again
    denv.write_config({"quiet": relay_target(relay, **extra)})

    again = deploy(denv, lineage)

    assert again.returncode == 0, again.stderr
    assert again.target("quiet")["status"] == ("skipped" if min_interval else "delivered")
    assert denv.run("status").returncode == 1  # C2 still pending
    history = json.loads(denv.run("history", "--all", "--json").stdout)["history"]
    assert not [r for r in history if r.get("event") == "superseded"]
