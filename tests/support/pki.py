"""Throw-away test PKI built with ``cryptography`` (works with cryptography >= 38).

* :func:`make_ca` / :func:`issue` build certificates;
* :func:`relay_certs` writes a CA and server certificates for the SMTP test peers;
* :func:`write_lineage` writes a certbot-like lineage (optionally broken).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import ssl
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ServerCertName = Literal["valid", "expired", "wrong_host"]
LineageFile = Literal["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"]

UTC = dt.timezone.utc
_DEFAULT_LIFETIME = dt.timedelta(days=90)
_BACKDATE = dt.timedelta(hours=1)


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}")


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8, unencrypted, PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER encoding, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def not_after_utc(cert: x509.Certificate) -> dt.datetime:
    """``not_valid_after`` as an aware UTC datetime on every cryptography version."""
    aware = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42
    if isinstance(aware, dt.datetime):
        return aware
    return cert.not_valid_after.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


def write_pem(path: Path, *items: Issued | x509.Certificate) -> Path:
    """The certificates of ``items`` as concatenated PEM, in the order given (a hand-assembled chain file)."""
    certs = [i.cert if isinstance(i, Issued) else i for i in items]
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, is_ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not is_ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=is_ca,
        crl_sign=is_ca,
        encipher_only=False,
        decipher_only=False,
    )


def _build(
    *,
    subject: x509.Name,
    issuer_name: x509.Name,
    public_key: PrivateKey,
    signing_key: PrivateKey,
    is_ca: bool,
    sans: Sequence[str],
    ip_sans: Sequence[str | IPAddress],
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> x509.Certificate:
    start = not_before if not_before is not None else utcnow() - _BACKDATE
    end = not_after if not_after is not None else start + _DEFAULT_LIFETIME
    pub = public_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_key_usage(is_ca=is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False,
        )
    )
    general_names: list[x509.GeneralName] = [x509.DNSName(name) for name in sans]
    general_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_sans]
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    if not is_ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    # RFC 8410 §6: Ed25519 signs without a separate hash.
    digest = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signing_key, digest)


def make_ca(
    common_name: str,
    *,
    key_type: KeyType = "ec",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A self-signed root CA."""
    key = new_key(key_type)
    cert = _build(
        subject=_name(common_name),
        issuer_name=_name(common_name),
        public_key=key,
        signing_key=key,
        is_ca=True,
        sans=(),
        ip_sans=(),
        not_before=not_before,
        not_after=not_after if not_after is not None else utcnow() + dt.timedelta(days=3650),
    )
    return Issued(cert=cert, key=key)


def issue(
    issuer: Issued,
    *,
    common_name: str | None = None,
    sans: Sequence[str] = (),
    is_ca: bool = False,
    key_type: KeyType = "ec",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ip_sans: Sequence[str | IPAddress] = (),
    key: PrivateKey | None = None,
) -> Issued:
    """A certificate signed by ``issuer.key`` whose issuer name is ``issuer.cert.subject``.

    ``common_name`` defaults to the first DNS SAN (then the first IP SAN).
    ``key`` reuses an existing key pair instead of generating one.
    """
    if common_name is None:
        first = [*sans, *(str(ip) for ip in ip_sans)]
        if not first:
            raise ValueError("issue() needs common_name or at least one SAN")
        common_name = first[0]
    subject_key = key if key is not None else new_key(key_type)
    cert = _build(
        subject=_name(common_name),
        issuer_name=issuer.cert.subject,
        public_key=subject_key,
        signing_key=issuer.key,
        is_ca=is_ca,
        sans=sans,
        ip_sans=ip_sans,
        not_before=not_before,
        not_after=not_after,
    )
    return Issued(cert=cert, key=subject_key)


def expired_window() -> tuple[dt.datetime, dt.datetime]:
    """(not_before, not_after) of a certificate that expired yesterday."""
    now = utcnow()
    return now - dt.timedelta(days=30), now - dt.timedelta(days=1)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


# --------------------------------------------------------------------------- TLS contexts


