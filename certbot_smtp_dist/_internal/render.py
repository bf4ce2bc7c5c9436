"""Render one target's email (RFC 5322 + MIME) and its SMTP envelope from frozen inputs; no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets as _random
from datetime import datetime, timezone
from email import policy, quoprimime
from email.generator import BytesGenerator
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from io import BytesIO
from typing import Any

from certbot_smtp_dist._internal.addresses import domain_of, printable
from certbot_smtp_dist.model import (
    Attachment,
    CertificateFacts,
    Finding,
    Message,
    Payload,
    Severity,
    Target,
)

BODY_TEMPLATE = """\
{opening}
It was sent automatically by certbot-smtp-dist after a successful issuance or renewal.

Certificate:   {name}
Common name:   {common_name}
Names (SAN):   {sans}
Issuer:        {issuer}
Not before:    {not_before} UTC
Not after:     {not_after} UTC
Serial:        {serial}
SHA-256:       {fingerprint}

{diagnostics}
Attachments:
{attachments}
{key_notice}
{sig_dash}
certbot-smtp-dist, for target "{target}"
"""

OPENING = "This message carries a certificate issued by an ACME certificate authority."
NOTICE_OPENING = ("This message is a notice about a certificate issued by an ACME certificate authority.\n"
                  "No certificate is attached: it tells you the certificate's facts only.")
NO_ATTACHMENTS = "  (none: no certificate and no key is attached to this message)"

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


def diagnostics(findings: tuple[Finding, ...]) -> str:
    """The Diagnostics section: the sender's own findings about the chain and key (diagnose.py), one wrapped
    entry each, worst first. Plain text, each piece already one printable line; nothing secret is in a finding."""
    import textwrap

    lines = ["Diagnostics (checked by the sender before sending):"]
    for finding in findings or (Finding(Severity.INFO, "none", "no diagnostics were made"),):
        head = f"  {finding.severity.value + ':':9}"
        lines += textwrap.wrap(printable(finding.message), 78, initial_indent=head, subsequent_indent=" " * 11,
                               break_on_hyphens=False)
        if finding.fix and finding.severity is not Severity.INFO:
            lines += textwrap.wrap(f"fix: {printable(finding.fix)}", 78, initial_indent=" " * 11,
                                   subsequent_indent=" " * 16, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def body(target: Target, facts: CertificateFacts, payload: Payload, findings: tuple[Finding, ...] = (),
         findings_text: str | None = None) -> str:
    """The text part; `findings_text`: diagnostics(findings), when the caller made it already."""
    return BODY_TEMPLATE.format(**body_fields(facts, payload, findings, findings_text), target=target.name)


def body_fields(facts: CertificateFacts, payload: Payload, findings: tuple[Finding, ...] = (),
                findings_text: str | None = None) -> dict[str, str]:
    """The text part's fields but the target's name: what every target of a run with this payload shares."""
    rows = [
        f"  {a.filename}  ({len(a.data)} bytes, SHA-256 {hashlib.sha256(a.data).hexdigest()})"
        for a in payload.attachments
    ]
    return dict(
        # What is attached, not the format's name, decides the wording: an extension that attaches nothing is a
        # notice too.
        opening=OPENING if payload.attachments else NOTICE_OPENING,
        name=facts.name,
        common_name=printable(facts.common_name) or "(none)",
        sans=", ".join(printable(n) for n in facts.sans) or "(none)",
        issuer=printable(facts.issuer),
        not_before=f"{facts.not_before.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}",
        not_after=f"{facts.not_after.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}",
        serial=colon_hex(facts.serial_hex),
        fingerprint=colon_hex(facts.sha256_fingerprint),
        diagnostics=diagnostics(findings) if findings_text is None else findings_text,
        attachments="\n".join(rows) or NO_ATTACHMENTS,
        key_notice=KEY_NOTICE if payload.contains_private_key else "",
        sig_dash="-- ",  # RFC 3676 §4.3 signature separator: dash dash space
    )


def render(
    target: Target,
    facts: CertificateFacts,
    payload: Payload,
    message_id: str,
    date: datetime,
    envelope_to: tuple[str, ...] | None = None,
    findings: tuple[Finding, ...] = (),
    parts: PartCache | None = None,
) -> Message:
    """Build the message. `envelope_to` narrows the RCPT list (a retry of refused recipients only); `findings` are
    the artefact's Diagnostics; `parts`, the work one run's targets share (PartCache): the bytes are the same."""
    the_subject = subject(target, facts)
    mark = parts.boundary if parts is not None else boundary()
    made = _build(target, facts, payload, message_id, date, the_subject, findings, parts, mark)
    data = _flatten(made, parts)
    if not _delimits(made, data, mark):  # our boundary met in the content: never seen, but then the email package's own
        data = _flatten(_build(target, facts, payload, message_id, date, the_subject, findings, parts, None), parts)
    return Message(
        message_id=message_id,
        subject=the_subject,
        envelope_from=target.from_address,
        envelope_to=envelope_to if envelope_to is not None else target.envelope_recipients,
        data=data,
    )


def _build(target: Target, facts: CertificateFacts, payload: Payload, message_id: str, date: datetime,
           the_subject: str, findings: tuple[Finding, ...], parts: PartCache | None,
           mixed_boundary: str | None) -> EmailMessage:
    msg = EmailMessage(policy=parts.policy if parts is not None else policy.SMTP)
    msg["From"] = sender(target.from_name or "", target.from_address, parts)
    msg["To"] = ", ".join(target.to)
    if target.cc:
        msg["Cc"] = ", ".join(target.cc)
    # BCC recipients live only in the envelope (RFC 5322 §3.6.3 allows omitting Bcc entirely).
    # Written as raw field text, never parsed by the email package (which would decode a lookalike word).
    msg.set_raw("Subject", subject_field(the_subject))
    msg["Date"] = format_datetime(date.astimezone(timezone.utc))
    if parts is not None and _PLAIN_ID.fullmatch(message_id) and len(message_id) <= MAX_LINE - len("Message-ID: "):
        # A msg-id of plain dot-atoms (RFC 5322 §3.6.4) that fits its line is written as the email package writes
        # it once parsed (the parse tree gives back the same text, and nothing in it folds): without the parse of
        # every target's own value, a seventh of rendering a message. Anything else is parsed, as ever.
        msg.set_raw("Message-ID", message_id)
    else:
        msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5
    text = _body(target, facts, payload, findings, parts)
    msg.set_content(text, charset="utf-8", cte=_text_cte(text, parts) if parts is not None else None)
    for att in payload.attachments:
        if msg.get_content_type() != "multipart/mixed":  # what EmailMessage.add_attachment does, part aside
            msg.make_mixed(boundary=mixed_boundary)
        msg.attach(attachment_part(att, parts))
    return msg


def _body(target: Target, facts: CertificateFacts, payload: Payload, findings: tuple[Finding, ...],
          parts: PartCache | None) -> str:
    """body(), its fields made once a run for the targets that share the certificate, payload and findings."""
    if parts is None:
        return body(target, facts, payload, findings)
    key = (facts, payload, findings)
    fields = parts.bodies.get(key)
    if fields is None:
        findings_text = parts.diagnostics.get(findings)
        if findings_text is None:
            findings_text = parts.diagnostics[findings] = diagnostics(findings)
        fields = parts.bodies[key] = body_fields(facts, payload, findings, findings_text)
    return BODY_TEMPLATE.format(**fields, target=target.name)


def _text_cte(text: str, parts: PartCache) -> str | None:
    """The Content-Transfer-Encoding that EmailMessage.set_content picks for `text` (utf-8, under the run's policy)
    from a sniff of its first 10 lines, when it picks it so (email.contentmanager._encode_text: a line longer than
    the policy's max_line_length, more than 10 lines): quoted-printable, or base64 when the sniff is shorter in it.
    A run's texts share those lines (each differs in its target's name, at the end), so the sniff, a quoted-printable
    and a base64 encoding of them (a tenth of rendering a message), is made once a run, and set_content given that
    `cte` writes what its heuristic writes. None: set_content decides (7bit or 8bit; a text the sniff is all of)."""
    run_policy, width = parts.policy, parts.policy.max_line_length
    lines = text.encode("utf-8").splitlines()
    if width is None or len(lines) <= 10 or max(len(line) for line in lines) <= width:
        return None
    linesep = run_policy.linesep.encode("ascii")
    sniff = linesep.join(lines[:10]) + linesep  # as _encode_text makes it
    cte = parts.ctes.get(sniff)
    if cte is None:
        qp = quoprimime.body_encode(sniff.decode("latin-1"), width)
        cte = parts.ctes[sniff] = "base64" if len(qp) > len(binascii.b2a_base64(sniff)) else "quoted-printable"
    return cte


def sender(name: str, address: str, parts: PartCache | None = None) -> Address:
    """The From address: made (its addr-spec parsed, RFC 5322 §3.4.1) once a run for the targets that share it.
    An Address is immutable, and one that cannot be made raises as ever, every time: only one made is kept."""
    if parts is None:
        return Address(display_name=name, addr_spec=address)
    made = parts.addresses.get((name, address))
    if made is None:
        made = parts.addresses[(name, address)] = Address(display_name=name, addr_spec=address)
    return made


def boundary() -> str:
    """A multipart boundary (RFC 2046 §5.1.1) that no part of ours can contain: "=_" appears in neither a
    quoted-printable body (RFC 2045 §6.7: "=" starts a hex pair or a soft line break) nor a base64 one (§6.8: "="
    only pads the end), and a text part would have to hold the 128 random bits after it. Chosen here, the email
    package's generator need not search every message's text for its own random boundary (a regular expression
    compiled per message, a sixth of rendering one); `_delimits` still checks the result."""
    return "=_" + _random.token_hex(16)


def _delimits(msg: EmailMessage, data: bytes, chosen: str | None = None) -> bool:
    """The boundary of `msg` (if multipart) occurs in `data` only as its delimiter lines: one before each part and
    the closing one (RFC 2046 §5.1.1), never inside a part. `chosen`: the boundary _build gave `msg` (make_mixed
    set it as the Content-Type's parameter, which the generator then used), not read back from that field."""
    mark = (chosen if msg.is_multipart() else None) if chosen is not None else msg.get_boundary()
    if mark is None:
        return True
    return data.count(b"\r\n--" + mark.encode("ascii")) == len(msg.get_payload()) + 1


def _flatten(msg: EmailMessage, parts: PartCache | None = None) -> bytes:
    """msg.as_bytes(), as EmailMessage.as_bytes does it (the generator takes the message's policy); with `parts`,
    each of the run's shared parts written as it was for the run's first message (_Generator)."""
    out = BytesIO()
    if parts is not None and msg.policy is parts.policy:
        _Generator(out, msg.policy, parts).flatten(msg, unixfrom=False)
    else:
        BytesGenerator(out, mangle_from_=False, policy=msg.policy).flatten(msg, unixfrom=False)
    return out.getvalue()


_PLAIN_ID = re.compile(r"<[0-9A-Za-z_-]+(?:\.[0-9A-Za-z_-]+)*@[0-9A-Za-z_-]+(?:\.[0-9A-Za-z_-]+)*>")
_LINE_END = re.compile(r"\r\n|\r|\n")  # email.generator's NLCRE


class _Generator(BytesGenerator):
    """BytesGenerator that writes a part the run's messages share (an attachment part of its PartCache) as the
    bytes it wrote for that part the first time, under the same settings.

    Flattening a part is a function of the part and of the generator's settings alone: the part is never changed
    once made (attachment_part; messages only attach it, and the generator only reads it), and the policy is the
    run's own object (immutable, as every policy; its memory only ever gives back what a fresh computation gives).
    So the bytes kept are the bytes the generator would write again: a third of the work of writing a message,
    spent once a run. Anything else (the message itself, its text part, another policy, other settings) is written
    as BytesGenerator writes it."""

    def __init__(self, out: BytesIO, policy: Any, parts: PartCache) -> None:
        super().__init__(out, mangle_from_=False, policy=policy)  # as _flatten's BytesGenerator; no maxheaderlen
        self._out = out
        self._parts = parts

    def clone(self, fp: Any) -> _Generator:
        """What BytesGenerator.clone makes (for each part of a multipart: the same settings and the generator's
        policy of the moment), keeping the run's parts."""
        return type(self)(fp, self.policy, self._parts)

    def flatten(self, msg: Any, unixfrom: bool = False, linesep: str | None = None) -> None:
        parts = self._parts
        # Only the run's own policy object: the settings the kept bytes were written under are then these, and
        # the kept entries stay one per part and line separator.
        part = parts.shared.get(id(msg))
        if unixfrom or self.policy is not parts.policy or part is None or part is not msg:
            super().flatten(msg, unixfrom, linesep)
            return
        key = (id(part), linesep)
        data = parts.flat.get(key)
        if data is None:
            out = BytesIO()
            BytesGenerator(out, mangle_from_=False, policy=self.policy).flatten(part, False, linesep)
            data = parts.flat[key] = out.getvalue()
        self._out.write(data)  # all that flatten writes there: the part, its headers and its body

    def _write_lines(self, lines: str) -> None:
        """Generator._write_lines in one write: it splits the text at every line end (CRLF, CR or LF: its NLCRE)
        and writes each line and the policy's line end, so the bytes are the text with each line end replaced.
        Text that is not all ASCII (an 8bit body's surrogate-escaped octets) is written line by line, as ever."""
        policy = self.policy  # flatten's, for its duration (when this is called): the line end it wrote is its
        if policy is None or not lines.isascii():
            super()._write_lines(lines)  # type: ignore[misc]  # the stdlib's, private to typeshed
        elif "\r" not in lines:  # then each LF is a line end, and the only one: replaced without a regex
            self.write(lines.replace("\n", policy.linesep))
        else:
            self.write(_LINE_END.sub(policy.linesep.replace("\\", "\\\\"), lines))


class _RunPolicy(EmailPolicy):
    """policy.SMTP, remembering for one run what it made from equal inputs: the header object it parsed from a
    name and value it met before, and the line it folded from a header object shared by messages (or from raw
    field text it met before) under the same folding settings.

    Rendering 50 messages that differ in a few headers spent most of its time in the email package parsing and
    folding the same header values again (From, To, Date, the MIME headers of the text part and the attachments).
    Both steps are functions of their inputs (a header object is an immutable str with its parse tree, made by
    `header_factory` from the name and value alone; folding reads the object and the policy's settings), so the
    remembered result is the one a fresh computation gives: the messages are byte for byte what policy.SMTP makes.
    A value is kept from its second use on, so what each message has of its own (Message-ID, the multipart
    boundary) costs the run only its key, not a parse tree per target. Clones (the generator clones the policy for
    each MIME part) share the memory; it lives as long as the run's PartCache. Header values hold no secret
    (attachment data is never a header)."""

    memory: dict[Any, Any] | None = None  # set once by remembering() (policies are immutable); None: forget

    @classmethod
    def remembering(cls) -> _RunPolicy:
        """policy.SMTP (the default policy, CRLF line ends) with a memory of its own, and a header registry that
        makes each header class once (_Registry)."""
        made = cls(linesep="\r\n", header_factory=_Registry())
        object.__setattr__(made, "memory", {})  # what Policy.__init__ does with a keyword; typeshed knows no such
        return made

    @staticmethod
    def _held(memory: dict[Any, Any], header: Any) -> bool:
        return memory.get(("held", id(header))) is header

    def hold(self, header: Any) -> None:
        """`header` (an object, kept alive here) is one that several messages carry: its folded lines are kept."""
        if self.memory is not None:
            self.memory[("held", id(header))] = header

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        memory = self.memory
        if memory is None:
            return super().header_store_parse(name, value)
        if type(value) is str:  # not a header object (a str too): that one is stored as it is
            key: tuple[Any, ...] = ("parse", name, value)
        elif type(value) is Address:  # From: an immutable value whose repr names each of its fields
            key = ("parse", name, repr(value))
        else:
            return super().header_store_parse(name, value)
        found = memory.get(key, _UNSEEN)
        if found is _UNSEEN or found is None:
            made = super().header_store_parse(name, value)  # raises as ever: nothing remembered then
            if found is _UNSEEN:
                memory[key] = None  # met once: maybe a value of one message's own
                return made
            found = memory[key] = made
            self.hold(made[1])
        return found  # type: ignore[no-any-return]

    def fold_binary(self, name: str, value: Any) -> bytes:
        memory = self.memory
        if memory is None:
            return super().fold_binary(name, value)
        settings = (self.linesep, self.max_line_length, self.utf8, self.cte_type, self.refold_source)
        if type(value) is str:  # raw field text (set_raw) folds by its text: kept from its second use
            key: tuple[Any, ...] = ("fold", name, value, settings)
            found = memory.get(key, _UNSEEN)
            if found is _UNSEEN or found is None:
                folded = super().fold_binary(name, value)
                memory[key] = None if found is _UNSEEN else folded
                return folded
            return found  # type: ignore[no-any-return]
        # A header object by its identity, only one held (alive) here: two objects of one text may differ.
        if not self._held(memory, value):
            return super().fold_binary(name, value)
        key = ("fold", name, id(value), settings)
        found = memory.get(key)
        if found is None:
            found = memory[key] = super().fold_binary(name, value)
        return found  # type: ignore[no-any-return]


_UNSEEN = object()


class _Registry(HeaderRegistry):
    """The email package's HeaderRegistry, making the class of each header name once per run.

    HeaderRegistry makes a new class (type(), from the registered class and BaseHeader) every time a header is set
    or parsed, for classes that differ in nothing but identity: a few hundred per 50 messages, a tenth of rendering
    them. The same registry, the same classes: a header object is what a fresh registry makes, and so are the bytes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made

    def map_to_type(self, name: str, cls: type[BaseHeader]) -> None:
        self._made.pop(name.lower(), None)
        super().map_to_type(name, cls)


class PartCache:
    """What one run's targets share when their messages are rendered: the attachments made into MIME parts (made
    once, the same part attached to every message; generating a message only reads its parts), the Diagnostics
    text, the run's header memory (_RunPolicy) and its multipart boundary. Keyed by the inputs themselves (an
    Attachment by its name, type and data; headers by name and value), so a target only ever gets what its own
    payload holds. One run's, never kept longer, as it holds the payload.

    One boundary for the run: RFC 2046 §5.1.1 asks only that it occur in no part, which `render` checks for each
    message, and the Content-Type field that carries it is then parsed once for all of them (_RunPolicy), where a
    boundary of each message's own cost a parse each, a sixth of rendering one."""

    __slots__ = ("addresses", "attachments", "bodies", "boundary", "ctes", "diagnostics", "flat", "policy", "shared")

    def __init__(self) -> None:
        self.attachments: dict[Attachment, EmailMessage] = {}
        self.shared: dict[int, EmailMessage] = {}  # the parts of `attachments` by identity (_Generator)
        self.flat: dict[tuple[int, str | None], bytes] = {}  # a shared part as written, by identity and line end
        self.addresses: dict[tuple[str, str], Address] = {}  # From, by display name and address (sender)
        self.diagnostics: dict[tuple[Finding, ...], str] = {}
        # The text part's fields but the target's name (body_fields), by certificate, payload and findings.
        self.bodies: dict[tuple[CertificateFacts, Payload, tuple[Finding, ...]], dict[str, str]] = {}
        self.policy = _RunPolicy.remembering()
        self.ctes: dict[bytes, str] = {}  # a text part's transfer encoding by its sniff (_text_cte)
        self.boundary = boundary()


