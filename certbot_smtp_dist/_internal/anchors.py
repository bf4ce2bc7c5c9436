"""Find the trust anchors named as a certificate's issuer: OpenSSL's hashed directory first, else a PEM bundle.

A deploy is a cold process with a budget (issue 16): the system store is never parsed whole on that path. OpenSSL's
c_rehash layout (/etc/ssl/certs/<subject hash>.<n>) answers "which anchors have this subject?" with one stat and
one small read; a bundle (a distribution without that directory, or --ca-file) is scanned by raw DER, and only the
certificates whose subject matches are parsed. Every read is bounded (files.read_regular); the store's own
symbolic links (hash -> /usr/share/ca-certificates/...) are followed, as OpenSSL follows them. SSL_CERT_DIR may
name several directories, separated by ':' as OpenSSL reads it (by_dir.c, add_cert_dir): each is read in turn.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import der, files, pem

MAX_BUNDLE_BYTES = 8 << 20  # Debian's ca-certificates.crt is about 200 kB; a bundle is public, but read bounded
MAX_HASH_COLLISIONS = 16  # <hash>.0 ... <hash>.15: real stores hold one or two per name
# Directories of an SSL_CERT_DIR list read (OpenSSL reads them all): real lists name one to three; a hostile or
# mistaken environment naming thousands costs a deploy at most this many stats per name looked up.
MAX_CERT_DIRS = 32
MAX_LAYOUT_ENTRIES = 100_000  # directory entries looked at, in all the directories, to tell a c_rehash layout
# X.680 universal tags of the directory string types OpenSSL canonicalises (x_name.c, ASN1_MASK_CANON), and
# the codec each is read with (ASN1_STRING_to_UTF8: one byte per character for the 8-bit ones).
_CANON_CODECS = {0x0C: "utf-8", 0x13: "latin-1", 0x14: "latin-1", 0x16: "latin-1", 0x1A: "latin-1",
                 0x1E: "utf-16-be", 0x1C: "utf-32-be"}
_SPACE = b" \t\n\v\f\r"  # ossl_isspace
_HASH_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")


@dataclass(frozen=True, slots=True)
class Store:
    """Where anchors are looked up: hashed directories (`capaths`, in order), a bundle (`cafile`), or both; `label`
    names it in findings ("the system trust store", "--ca-file F"). Without `thorough` (the deploy path) a name
    missing from the hashed directories is not searched for again in the bundle, which on Debian holds the same
    anchors."""

    label: str
    capaths: tuple[Path, ...] = ()
    cafile: Path | None = None
    thorough: bool = True
    _bundle: list[bytes] = field(default_factory=list, compare=False, repr=False)  # bundle DER, once read
    _index: dict[bytes, list[bytes]] = field(default_factory=dict, compare=False, repr=False)
    _layout: list[bool] = field(default_factory=list, compare=False, repr=False)

    def candidates(self, name_der: bytes) -> Iterator[Any]:
        """The certificates in this store whose subject is the Name `name_der` (DER), parsed; at most a few."""
        from cryptography import x509

        wanted = canonical(name_der)
        found = list(self._hashed(wanted))
        if not found and self.cafile is not None and (self.thorough or not self.hashed_layout()):
            found = self._indexed().get(wanted, [])
        for blob in found:
            with warnings.catch_warnings():  # a store's old root with a negative serial: cryptography warns
                warnings.simplefilter("ignore")
                yield x509.load_der_x509_certificate(blob)

    def _hashed(self, canon: bytes) -> Iterator[bytes]:
        """The certificates in the files named by `canon`'s hash, directory by directory until one holds a
        certificate whose subject is `canon`: OpenSSL's by_dir.c (get_cert_by_subject) reads the next directory
        only on a miss."""
        digest = hashlib.sha1(canon, usedforsecurity=False).digest()
        stem = f"{int.from_bytes(digest[:4], 'little'):08x}"
        for directory in self.capaths[:MAX_CERT_DIRS]:
            found: list[bytes] = []
            for n in range(MAX_HASH_COLLISIONS):
                try:
                    data, _ = files.read_regular(directory / f"{stem}.{n}")
                except (OSError, ValueError):
                    break  # OpenSSL stops at the first gap too
                found += _certificate_blocks(data)
            yield from found
            if any(canonical(subject_der(blob)) == canon for blob in found):
                return

    def hashed_layout(self) -> bool:
        """Whether one of the store's directories is a c_rehash directory, where a miss is authoritative."""
        if not self._layout:  # asked once per store: a chain asks about several names
            self._layout.append(_hashed_layout(self.capaths[:MAX_CERT_DIRS]))
        return self._layout[0]

    def _indexed(self) -> dict[bytes, list[bytes]]:
        """The bundle's certificates by canonical subject, built once per store (a chain asks several names)."""
        if not self._index:
            for blob in self._scan_bundle():
                self._index.setdefault(canonical(subject_der(blob)), []).append(blob)
        return self._index

    def _scan_bundle(self) -> list[bytes]:
        if not self._bundle and self.cafile is not None:
            try:
                data, _ = files.read_regular(self.cafile, MAX_BUNDLE_BYTES)
            except (OSError, ValueError):
                return []
            self._bundle.extend(_certificate_blocks(data))
        return self._bundle