def server_context(
    cert_file: Path,
    key_file: Path,
    *,
    minimum_version: ssl.TLSVersion | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    seclevel0: bool = False,
) -> ssl.SSLContext:
    """A server-side context.

    To really offer TLS 1.0/1.1 with OpenSSL 3 pass ``seclevel0=True`` (the default
    security level 1+ disables them even on the server side).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    _tune(ctx, minimum_version, maximum_version, seclevel0)
    return ctx


def client_context(
    ca_file: Path | None,
    *,
    minimum_version: ssl.TLSVersion | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    seclevel0: bool = False,
) -> ssl.SSLContext:
    """A verifying client context trusting only ``ca_file`` (or nothing, if ``None``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    _tune(ctx, minimum_version, maximum_version, seclevel0)
    return ctx


def _tune(
    ctx: ssl.SSLContext,
    minimum: ssl.TLSVersion | None,
    maximum: ssl.TLSVersion | None,
    seclevel0: bool,
) -> None:
    if seclevel0:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        # ssl.TLSVersion.TLSv1/TLSv1_1 raise DeprecationWarning on 3.10+.
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum


# --------------------------------------------------------------------------- relay certificates


@dataclass(frozen=True)
class ServerCert:
    name: str
    issued: Issued
    cert_file: Path
    key_file: Path

    def server_context(
        self,
        *,
        minimum_version: ssl.TLSVersion | None = None,
        maximum_version: ssl.TLSVersion | None = None,
        seclevel0: bool = False,
    ) -> ssl.SSLContext:
        return server_context(
            self.cert_file,
            self.key_file,
            minimum_version=minimum_version,
            maximum_version=maximum_version,
            seclevel0=seclevel0,
        )


@dataclass(frozen=True)
class RelayPKI:
    """A CA and three server certificates for 127.0.0.1 / ::1 / localhost."""

    directory: Path
    ca: Issued
    ca_file: Path
    valid: ServerCert
    expired: ServerCert
    wrong_host: ServerCert

    def cert(self, which: ServerCertName = "valid") -> ServerCert:
        certs = {"valid": self.valid, "expired": self.expired, "wrong_host": self.wrong_host}
        return certs[which]

    def server_context(self, which: ServerCertName = "valid") -> ssl.SSLContext:
        return self.cert(which).server_context()

    def client_context(self) -> ssl.SSLContext:
        """Verifying client context trusting this CA (hostname checks on)."""
        return client_context(self.ca_file)


_RELAY_SANS = ("localhost",)
_RELAY_IPS = ("127.0.0.1", "::1")


def relay_certs(tmp_path: Path) -> RelayPKI:
    directory = Path(tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("certbot-smtp-dist test relay CA")
    ca_file = directory / "relay-ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    before, after = expired_window()
    issued = {
        "valid": issue(ca, sans=_RELAY_SANS, ip_sans=_RELAY_IPS),
        "expired": issue(
            ca, sans=_RELAY_SANS, ip_sans=_RELAY_IPS, not_before=before, not_after=after
        ),
        "wrong_host": issue(ca, sans=("wrong.example.net",)),
    }
    certs: dict[str, ServerCert] = {}
    for name, item in issued.items():
        cert_file = directory / f"relay-{name}.crt"
        key_file = directory / f"relay-{name}.key"
        cert_file.write_bytes(item.cert_pem())
        write_private(key_file, item.key_pem())
        certs[name] = ServerCert(name, item, cert_file, key_file)
    return RelayPKI(
        directory=directory,
        ca=ca,
        ca_file=ca_file,
        valid=certs["valid"],
        expired=certs["expired"],
        wrong_host=certs["wrong_host"],
    )


# --------------------------------------------------------------------------- lineages


@dataclass(frozen=True)
class LineagePaths:
    """A certbot-like lineage on disk plus the objects it was made from.

    ``leaf`` is the certificate in cert.pem; ``key`` is what privkey.pem holds (differs
    from ``leaf.key`` with ``key_mismatch``); ``signer`` is who really signed the leaf
    (an impostor with the intermediate's subject name with ``bad_chain_signature``).
    """

    live_dir: Path
    cert: Path
    chain: Path
    fullchain: Path
    privkey: Path
    names: tuple[str, ...]
    root: Issued
    intermediate: Issued
    leaf: Issued
    signer: Issued
    key: PrivateKey

    @property
    def root_file(self) -> Path:
        """Root CA PEM (written next to, not inside, the live directory)."""
        return self.live_dir.parent / f"{self.live_dir.name}-root.pem"


def garbage_pem(label: str = "CERTIFICATE") -> bytes:
    """Well-formed PEM armour around bytes that are not DER."""
    body = base64.encodebytes(b"this is not a DER structure, just garbage " * 2)
    return f"-----BEGIN {label}-----\n".encode() + body + f"-----END {label}-----\n".encode()


def write_lineage(
    live_dir: Path,
    *,
    names: Sequence[str] = ("test.example.com", "www.test.example.com"),
    key_type: KeyType = "ec",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    expired: bool = False,
    key_mismatch: bool = False,
    bad_chain_signature: bool = False,
    garbage: Collection[LineageFile] = (),
    archive_symlinks: bool = False,
) -> LineagePaths:
    """Write root -> intermediate -> leaf as cert/chain/fullchain/privkey.pem.

    Negative-test knobs: ``expired`` (leaf expired yesterday), ``key_mismatch``
    (privkey.pem holds an unrelated key), ``bad_chain_signature`` (leaf signed by a key
    that is not the intermediate's, under the intermediate's subject name), ``garbage``
    (those files get PEM armour around non-DER bytes).  With ``archive_symlinks`` the
    files live in ``<live_dir>/../../archive/<name>/*1.pem`` and ``live_dir`` holds
    relative symlinks, like certbot.
    """
    if not names:
        raise ValueError("a lineage needs at least one name")
    root = make_ca("Test ACME Root X1", key_type=key_type)
    intermediate = issue(
        root, common_name="Test ACME Intermediate R1", is_ca=True, key_type=key_type
    )
    signer = intermediate
    if bad_chain_signature:
        signer = Issued(cert=intermediate.cert, key=new_key(key_type))
    if expired:
        not_before, not_after = expired_window()
    leaf = issue(
        signer,
        common_name=names[0],
        sans=names,
        key_type=key_type,
        not_before=not_before,
        not_after=not_after,
    )
    key = new_key(key_type) if key_mismatch else leaf.key
    contents: dict[LineageFile, bytes] = {
        "cert.pem": leaf.cert_pem(),
        "chain.pem": intermediate.cert_pem(),
        "fullchain.pem": leaf.cert_pem() + intermediate.cert_pem(),
        "privkey.pem": key_pem(key),
    }
    for name in garbage:
        contents[name] = garbage_pem("PRIVATE KEY" if name == "privkey.pem" else "CERTIFICATE")
    live_dir = Path(live_dir)
    live_dir.mkdir(parents=True, exist_ok=True)
    paths = _write_lineage_files(live_dir, contents, archive_symlinks)
    lineage = LineagePaths(
        live_dir=live_dir,
        cert=paths["cert.pem"],
        chain=paths["chain.pem"],
        fullchain=paths["fullchain.pem"],
        privkey=paths["privkey.pem"],
        names=tuple(names),
        root=root,
        intermediate=intermediate,
        leaf=leaf,
        signer=signer,
        key=key,
    )
    lineage.root_file.write_bytes(root.cert_pem())
    return lineage


def _write_lineage_files(
    live_dir: Path, contents: dict[LineageFile, bytes], archive_symlinks: bool
) -> dict[LineageFile, Path]:
    paths: dict[LineageFile, Path] = {}
    archive = live_dir.parent.parent / "archive" / live_dir.name
    if archive_symlinks:
        archive.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        link = live_dir / name
        target = archive / name.replace(".pem", "1.pem") if archive_symlinks else link
        if name == "privkey.pem":
            write_private(target, data)
        else:
            target.write_bytes(data)
        if archive_symlinks:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.path.relpath(target, live_dir))
        paths[name] = link
    return paths


# --------------------------------------------------------------------------- S/MIME (RFC 8550, RFC 8551)


def issue_smime(
    issuer: Issued,
    email: str,
    *,
    key_type: KeyType = "rsa",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    extended_usages: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.EMAIL_PROTECTION,),
    digital_signature: bool = True,
    key_encipherment: bool = True,
    common_name: str | None = None,
) -> Issued:
    """An end-entity S/MIME certificate for `email` (an rfc822Name SAN); `extended_usages=None` leaves the EKU
    extension out (every usage allowed)."""
    key = new_key(key_type)
    start = not_before if not_before is not None else utcnow() - _BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or email),
                                 x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after if not_after is not None else start + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                                     key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    if extended_usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_usages)), critical=False)
    return Issued(cert=builder.sign(issuer.key, hashes.SHA256()), key=key)


