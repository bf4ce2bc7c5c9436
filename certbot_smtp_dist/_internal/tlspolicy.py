"""The one TLS client policy of the package, for the relay and the OAuth 2.0 token endpoint alike."""

from __future__ import annotations

import os
import ssl
from pathlib import Path


def verified_context(extra_anchor: Path | None, *, whole_store: bool = True) -> ssl.SSLContext:
    """Certificate and host name verified against the system store plus `extra_anchor`, TLS 1.2 at least
    (RFC 7525 §3.1.1, §4; RFC 8314 §5).

    The whole store is OpenSSL's default: its bundle (SSL_CERT_FILE) parsed at once, ~140 certificates, tens of
    milliseconds and about a quarter of a cold deploy's instructions, plus its hashed directories (SSL_CERT_DIR)
    looked up by subject as a chain needs them. Build one per run and trust configuration (transport.TlsContexts).

    Without `whole_store`, where the system store has a c_rehash directory (Debian's /etc/ssl/certs, written by
    update-ca-certificates from the same anchors as its bundle), the context trusts that directory alone, looked up
    lazily (X509_LOOKUP_hash_dir), and the bundle is not read. It trusts a subset of the whole store, never more;
    a certificate it refuses is judged again under the whole store (transport.deliver), so an anchor found only in
    the bundle (one appended to it by hand) is still trusted. Where there is no such directory (Fedora's
    /etc/pki/tls/certs holds bundles only) it is the whole store.
    """
    lookup = () if whole_store else _hashed_dirs()
    if lookup:  # given a capath, create_default_context loads no default paths and keeps every other setting
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=os.pathsep.join(map(str, lookup)))
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra_anchor is not None:
        ctx.load_verify_locations(cafile=str(extra_anchor))
    return ctx


def lookup_differs() -> bool:
    """Whether verified_context(..., whole_store=False) trusts less than the whole store (a c_rehash directory
    stands in for it): only then is a refusal under it worth a second look."""
    return bool(_hashed_dirs())


def _hashed_dirs() -> tuple[Path, ...]:
    """The system store's directories (SSL_CERT_DIR honoured) when one of them is a c_rehash directory."""
    from certbot_smtp_dist._internal import anchors

    store = anchors.system_store(thorough=False)
    return store.capaths if store.hashed_layout() else ()