def _hashed_layout(capaths: tuple[Path, ...]) -> bool:
    """Whether one of `capaths` is a c_rehash directory (Debian's /etc/ssl/certs), where a miss is authoritative;
    Fedora's /etc/pki/tls/certs, for one, holds only bundles. The first hash-named entry answers it."""
    budget = MAX_LAYOUT_ENTRIES
    for capath in capaths:
        try:
            with os.scandir(capath) as entries:
                for entry in itertools.islice(entries, budget):
                    if _HASH_NAME.fullmatch(entry.name):
                        return True
                    budget -= 1
        except OSError:
            continue
        if budget <= 0:
            break
    return False


def system_store(thorough: bool = True) -> Store:
    """OpenSSL's default locations, SSL_CERT_DIR / SSL_CERT_FILE honoured as OpenSSL reads them when the ssl module
    loads the default paths (X509_LOOKUP_add_dir / load_file): a variable that is set wins, even empty (then no
    directory, or no bundle, is read); SSL_CERT_DIR is a list of directories (cert_dirs)."""
    import _ssl  # the C module alone: ssl.get_default_verify_paths without importing all of ssl.py

    cafile_env, cafile, capath_env, capath = _ssl.get_default_verify_paths()
    cafile = os.environ.get(cafile_env, cafile)
    capath = os.environ.get(capath_env, capath)
    return Store("the system trust store", cert_dirs(capath or ""), Path(cafile) if cafile else None, thorough)


def cert_dirs(value: str) -> tuple[Path, ...]:
    """The directories of an SSL_CERT_DIR value as OpenSSL's by_dir.c (add_cert_dir) takes them: split on ':'
    (os.pathsep; ';' on Windows, as OpenSSL's LIST_SEPARATOR_CHAR), empty entries and repeats skipped, in order;
    at most MAX_CERT_DIRS of them (OpenSSL has no bound: a lookup past it is not made here)."""
    out: list[Path] = []
    for entry in itertools.islice(value.split(os.pathsep), MAX_CERT_DIRS * 8):  # bounded even of "::::..."
        if entry and Path(entry) not in out:
            out.append(Path(entry))
            if len(out) == MAX_CERT_DIRS:
                break
    return tuple(out)