@dataclass(frozen=True)
class SmimeFiles:
    """A test S/MIME PKI on disk: a CA, a signer and two recipients, each a cert file and a key file (0600)."""

    directory: Path
    ca: Issued
    ca_file: Path
    signer: Issued
    signer_cert: Path  # the signer's certificate followed by the CA's (a chain, as the README allows)
    signer_key: Path
    recipients: tuple[Issued, ...]
    recipient_certs: tuple[Path, ...]
    recipient_keys: tuple[Path, ...]


def write_smime(directory: Path, *, signer_key_type: KeyType = "rsa") -> SmimeFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("certbot-smtp-dist test S/MIME CA", key_type="rsa")
    ca_file = directory / "smime-ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    signer = issue_smime(ca, "certbot@example.com", key_type=signer_key_type)
    signer_cert = directory / "signer.pem"
    signer_cert.write_bytes(signer.cert_pem() + ca.cert_pem())
    signer_key = directory / "signer.key"
    write_private(signer_key, signer.key_pem())
    recipients = (issue_smime(ca, "pki@example.com"), issue_smime(ca, "ops@example.com"))
    certs, keys = [], []
    for index, person in enumerate(recipients):
        certs.append(directory / f"recipient{index}.pem")
        certs[-1].write_bytes(person.cert_pem())
        keys.append(directory / f"recipient{index}.key")
        write_private(keys[-1], person.key_pem())
    return SmimeFiles(directory, ca, ca_file, signer, signer_cert, signer_key, recipients, tuple(certs), tuple(keys))
