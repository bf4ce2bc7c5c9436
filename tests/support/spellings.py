"""The spellings of a secret a hostile relay can echo, and an oracle that reads them back from text by decoding
(its UTF-8 and UTF-16 bytes; letters compared case-folded, non-ASCII ones included).

Built independently of certbot_smtp_dist._internal.scrub, so tests of the scrubber do not grade their own homework.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse

USER = "robot"


def encodings(secret: str) -> dict[str, str]:
    """Every way a hostile relay can spell the secret, built independently of the scrubber."""
    raw = secret.encode()
    return {
        "plain": secret,
        "upper": secret.upper(),
        "lower": secret.lower(),
        "swapped": secret.swapcase(),
        "mixed": "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(secret)),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "percent": urllib.parse.quote(secret, safe=""),
        "percent-lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), urllib.parse.quote(secret, safe="")),
        "percent-all": "".join(f"%{b:02X}" for b in raw),
        "b64": base64.b64encode(raw).decode(),
        "b64-plain-blob": base64.b64encode(b"\0" + USER.encode() + b"\0" + raw).decode(),
        "b64-authzid-blob": base64.b64encode(b"u\0" + USER.encode() + b"\0" + raw + b"\0").decode(),
        "b64-offset-2": base64.b64encode(b"ab" + raw + b"xyz").decode(),
        "b64-urlsafe": base64.urlsafe_b64encode(b"a" + raw).decode(),
        "utf16le-hex": secret.encode("utf-16-le").hex(),
        "utf16be-HEX": secret.encode("utf-16-be").hex().upper(),
        "utf16le-b64-blob": base64.b64encode("\0robot\0".encode("utf-16-le") + secret.encode("utf-16-le")).decode(),
        "utf16be-b64-offset-1": base64.b64encode(b"a" + secret.encode("utf-16-be") + b"z").decode(),
        "utf16le-percent": urllib.parse.quote(secret.encode("utf-16-le"), safe=""),
        "utf16be-percent-plus": urllib.parse.quote_plus(secret.encode("utf-16-be"), safe=""),
        "utf16le-percent-all": "".join(f"%{b:02x}" for b in secret.encode("utf-16-le")),
        # percent-encoded UTF-16 of the secret in another letter case (non-ASCII letters too: "Ä" for "ä")
        "utf16le-percent-swapped": urllib.parse.quote(secret.swapcase().encode("utf-16-le"), safe=""),
        "utf16be-percent-upper": urllib.parse.quote(secret.upper().encode("utf-16-be"), safe=""),
    }


def split_lines(form: str, at: int) -> str:
    """The form split across two reply lines the way smtpwire hands them over ("\\n"-joined)."""
    at = max(1, min(at, len(form) - 1))
    return f"{form[:at]}\n{form[at:]}"


def leaks(secret: str, text: str) -> list[str]:
    """Which spellings of `secret` can be read back from `text` (the oracle: decode, don't pattern-match)."""
    lowered = secret.casefold()
    encoded = [secret.encode(), secret.encode("utf-16-le"), secret.encode("utf-16-be")]
    found: list[str] = []
    unquote = urllib.parse.unquote_plus

    def join(text: str) -> str:
        return re.sub(r" / |\s", "", text)

    views = {"as is": text, "joined": join(text), "percent": unquote(text), "percent, joined": join(unquote(text)),
             "joined, percent": unquote(join(text))}
    octets = {"percent": urllib.parse.unquote_to_bytes(text.replace("+", " ")),
              "joined, percent": urllib.parse.unquote_to_bytes(join(text).replace("+", " "))}
    for name, data in octets.items():  # percent-encoded UTF-16, read back as text in either byte order
        readings = [data[start:].decode(codec, "replace") for codec in ("utf-16-le", "utf-16-be") for start in (0, 1)]
        if any(lowered in reading.casefold() for reading in readings):
            found.append(f"{name}: utf-16")
    for name, view in views.items():
        if lowered in view.casefold() or re.sub(r"\s", "", lowered) in view.casefold():
            found.append(f"{name}: plain")
        if any(e.hex() in view.lower() for e in encoded):
            found.append(f"{name}: hex")
        for run in re.findall(r"[A-Za-z0-9+/\-_]{4,}", view):
            for offset in range(4):
                chunk = run[offset:].translate(str.maketrans("-_", "+/"))
                chunk = chunk[: len(chunk) - (len(chunk) % 4 == 1)]
                chunk += "=" * (-len(chunk) % 4)
                try:
                    decoded = base64.b64decode(chunk, validate=True)
                except (binascii.Error, ValueError):
                    continue
                if any(e in decoded for e in encoded):
                    found.append(f"{name}: base64")
    return found
