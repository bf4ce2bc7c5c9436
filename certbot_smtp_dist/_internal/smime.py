"""S/MIME (RFC 8551) of one rendered message: sign, encrypt, or sign then encrypt; the MIME around the CMS blobs.

Registered as the built-in implementation of the `smtp_dist_message` hook, through the same hook as extensions.
"""

from __future__ import annotations

import base64
import re
import secrets as _random
from dataclasses import replace

from certbot_smtp_dist._internal import render
from certbot_smtp_dist.errors import PayloadError
from certbot_smtp_dist.hookspecs import hookimpl
from certbot_smtp_dist.model import CertificateFacts, Message, SmimePolicy, Target

CRLF = b"\r\n"
# Only these outer fields survive encryption (RFC 8551 §3.1 protects the body only): what delivery, threading and
# RFC 3834 loop prevention need. Subject is replaced by a neutral one; everything else lives inside.
KEPT_WHEN_ENCRYPTED = ("from", "to", "cc", "date", "message-id", "auto-submitted")
SIGNED_PREAMBLE = b"This is an S/MIME signed message (RFC 8551)."
_LINE_END = rb"\r\n|\r|\n"  # compiled on first use (re's cache): S/MIME targets only
MAX_SMTP_LINE = 998  # octets before CR LF (RFC 5321 §4.5.3.1.6)


class SmimeHook:
    """Signs and/or encrypts every message of a target with `smime_*` keys; leaves the others alone.

    `trylast`: it runs after every other message hook that does not ask to run last itself, so the signature and
    the envelope cover what those hooks made of the message."""

    @hookimpl(trylast=True)
    def smtp_dist_message(self, target: Target, facts: CertificateFacts, message: Message) -> Message | None:
        if target.smime is None:
            return None
        return protect(message, target.smime, facts, target.timeout)


def _left(timeout: float, what: str) -> float:
    """What is left of the target's `timeout` since the run started (budget.py), for one CMS call; PayloadError
    when nothing is: the messages prepared before this one spent it, and this target fails alone, at once."""
    from certbot_smtp_dist._internal import budget

    left = budget.left(timeout)
    if left <= 0:
        raise PayloadError(f"cannot {what}: the target's timeout ({timeout:g}s, counted from the run's start) "
                           "ran out while the messages were prepared")
    return left


def protect(message: Message, smime: SmimePolicy, facts: CertificateFacts, timeout: float) -> Message:
    """`message` signed (detached, SHA-256, RFC 8551 §3.5) and/or encrypted (§3.3) as `smime` says; with both, the
    signed message is encrypted (§3.7: what Outlook and Thunderbird expect). Raises PayloadError (CmsError).
    Each CMS call gets only what is left of `timeout` since the run started (budget.py)."""
    from certbot_smtp_dist._internal import (
        cms,  # on the first S/MIME message only: not on every run's start-up
    )

    fields, body = _split(_canonical(message.data))
    entity = _seven_bit(b"".join(f for name, f in fields if name.startswith("content-")) + CRLF + body)
    if smime.signs:
        entity = _signed(entity, smime, timeout)
    kept = [f for name, f in fields if not name.startswith("content-") and name != "mime-version"]
    subject = message.subject
    if smime.encrypts:
        cipher = cms.Cipher(smime.encryption)
        blob = cms.encrypt(entity, smime.recipients_pem, cipher, _left(timeout, "encrypt"))
        entity = (b"Content-Type: application/pkcs7-mime; smime-type=" + cipher.smime_type.encode()
                  + b"; name=smime.p7m" + CRLF + b"Content-Transfer-Encoding: base64" + CRLF
                  + b'Content-Disposition: attachment; filename="smime.p7m"' + CRLF + CRLF + _base64(blob))
        subject = f"Certificate {facts.name}"  # neutral: the certificate's facts travel inside only
        kept = [f for name, f in fields if name in KEPT_WHEN_ENCRYPTED]
        kept.append(b"Subject: " + render.subject_field(subject).encode("ascii") + CRLF)
    data = b"".join(kept) + b"MIME-Version: 1.0" + CRLF + entity
    return replace(message, data=data, subject=subject, signed=smime.signs,
                   encrypted_to=smime.recipient_fingerprints if smime.encrypts else ())