# --------------------------------------------------------------------------- a relay under an intermediate CA


@dataclass(frozen=True)
class ChainedRelayCerts:
    """Root -> intermediate -> relay leaf (127.0.0.1, ::1, localhost). ``leaf_only`` serves the leaf alone (the
    missing-intermediate misconfiguration); ``full_chain`` serves leaf and intermediate. Trust ``root_file``."""

    root_file: Path
    intermediate: Issued
    leaf_only: ServerCert
    full_chain: ServerCert


def relay_chain_certs(directory: Path) -> ChainedRelayCerts:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    root = make_ca("certbot-smtp-dist test chained root")
    intermediate = issue(root, common_name="certbot-smtp-dist test intermediate", is_ca=True)
    leaf = issue(intermediate, sans=_RELAY_SANS, ip_sans=_RELAY_IPS)
    root_file = directory / "chained-root.pem"
    root_file.write_bytes(root.cert_pem())
    key_file = directory / "chained-leaf.key"
    write_private(key_file, leaf.key_pem())
    served: dict[str, ServerCert] = {}
    for name, pem in (("leaf_only", leaf.cert_pem()), ("full_chain", leaf.cert_pem() + intermediate.cert_pem())):
        cert_file = directory / f"chained-{name}.crt"
        cert_file.write_bytes(pem)
        served[name] = ServerCert(name, leaf, cert_file, key_file)
    return ChainedRelayCerts(root_file, intermediate, served["leaf_only"], served["full_chain"])


