"""Split PEM text into its blocks and write them back canonically (RFC 7468); text between blocks is ignored."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

# RFC 7468 §3: a label is printable ASCII other than "-", single spaces or hyphens between words; it may be empty.
_LABEL = rb"((?:[\x21-\x2c\x2e-\x7e](?:[- ]?[\x21-\x2c\x2e-\x7e])*)?)"
_BEGIN = re.compile(rb"-----BEGIN " + _LABEL + rb"-----")
_END = re.compile(rb"-----END " + _LABEL + rb"-----")
CERTIFICATE = "CERTIFICATE"
SHOWN_LABEL = 40  # characters of a label quoted in a message: real ones are short, a hostile one may be 1 MiB


class PemError(ValueError):
    """The text is not a sequence of well-formed PEM blocks: the message says which block and why."""


@dataclass(frozen=True, slots=True)
class Block:
    """One BEGIN/END block: its label, its decoded content and the line it begins on (for messages)."""

    label: str
    der: bytes = field(repr=False)
    line: int

    @property
    def shown(self) -> str:
        """The label as messages quote it."""
        return shown(self.label)

    @property
    def is_private_key(self) -> bool:
        """PRIVATE KEY (PKCS #8), ENCRYPTED PRIVATE KEY, RSA/EC/DSA PRIVATE KEY (OpenSSL's), and the like."""
        return self.label.endswith("PRIVATE KEY")

    def encode(self) -> bytes:
        """The canonical textual encoding (RFC 7468 §2): 64-character base64 lines, no headers, nothing around it."""
        body = base64.b64encode(self.der)
        lines = [body[i:i + 64] for i in range(0, len(body), 64)]
        label = self.label.encode("ascii")
        return b"".join([b"-----BEGIN " + label + b"-----\n", *(ln + b"\n" for ln in lines),
                         b"-----END " + label + b"-----\n"])


def blocks(data: bytes) -> list[Block]:
    """Every block in `data`, in order. Explanatory text outside blocks (RFC 7468 §5.2, e.g. OpenSSL's
    "subject=" lines) is skipped; a block that is never ended, ends under another label, carries RFC 1421
    headers or is not base64 raises PemError."""
    out: list[Block] = []
    label: str | None = None
    body: list[bytes] = []
    start = 0
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if label is None:
            begin = _BEGIN.fullmatch(line)
            if begin:
                label, body, start = begin.group(1).decode("ascii"), [], number
            continue
        end = _END.fullmatch(line)
        if end:
            out.append(_block(label, end.group(1).decode("ascii"), body, start))
            label = None
        elif _BEGIN.fullmatch(line):
            raise PemError(f"the {shown(label)} block of line {start} is not ended before line {number} begins "
                           "another")
        else:
            body.append(line)
    if label is not None:
        raise PemError(f"the {shown(label)} block of line {start} is never ended (a truncated file?)")
    return out


def shown(label: str) -> str:
    return label if len(label) <= SHOWN_LABEL else label[:SHOWN_LABEL] + "..."


def _block(label: str, end_label: str, body: list[bytes], start: int) -> Block:
    if end_label != label:
        raise PemError(f"the {shown(label)} block of line {start} ends as {shown(end_label)}")
    if any(b":" in line for line in body):
        raise PemError(f"the {shown(label)} block of line {start} carries headers (an encrypted key?); "
                       "only plain RFC 7468 blocks are read")
    try:
        der = base64.b64decode(b"".join(body), validate=True)
    except binascii.Error as exc:
        raise PemError(f"the {shown(label)} block of line {start} is not valid base64") from exc
    return Block(label, der, start)