def _signed(entity: bytes, smime: SmimePolicy, timeout: float) -> bytes:
    """multipart/signed (RFC 1847, RFC 8551 §3.5.3) around `entity`, which is signed byte for byte as sent."""
    from certbot_smtp_dist._internal import cms

    if not isinstance(smime.signer, cms.Signer):  # a policy not made by the configuration load: never unsigned
        raise PayloadError(f"cannot sign: no signer key and certificate were loaded for smime_sign_key "
                           f"{smime.sign_key}")
    signature = cms.sign(entity, smime.signer, _left(timeout, "sign"))
    boundary = _boundary(entity)
    return (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;' + CRLF
            + b' boundary="' + boundary + b'"' + CRLF + CRLF + SIGNED_PREAMBLE + CRLF + CRLF
            # RFC 2046 §5.1.1: the CRLF before a delimiter belongs to it, so the first part is `entity` exactly.
            + b"--" + boundary + CRLF + entity + CRLF + b"--" + boundary + CRLF
            + b'Content-Type: application/pkcs7-signature; name=smime.p7s' + CRLF
            + b"Content-Transfer-Encoding: base64" + CRLF
            + b'Content-Disposition: attachment; filename="smime.p7s"' + CRLF + CRLF
            + _base64(signature) + b"--" + boundary + b"--" + CRLF)


def _canonical(data: bytes) -> bytes:
    """Every line ended by CR LF (RFC 8551 §3.1.1: canonical form before signing)."""
    return re.sub(_LINE_END, CRLF, data)


def _split(data: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """The header fields (lowercased name, raw lines with their folds) and the body."""
    head, _, body = data.partition(CRLF + CRLF)
    fields: list[tuple[str, bytes]] = []
    for line in head.split(CRLF):
        if line[:1] in (b" ", b"\t") and fields:  # a folded continuation (RFC 5322 §2.2.3)
            name, raw = fields[-1]
            fields[-1] = (name, raw + line + CRLF)
        elif line:
            fields.append((line.partition(b":")[0].strip().lower().decode("ascii", "replace"), line + CRLF))
    return fields, body


def _seven_bit(entity: bytes) -> bytes:
    """RFC 8551 §3.1.2: a signed entity must survive any transport unchanged, so 8bit parts, and parts with a line
    longer than SMTP carries unchanged (RFC 5321 §4.5.3.1.6: 998 octets), become base64."""
    if not _needs_encoding(entity):
        return entity
    from email import policy
    from email.encoders import encode_base64
    from email.message import EmailMessage
    from email.parser import BytesParser

    parsed = BytesParser(_class=EmailMessage, policy=policy.SMTP).parsebytes(entity)
    for part in parsed.walk():
        if part.is_multipart() or part.get("Content-Transfer-Encoding", "7bit").lower() not in (
                "7bit", "8bit", "binary"):
            continue
        raw = part.get_payload(decode=True)
        if isinstance(raw, bytes) and _needs_encoding(raw):
            del part["Content-Transfer-Encoding"]
            part.set_payload(raw)
            encode_base64(part)
    return _canonical(parsed.as_bytes())


def _needs_encoding(data: bytes) -> bool:
    return not data.isascii() or any(len(line) > MAX_SMTP_LINE for line in re.split(_LINE_END, data))


def _boundary(entity: bytes) -> bytes:
    while True:
        boundary = b"smime-" + _random.token_hex(16).encode()
        if boundary not in entity:
            return boundary


def _base64(blob: bytes) -> bytes:
    """RFC 2045 §6.8: lines of at most 76 characters, each ended by CR LF."""
    text = base64.b64encode(blob)
    return b"".join(text[i:i + 76] + CRLF for i in range(0, len(text), 76))