def attachment_part(att: Attachment, parts: PartCache | None = None) -> EmailMessage:
    """`att` as the MIME part EmailMessage.add_attachment would make. A fan-out sends the same attachments to
    every target, and making the part (its headers parsed, its data base64-encoded) is a third of rendering a
    message: with `parts` each is made once and the same part attached to every message."""
    part = parts.attachments.get(att) if parts is not None else None
    if part is None:
        part = EmailMessage(policy=policy.SMTP)
        maintype, _, subtype = att.content_type.partition("/")
        # bytes attachments are always base64 (RFC 2045 §6.8), whatever they contain.
        part.set_content(att.data, maintype=maintype, subtype=subtype, filename=att.filename)
        if "content-disposition" not in part:
            part["Content-Disposition"] = "attachment"
        if parts is not None:
            parts.attachments[att] = part
            parts.shared[id(part)] = part
            for _, header in part.raw_items():  # every message of the run carries them
                parts.policy.hold(header)
    return part


MAX_LINE = 78  # RFC 5322 §2.1.1: SHOULD; "Subject: " comes first on the first line
# RFC 2047 §2: an encoded-word is at most 75 characters. Each one here fits on the first line after "Subject: "
# ("=?utf-8?b?" + 56 base64 + "?=" = 68 <= 78 - 9): a longer line would make the email package refold the
# field, which parses it, and parsing decodes.
_WORD_BYTES = 42