def file_store(path: Path) -> Store:
    """A PEM bundle given by the user (--ca-file), read now, bounded, under the rule of the lineage's files
    (lineage.read_trusted): links followed only where no other user can re-point them, and the file opened is
    where that check found it. Raises UnsafePathError when it is not safe to trust (nothing read), OSError when it
    cannot be read, ValueError when it holds no certificate."""
    from certbot_smtp_dist._internal import ownership

    checked = ownership.require_steady_links(path)
    data, _ = files.read_regular(path, MAX_BUNDLE_BYTES, checked=checked)
    try:
        found = [b.der for b in pem.blocks(data) if b.label == pem.CERTIFICATE]
    except pem.PemError as exc:
        raise ValueError(str(exc)) from exc
    if not found:
        raise ValueError("holds no PEM certificate")
    return Store(f"--ca-file {path}", (), path, True, found)


def _certificate_blocks(data: bytes) -> list[bytes]:
    try:
        return [b.der for b in pem.blocks(data) if b.label == pem.CERTIFICATE]
    except pem.PemError:
        return []


def subject_der(cert_der: bytes) -> bytes:
    """The subject Name (DER) of a certificate (RFC 5280 §4.1), walked without parsing the rest; b"" if malformed."""
    return _name_der(cert_der, 4)  # serial, signature, issuer, validity, then subject


def issuer_der(cert_der: bytes) -> bytes:
    """The issuer Name (DER) of a certificate, walked as subject_der is: what a store is asked for, read without
    decoding a name a hostile peer may have made undecodable; b"" if malformed."""
    return _name_der(cert_der, 2)  # serial, signature, then issuer


def _name_der(cert_der: bytes, index: int) -> bytes:
    """The element at `index` of a tbsCertificate after its optional [0] version (RFC 5280 §4.1)."""
    try:
        _, cert, _ = der.tlv(cert_der, 0)
        _, pos, _ = der.tlv(cert_der, cert)  # tbsCertificate
        fields = 0
        while True:
            tag, _, end = der.tlv(cert_der, pos)
            if tag == 0xA0 and fields == 0:  # [0] version, optional
                pos = end
                continue
            if fields == index:
                return cert_der[pos:end]
            fields, pos = fields + 1, end
    except ValueError:
        return b""


def canonical(name_der: bytes) -> bytes:
    """OpenSSL's canonical encoding of a Name (x509_name_canon), whose SHA-1 names the hashed files: string values
    as UTF8String, ASCII lowercased, outer and repeated white space dropped; each RDN's SET kept, the outer
    SEQUENCE header dropped. Malformed DER gives b"" (matches nothing real)."""
    try:
        _, pos, end = der.tlv(name_der, 0)
        out = []
        while pos < end:
            _, set_pos, set_end = der.tlv(name_der, pos)
            entries = []
            while set_pos < set_end:
                _, atv_pos, atv_end = der.tlv(name_der, set_pos)
                _, _, oid_end = der.tlv(name_der, atv_pos)
                value = _canonical_value(name_der[oid_end:atv_end])
                entries.append(der.encode(0x30, name_der[atv_pos:oid_end] + value))
                set_pos = atv_end
            out.append(der.encode(0x31, b"".join(sorted(entries))))  # DER SET OF: sorted encodings (X.690 §11.6)
            pos = set_end
        return b"".join(out)
    except (ValueError, UnicodeDecodeError):
        return b""


def _canonical_value(tlv: bytes) -> bytes:
    tag, start, end = der.tlv(tlv, 0)
    codec = _CANON_CODECS.get(tag)
    if codec is None:
        return tlv
    text = tlv[start:end].decode(codec).encode("utf-8").strip(_SPACE)
    return der.encode(0x0C, b" ".join(w.lower() for w in _split_space(text)))  # bytes.lower: ASCII only, as OpenSSL


def _split_space(text: bytes) -> list[bytes]:
    out, word = [], bytearray()
    for byte in text:
        if byte in _SPACE:
            if word:
                out.append(bytes(word))
                word.clear()
        else:
            word.append(byte)
    if word:
        out.append(bytes(word))
    return out
