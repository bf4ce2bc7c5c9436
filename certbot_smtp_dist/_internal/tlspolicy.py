"""The one TLS client policy of the package, for the relay and the OAuth 2.0 token endpoint alike."""

from __future__ import annotations

import ssl
from pathlib import Path


def verified_context(extra_anchor: Path | None) -> ssl.SSLContext:
    """Certificate and host name verified against the system store plus `extra_anchor`, TLS 1.2 at least
    (RFC 7525 §3.1.1, §4; RFC 8314 §5). Loading the system store costs tens of milliseconds: build one per run and
    trust configuration (transport.TlsContexts), not one per connection."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra_anchor is not None:
        ctx.load_verify_locations(cafile=str(extra_anchor))
    return ctx