def write_named_lineage(live_dir: Path, subject: x509.Name, general_names: Sequence[x509.GeneralName]
                        ) -> LineagePaths:
    """A lineage (as :func:`write_lineage`) whose leaf, issued by the intermediate for the same key, has
    ``subject`` and the subjectAltNames ``general_names``, whatever they hold: names that decode but that no one
    should print raw (escapes, line breaks, kilobytes; build a long value with ``NameAttribute(...,
    _validate=False)``). cert.pem and fullchain.pem are written again; the returned ``leaf`` is the one before."""
    lineage = write_lineage(live_dir)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(lineage.intermediate.cert.subject)
               .public_key(lineage.leaf.key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(utcnow() - _BACKDATE).not_valid_after(utcnow() + _DEFAULT_LIFETIME))
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(general_names)), critical=False)
    leaf = builder.sign(lineage.intermediate.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    lineage.cert.write_bytes(leaf)
    lineage.fullchain.write_bytes(leaf + lineage.intermediate.cert_pem())
    return lineage


# --------------------------------------------------------------------------- names that do not decode


def edited(der: bytes, old: bytes, new: bytes, count: int = 1) -> bytes:
    """``der`` with its first ``count`` ``old`` replaced by ``new``, of the same length: an encoding the builders
    refuse to write (a NumericString of bytes over 0x7F...). The signature no longer matches: :func:`resigned`
    mends it."""
    assert len(old) == len(new), (old, new)
    changed = der.replace(old, new, count)
    assert changed != der, f"{old!r} is not in the DER"
    return changed


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _der_element(der: bytes, pos: int) -> tuple[int, int]:
    """(start of the value, end of the element) of the DER element at ``pos``."""
    first, start = der[pos + 1], pos + 2
    length = first
    if first >= 0x80:
        count = first & 0x7F
        length, start = int.from_bytes(der[start:start + count], "big"), start + count
    return start, start + length


def resigned(der: bytes, signer: PrivateKey, old: bytes, new: bytes, count: int = 1) -> bytes:
    """The certificate ``der`` with ``old`` replaced by ``new`` (same length; the first ``count`` times, 2 for a
    self-signed certificate's issuer and subject) in its tbsCertificate, signed again
    by ``signer`` with the same algorithm (SHA-256): a DER certificate whose signature verifies and whose content
    no builder would write, as a broken or hostile CA issues it (RFC 5280 §4.1: Certificate ::= SEQUENCE {
    tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }). Not loaded: cryptography may refuse it."""
    tbs_at, _ = _der_element(der, 0)
    _, tbs_end = _der_element(der, tbs_at)
    _, algorithm_end = _der_element(der, tbs_end)
    tbs = edited(der[tbs_at:tbs_end], old, new, count)
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        signature = signer.sign(tbs)
    elif isinstance(signer, rsa.RSAPrivateKey):
        from cryptography.hazmat.primitives.asymmetric import padding

        signature = signer.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = signer.sign(tbs, ec.ECDSA(hashes.SHA256()))
    bits = b"\x00" + signature  # no unused bits
    body = tbs + der[tbs_end:algorithm_end] + b"\x03" + _der_length(len(bits)) + bits
    return b"\x30" + _der_length(len(body)) + body


def der_pem(der: bytes) -> bytes:
    """One DER certificate in PEM armour (RFC 7468 §5)."""
    return ssl.DER_cert_to_PEM_cert(der).encode("ascii")


# What in a lineage's leaf does not decode, in the ways cryptography reads names lazily (the certificate loads,
# reading the name raises ValueError or TypeError): see :func:`write_undecodable_lineage`.
Undecodable = Literal["numeric subject", "printable subject", "odd bmp subject", "bit string subject",
                      "issuer", "san dns name", "san tag", "duplicate extension", "key usage"]
UNDECODABLE: tuple[Undecodable, ...] = ("numeric subject", "printable subject", "odd bmp subject",
                                        "bit string subject", "issuer", "san dns name", "san tag",
                                        "duplicate extension", "key usage")
UNDECODABLE_CN = "undecodable.example"  # the leaf's common name, a UTF8String of 19 octets until edited
UNDECODABLE_SAN = "san.undecodable.example"  # the leaf's first dNSName until edited


def _undecodable_edit(kind: Undecodable) -> tuple[bytes, bytes]:
    """The (old, new) octets of the leaf's tbsCertificate that make ``kind``, of the same length."""
    cn, san, high = UNDECODABLE_CN.encode(), UNDECODABLE_SAN.encode(), bytes(range(0x80, 0x100))
    utf8_cn, size = b"\x0c" + bytes([len(cn)]) + cn, bytes([len(cn)])
    dns_name = b"\x82" + bytes([len(san)]) + san
    edits: dict[Undecodable, tuple[bytes, bytes]] = {
        "numeric subject": (utf8_cn, b"\x12" + size + high[-len(cn):]),  # X.680 §41.2: digits and space only
        "printable subject": (utf8_cn, b"\x13" + size + high[-len(cn):]),  # X.680 §41.4: no octet over 0x7F
        "odd bmp subject": (utf8_cn, b"\x1e" + size + b"\x00A" * (len(cn) // 2) + b"\x00"),  # 2 octets a char
        "bit string subject": (utf8_cn, b"\x03" + size + b"\x00" + cn[1:]),  # an AttributeValue that is no string
        # RFC 5280 §4.2.1.6: a dNSName is an IA5String (octets under 0x80); GeneralName has no choice [9].
        "san dns name": (dns_name, dns_name[:2] + high[-len(san):]),
        "san tag": (dns_name, b"\x89" + dns_name[1:]),
        # extKeyUsage's OID made subjectAltName's: the extension twice (RFC 5280 §4.2), the second no SAN at all
        "duplicate extension": (b"\x06\x03\x55\x1d\x25", b"\x06\x03\x55\x1d\x11"),
        # keyUsage (critical) whose BIT STRING is made an OCTET STRING (RFC 5280 §4.2.1.3): the SAN decodes
        "key usage": (b"\x06\x03\x55\x1d\x0f\x01\x01\xff\x04\x04\x03", b"\x06\x03\x55\x1d\x0f\x01\x01\xff\x04\x04\x04"),
    }
    return edits[kind]


INTERMEDIATE_CN = b"Test ACME Intermediate R1"


def write_undecodable_lineage(live_dir: Path, kind: Undecodable) -> LineagePaths:
    """A lineage (as :func:`write_lineage`) whose leaf, properly signed, carries a name that does not decode:
    in its subject (a NumericString or PrintableString of octets over 0x7F, a BMPString of odd length, a BIT
    STRING), its issuer (the intermediate's subject too, so the chain still links), or its subjectAltName (a
    dNSName of octets over 0x7F, a GeneralName of an unknown tag, the extension twice), or another extension
    (a keyUsage that is no BIT STRING). cert.pem, chain.pem and
    fullchain.pem are written again (privkey.pem holds the leaf's key); the returned ``leaf`` and
    ``intermediate`` are the certificates before the edit."""
    lineage = write_lineage(live_dir, names=(UNDECODABLE_SAN, "www.undecodable.example"))
    intermediate = lineage.intermediate.cert.public_bytes(serialization.Encoding.DER)
    if kind == "issuer":  # the intermediate's common name as a NumericString of octets over 0x7F
        old = b"\x0c" + bytes([len(INTERMEDIATE_CN)]) + INTERMEDIATE_CN
        new = b"\x12" + bytes([len(INTERMEDIATE_CN)]) + b"\xff" * len(INTERMEDIATE_CN)
        intermediate = resigned(intermediate, lineage.root.key, old, new)
        leaf = resigned(lineage.leaf.cert.public_bytes(serialization.Encoding.DER), lineage.intermediate.key, old,
                        new)
    else:
        fresh = issue(lineage.intermediate, common_name=UNDECODABLE_CN, sans=lineage.names, key=lineage.leaf.key)
        leaf = resigned(fresh.cert.public_bytes(serialization.Encoding.DER), lineage.intermediate.key,
                        *_undecodable_edit(kind))
    lineage.cert.write_bytes(der_pem(leaf))
    lineage.chain.write_bytes(der_pem(intermediate))
    lineage.fullchain.write_bytes(der_pem(leaf) + der_pem(intermediate))
    return lineage
