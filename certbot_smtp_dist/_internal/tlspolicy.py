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

    Without `whole_store`, where the system store is one generation of a c_rehash directory and its bundle (Debian's
    /etc/ssl/certs and the ca-certificates.crt in it, both written by update-ca-certificates from the same anchors),
    the context trusts that directory alone, looked up lazily (X509_LOOKUP_hash_dir), and the bundle is not read.
    A certificate it refuses is judged again under the whole store (transport.deliver), so an anchor found only in
    the bundle (one appended to it by hand) is still trusted. Elsewhere it is the whole store: no such directory
    (Fedora's /etc/pki/tls/certs holds bundles only), or a bundle kept elsewhere (SSL_CERT_FILE naming, say, an old
    certifi copy), whose certificates may shadow the directory's: OpenSSL's whole store asks the directory only for
    a name no loaded certificate has (X509_STORE_CTX_get1_certs), so a bundle's expired or re-keyed namesake of a
    directory anchor makes it refuse a chain the directory alone would accept.
    """
    lookup = () if whole_store else _first_look()[0]
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
    stands in for it, and there is a bundle it does not read): only then is a refusal under it worth a second
    look."""
    dirs, bundle = _first_look()
    return bool(dirs) and bundle


def _first_look() -> tuple[tuple[Path, ...], bool]:
    """The system store's directories (SSL_CERT_DIR honoured) that the first look trusts: all of them when one is a
    c_rehash directory and the bundle (SSL_CERT_FILE honoured) is absent or sits in one of them, as one generator
    writes them; else (). And whether that bundle exists."""
    from certbot_smtp_dist._internal import anchors

    store = anchors.system_store(thorough=False)
    bundle = store.cafile is not None and os.path.lexists(store.cafile)
    if not store.hashed_layout():
        return (), bundle
    if store.cafile is not None and bundle:
        # Compared, not opened: where the store's own symbolic links lead (Debian: /usr/lib/ssl/cert.pem to
        # /etc/ssl/certs/ca-certificates.crt, /usr/lib/ssl/certs to /etc/ssl/certs).
        home = os.path.dirname(os.path.realpath(store.cafile))
        if not any(os.path.realpath(d) == home for d in store.capaths):
            return (), bundle
    return store.capaths, bundle