def subject_field(text: str) -> str:
    """The Subject field body whose decoded value is exactly `text`, whatever `text` holds.

    Text from a certificate (its CN) is attacker-influenced: a CN of "=?utf-8?q?x=0D=0ABcc:_a@b?=" set through
    the email package is decoded into a CR LF at once, and on interpreters without the CVE-2024-6923 fix written
    out as a header line of its own. So the field is built here: plain ASCII without "=?" is folded at its own
    spaces (unfolding, RFC 5322 §2.2.3, gives back the same text); anything else becomes our own base64
    encoded words (RFC 2047 §4.1), each a whole number of characters (§5), whose decoding is the literal text,
    "=?" included, and nothing more: adjacent encoded words join without the folding space (§6.2).
    """
    if text.isascii() and "=?" not in text and text == text.strip():
        folded = _fold_at_spaces(text, MAX_LINE - len("Subject: "))
        if all(line.strip() and len(line) <= MAX_LINE for line in folded.split("\r\n")):  # §3.2.2: no blank
            return folded
    words: list[str] = []
    chunk = ""
    for char in text:
        if len((chunk + char).encode()) > _WORD_BYTES:
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w.encode()).decode('ascii')}?=" for w in words if w)


def _fold_at_spaces(text: str, first: int) -> str:
    lines: list[str] = []
    line, room = "", first
    for index, word in enumerate(text.split(" ")):
        piece = word if index == 0 else " " + word
        if line and len(line) + len(piece) > room:
            lines.append(line)
            line, room = piece, MAX_LINE  # the fold keeps the space: it starts the continuation line
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines)


def colon_hex(hex_string: str) -> str:
    h = hex_string.upper()
    if len(h) % 2:
        h = "0" + h
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))
