"""Render one target's email (RFC 5322 + MIME) and its SMTP envelope from frozen inputs; no I/O."""

from __future__ import annotations

import hashlib
import secrets as _random
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from certbot_smtp_dist._internal.addresses import domain_of, printable
from certbot_smtp_dist.model import CertificateFacts, Message, Payload, Target

BODY_TEMPLATE = """\
This message carries a certificate issued by an ACME certificate authority.
It was sent automatically by certbot-smtp-dist after a successful issuance or renewal.

Certificate:   {name}
Common name:   {common_name}
Names (SAN):   {sans}
Issuer:        {issuer}
Not before:    {not_before} UTC
Not after:     {not_after} UTC
Serial:        {serial}
SHA-256:       {fingerprint}

Attachments:
{attachments}
{key_notice}
{sig_dash}
certbot-smtp-dist, for target "{target}"
"""

KEY_NOTICE = """
WARNING: this message contains private key material. Store it accordingly and delete it from mailboxes
that do not need to keep it.
"""


def new_message_id(from_address: str) -> str:
    """RFC 5322 §3.6.4 msg-id, unique and in the sender's domain."""
    return f"<{datetime.now(timezone.utc):%Y%m%d%H%M%S}.{_random.token_hex(12)}@{domain_of(from_address)}>"


def subject(target: Target, facts: CertificateFacts) -> str:
    # Certificate fields are attacker-influenced text: no control character reaches a header or the body.
    prefix = f"[{target.subject_prefix}] " if target.subject_prefix else ""
    cn = printable(facts.common_name or (facts.sans[0] if facts.sans else facts.name))
    return f"{prefix}Certificate for {cn} issued, expires {facts.not_after.astimezone(timezone.utc):%Y-%m-%d}"


def body(target: Target, facts: CertificateFacts, payload: Payload) -> str:
    rows = [
        f"  {a.filename}  ({len(a.data)} bytes, SHA-256 {hashlib.sha256(a.data).hexdigest()})"
        for a in payload.attachments
    ]
    return BODY_TEMPLATE.format(
        name=facts.name,
        common_name=printable(facts.common_name) or "(none)",
        sans=", ".join(printable(n) for n in facts.sans) or "(none)",
        issuer=printable(facts.issuer),
        not_before=f"{facts.not_before.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}",
        not_after=f"{facts.not_after.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}",
        serial=_colon_hex(facts.serial_hex),
        fingerprint=_colon_hex(facts.sha256_fingerprint),
        attachments="\n".join(rows),
        key_notice=KEY_NOTICE if payload.contains_private_key else "",
        sig_dash="-- ",  # RFC 3676 §4.3 signature separator: dash dash space
        target=target.name,
    )


def render(
    target: Target,
    facts: CertificateFacts,
    payload: Payload,
    message_id: str,
    date: datetime,
    envelope_to: tuple[str, ...] | None = None,
) -> Message:
    """Build the message. `envelope_to` narrows the RCPT list (a retry of refused recipients only)."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address(display_name=target.from_name or "", addr_spec=target.from_address)
    msg["To"] = ", ".join(target.to)
    if target.cc:
        msg["Cc"] = ", ".join(target.cc)
    # BCC recipients live only in the envelope (RFC 5322 §3.6.3 allows omitting Bcc entirely).
    the_subject = subject(target, facts)
    msg["Subject"] = the_subject
    msg["Date"] = format_datetime(date.astimezone(timezone.utc))
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5
    msg.set_content(body(target, facts, payload), charset="utf-8")
    for att in payload.attachments:
        maintype, _, subtype = att.content_type.partition("/")
        # bytes attachments are always base64 (RFC 2045 §6.8), whatever they contain.
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=att.filename)
    return Message(
        message_id=message_id,
        subject=the_subject,
        envelope_from=target.from_address,
        envelope_to=envelope_to if envelope_to is not None else target.envelope_recipients,
        data=msg.as_bytes(),
    )


def _colon_hex(hex_string: str) -> str:
    h = hex_string.upper()
    if len(h) % 2:
        h = "0" + h
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))
