"""A run's targets share its attachments' MIME parts (render.attachment_part): each message is what
EmailMessage.add_attachment made before, byte for byte, and no target gets another payload's attachment."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path

from certbot_smtp_dist._internal import render
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.model import Attachment, CertificateFacts, Payload, Target

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
FACTS = CertificateFacts("n", "host.example", ("host.example",), "CN=x", NOW, NOW, "1", "00")
CHAIN = Attachment("host.example.pem", "application/x-pem-file", b"-----BEGIN CERTIFICATE-----\nAAAA\n" * 40)
KEY = Attachment("host.example.key", "application/octet-stream", bytes(range(256)) * 3)
OTHER = Attachment("other.pem", "application/x-pem-file", b"other\n")


def target(name: str, **table: object) -> Target:
    doc = {"targets": {name: {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "robot@example.com",
                              "to": ["pki@example.com"], **table}}}
    return parse_settings(doc, Path("c.toml"), {}, {"pem": BUILTIN_FORMATS[0]}).targets[0]


def unbounded(data: bytes) -> bytes:
    """The message with its random multipart boundary replaced by one fixed text."""
    boundary = re.search(rb'boundary="([^"]+)"', data)
    assert boundary is not None
    return data.replace(boundary.group(1), b"BOUNDARY")


def test_shared_parts_render_what_add_attachment_rendered() -> None:
    payload = Payload("pem", (CHAIN, KEY))
    parts: render.PartCache = {}
    targets = [target("a"), target("b", to=["x@example.com", "y@example.com"], from_name="Zoë")]
    for t in targets * 2:
        shared = render.render(t, FACTS, payload, "<id@example.com>", NOW, parts=parts).data
        alone = render.render(t, FACTS, payload, "<id@example.com>", NOW).data
        assert unbounded(shared) == unbounded(alone)
        parsed = email.message_from_bytes(shared, policy=email.policy.default)
        got = [(p.get_filename(), p.get_content_type(), p.get_content_disposition(), p.get_payload(decode=True))
               for p in parsed.iter_attachments()]
        assert got == [(a.filename, a.content_type, "attachment", a.data) for a in (CHAIN, KEY)]
    assert set(parts) == {CHAIN, KEY}  # made once each, for four messages


def test_attachment_part_is_what_add_attachment_makes() -> None:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg.set_content("body")
    msg.add_attachment(KEY.data, maintype="application", subtype="octet-stream", filename=KEY.filename)
    made = list(msg.iter_attachments())[0]
    assert render.attachment_part(KEY).as_bytes() == made.as_bytes()


def test_no_target_gets_another_payloads_attachment() -> None:
    parts: render.PartCache = {}
    first = render.render(target("a"), FACTS, Payload("pem", (CHAIN,)), "<1@example.com>", NOW, parts=parts)
    second = render.render(target("b"), FACTS, Payload("pem", (OTHER,)), "<2@example.com>", NOW, parts=parts)
    names = [[p.get_filename() for p in email.message_from_bytes(m.data, policy=email.policy.default)
              .iter_attachments()] for m in (first, second)]
    assert names == [["host.example.pem"], ["other.pem"]]
