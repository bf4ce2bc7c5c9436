"""CMS (RFC 5652) signatures and envelopes for S/MIME, by cryptography's pkcs7 builders or the `openssl cms` command.

The one place either backend's failures are translated: every failure leaves as a CmsError (a PayloadError, so the
target fails with SMTP_PAYLOAD) worded here, never with a foreign exception's text or a subprocess's raw stderr.
"""

from __future__ import annotations

import enum
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certbot_smtp_dist.errors import PayloadError


class Cipher(str, enum.Enum):
    """The content encryption of an S/MIME envelope (RFC 8551 §2.7)."""

    AES256_CBC = "aes256-cbc"  # EnvelopedData (RFC 5652 §6): what Outlook and Thunderbird read
    AES256_GCM = "aes256-gcm"  # AuthEnvelopedData (RFC 5083, RFC 5084): authenticated, not read by Outlook

    @property
    def smime_type(self) -> str:
        return "authEnveloped-data" if self is Cipher.AES256_GCM else "enveloped-data"


class Backend(str, enum.Enum):
    CRYPTOGRAPHY = "cryptography"
    OPENSSL = "openssl"


class CmsError(PayloadError):
    """Signing or encrypting failed; the text is ours (no key material, no foreign text beyond a reason code)."""


class SignerMismatch(CmsError):
    """A signer key that is not the signer certificate's: it would make signatures no one can verify."""


# Tests set this to Backend.OPENSSL to run the subprocess path on a stack whose cryptography could do the work.
FORCED: Backend | None = None
OPENSSL_ENV = "CERTBOT_SMTP_DIST_OPENSSL"  # another openssl binary, by its absolute path
# The child's whole environment: no OPENSSL_CONF or OPENSSL_MODULES from ours can load code into it.
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
MAX_KEY_PIPE = 60_000  # a PEM key written into a pipe before the child reads it must fit its buffer (64 KiB)


def openssl_binary() -> str | None:
    """The openssl the signer key is piped into: found on our fixed PATH, never the caller's (whose "." or a
    user's bin directory would let the working directory or that user choose it), or named by an absolute path."""
    override = os.environ.get(OPENSSL_ENV)
    if override:
        return override if os.path.isabs(override) else None
    return shutil.which("openssl", path=_ENV["PATH"])


def usable_openssl() -> str | None:
    """The openssl command, if it is OpenSSL 3 or later (AuthEnvelopedData, RFC 5083, came with 3.0)."""
    binary = openssl_binary()
    return binary if binary is not None and (_openssl_major(binary) or 0) >= 3 else None


@functools.lru_cache(maxsize=4)
def _openssl_major(binary: str) -> int | None:
    try:
        done = subprocess.run([binary, "version"], capture_output=True, timeout=10, check=False, env=_ENV)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.match(rb"OpenSSL (\d+)\.", done.stdout)  # LibreSSL says so, and has no AuthEnvelopedData
    return int(found.group(1)) if found and done.returncode == 0 else None


def _envelope_builder() -> Any:
    from cryptography.hazmat.primitives.serialization import pkcs7

    builder = getattr(pkcs7, "PKCS7EnvelopeBuilder", None)  # cryptography >= 43; none on Debian 12's 38
    if builder is None or not hasattr(builder, "set_content_encryption_algorithm"):
        return None
    return builder


@dataclass(frozen=True, slots=True)
class Signer:
    """A signer's private key and certificate chain (the signer first), parsed and checked to belong together:
    built once when the configuration is loaded (smimecerts.py) and handed to every `sign` of that run, so the
    key a message is signed with is the one that was checked. Not shown in a repr: `key` is the private key."""

    key: Any = field(repr=False)
    chain: tuple[Any, ...] = field(repr=False)  # cryptography x509.Certificate, signer first

    def __post_init__(self) -> None:
        from certbot_smtp_dist._internal.diagnose import spki

        if not self.chain or spki(self.key.public_key()) != spki(self.chain[0].public_key()):
            raise SignerMismatch("the signer key does not match the signer certificate")

    @property
    def chain_pem(self) -> tuple[bytes, ...]:
        from cryptography.hazmat.primitives.serialization import Encoding

        return tuple(bytes(c.public_bytes(Encoding.PEM)) for c in self.chain)


def load_key(key_pem: bytes) -> Any:
    """A private key (one unencrypted PEM block), parsed: for an RSA key that checks it in full (tens of
    milliseconds), so a run does it once per signer (smimecerts.py). Raises CmsError "does not parse (...)"."""
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except Exception as exc:  # ValueError, TypeError, UnsupportedAlgorithm: worded here, never echoed
        raise CmsError(f"does not parse ({type(exc).__name__})") from exc


def sign_backend() -> Backend:
    """cryptography's PKCS7SignatureBuilder (present since 3.2, so on every supported stack) unless forced."""
    return FORCED or Backend.CRYPTOGRAPHY


def envelope_backend(cipher: Cipher) -> Backend | None:
    """cryptography's PKCS7EnvelopeBuilder for AES-256-CBC where it exists (it makes EnvelopedData only); the
    `openssl cms` command otherwise and for GCM. None: neither is available."""
    if FORCED is not Backend.OPENSSL and cipher is Cipher.AES256_CBC and _envelope_builder() is not None:
        return Backend.CRYPTOGRAPHY
    return Backend.OPENSSL if usable_openssl() else None


