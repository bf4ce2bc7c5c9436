"""Scanning what the tool wrote (output, logs, transcripts, state files) for any spelling of a secret."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping


def spellings(secret: str, username: str | None = None) -> tuple[str, ...]:
    """The secret as typed, in base64 (AUTH LOGIN) and inside the SASL PLAIN blob (RFC 4616)."""
    forms = [secret, base64.b64encode(secret.encode()).decode()]
    if username is not None:
        forms.append(base64.b64encode(f"\0{username}\0{secret}".encode()).decode())
    return tuple(forms)


def leaks(haystacks: Mapping[str, str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """(where, secret) for every secret found in a haystack; empty when nothing leaked."""
    wanted = [s for s in secrets if s]
    return [(where, s) for where, text in haystacks.items() for s in wanted if s in text]
