"""Every spelling of a secret that could come back in relay text or a transcript, and scrubbing them out."""

from __future__ import annotations

import base64
from collections.abc import Iterable

from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist.model import Secret

MASK = "***"


def secret_forms(secrets: Iterable[Secret], username: str | None) -> list[str]:
    """Every spelling of a secret that could come back in relay text: plain, the SASL PLAIN/LOGIN base64, and
    each as classify's printable-only cleaning would show it. Longest first, so a longer form is never left
    half-scrubbed by a shorter one."""
    forms: set[str] = set()
    for s in secrets:
        value = s.reveal()
        if not value:
            continue
        spelled = [value, base64.b64encode(value.encode()).decode()]
        if username is not None:
            spelled.append(base64.b64encode(f"\0{username}\0{value}".encode()).decode())
        forms.update(spelled)
        forms.update(printable(f) for f in spelled)
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, forms: Iterable[str]) -> str:
    for form in forms:
        text = text.replace(form, MASK)
    return text