def sign(content: bytes, signer: Signer, timeout: float) -> bytes:
    """A detached SHA-256 SignedData (DER) over `content`, exactly as given (RFC 8551 §3.5.3: the caller
    canonicalises), by `signer`, with its certificate and chain included."""
    if sign_backend() is Backend.OPENSSL:
        return _openssl_sign(content, signer, timeout)
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    try:
        builder = pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(signer.chain[0], signer.key,
                                                                             hashes.SHA256())
        for extra in signer.chain[1:]:
            builder = builder.add_certificate(extra)
        options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
        return bytes(builder.sign(serialization.Encoding.DER, options))
    except Exception as exc:  # cryptography raises ValueError, TypeError and UnsupportedAlgorithm here
        raise CmsError(f"cannot sign the message ({type(exc).__name__})") from exc


def encrypt(content: bytes, recipients_pem: Sequence[bytes], cipher: Cipher, timeout: float) -> bytes:
    """An EnvelopedData (CBC) or AuthEnvelopedData (GCM), DER, to every recipient certificate (RSA key transport)."""
    backend = envelope_backend(cipher)
    if backend is None:
        raise CmsError("cannot encrypt: this cryptography has no envelope builder and no OpenSSL 3 openssl command "
                       "was found")
    if backend is Backend.OPENSSL:
        return _openssl_encrypt(content, recipients_pem, cipher, timeout)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.ciphers import algorithms
    from cryptography.hazmat.primitives.serialization import pkcs7

    try:
        builder = _envelope_builder()().set_data(content)
        for pem in recipients_pem:
            builder = builder.add_recipient(x509.load_pem_x509_certificate(pem))
        # RSA PKCS #1 v1.5 key transport (the builder's only one), AES-256-CBC content (RFC 8551 §2.7).
        builder = builder.set_content_encryption_algorithm(algorithms.AES256)
        return bytes(builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
    except Exception as exc:
        raise CmsError(f"cannot encrypt the message ({type(exc).__name__})") from exc


def _openssl_sign(content: bytes, signer: Signer, timeout: float) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key_pem = signer.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    if len(key_pem) > MAX_KEY_PIPE:
        raise CmsError("cannot sign: the signer key is too large to hand to openssl")
    chain_pem = signer.chain_pem
    with _private_dir() as where:
        signer_file = _write(where / "signer.pem", chain_pem[0])
        args = ["cms", "-sign", "-binary", "-md", "sha256", "-outform", "DER", "-signer", str(signer_file)]
        if chain_pem[1:]:
            args += ["-certfile", str(_write(where / "chain.pem", b"".join(chain_pem[1:])))]
        # The key travels through a pipe the child reads as /dev/fd/N: never on argv, never in a file of ours.
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, key_pem)
            os.close(write_end)
            write_end = -1
            args += ["-inkey", f"/dev/fd/{read_end}"]
            return _run(args, content, timeout, "sign", pass_fds=(read_end,))
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)


def _openssl_encrypt(content: bytes, recipients_pem: Sequence[bytes], cipher: Cipher, timeout: float) -> bytes:
    with _private_dir() as where:
        # The certificates validated at config time, not the paths again (what is checked is what is used).
        files = [str(_write(where / f"recipient{i}.pem", pem)) for i, pem in enumerate(recipients_pem)]
        algorithm = "-aes-256-gcm" if cipher is Cipher.AES256_GCM else "-aes-256-cbc"
        return _run(["cms", "-encrypt", "-binary", algorithm, "-outform", "DER", *files], content, timeout,
                    "encrypt")


@contextmanager
def _private_dir() -> Iterator[Path]:
    """A 0700 directory of 0600 files, removed on the way out whatever happened, in a $TMPDIR that nobody else
    can write (or only with the sticky bit, like /tmp): whoever could rename it away could swap a recipient
    certificate before openssl reads it."""
    from certbot_smtp_dist._internal import ownership

    path = Path(tempfile.mkdtemp(prefix="certbot-smtp-dist-cms-"))  # mkdtemp makes it 0700
    try:
        untrusted = ownership.untrusted_input(path, "temporary directory")
        if untrusted is not None:
            raise CmsError(f"cannot hand the certificates to openssl: {untrusted}")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def _run(args: list[str], content: bytes, timeout: float, what: str, pass_fds: tuple[int, ...] = ()) -> bytes:
    binary = openssl_binary()
    if binary is None:
        raise CmsError(f"cannot {what}: no openssl command found")
    try:
        # Only what is left of the target's budget (smime.py): a hung openssl costs its own target, no other.
        done = subprocess.run([binary, *args], input=content, capture_output=True, timeout=max(timeout, 0.01),
                              pass_fds=pass_fds, env=_ENV, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CmsError(f"cannot {what}: openssl cms took longer than the {timeout:.1f}s left of the target's "
                       "timeout") from exc
    except OSError as exc:
        raise CmsError(f"cannot {what}: openssl cannot be run ({exc.strerror or type(exc).__name__})") from exc
    if done.returncode != 0 or not done.stdout:
        raise CmsError(f"cannot {what}: openssl cms failed (exit status {done.returncode}: {reason(done.stderr)})")
    return done.stdout


# OpenSSL 3 error lines: "40E7...:error:1E08010C:DECODER routines::unsupported:...". Only the routine and reason
# words are kept: the rest may hold paths and data.
_REASON = re.compile(rb"error:[0-9A-F]+:([A-Za-z0-9 _]{1,40}) routines:[A-Za-z0-9_]*:([a-z0-9 _]{1,60})")


def reason(stderr: bytes) -> str:
    """The OpenSSL reason codes of `stderr`, and nothing else of it."""
    found = [f"{m.group(1).decode()}: {m.group(2).decode()}" for m in _REASON.finditer(stderr)]
    return "; ".join(dict.fromkeys(found))[:200] or "no reason given"
