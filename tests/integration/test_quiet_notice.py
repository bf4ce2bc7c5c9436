"""Issue 19 parts 3 and 4: `payload = "notice"` (the facts, nothing attached) and quiet targets (`min_interval`),
through the real CLI against aiosmtpd relays on loopback."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths


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
