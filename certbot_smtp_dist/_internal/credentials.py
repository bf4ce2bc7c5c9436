"""The credential store: envelope-encrypted secrets beside the config file, never in it.

Each secret gets a fresh 256-bit data key; the secret is sealed with AES-256-GCM under that key, and the data key is
sealed under the master key. Name and type are bound as associated data, so a file renamed or retyped fails to open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from certbot_smtp_dist._internal import files, ownership
from certbot_smtp_dist.errors import AccessError, CredentialError, UnsafePathError
from certbot_smtp_dist.model import Secret

CREDENTIAL_TYPES = ("smtp_password", "smtp_pkcs12_passphrase", "smtp_oauth2_client_secret",
                    "smtp_oauth2_service_account")
SERVICE_ACCOUNT_TYPE = "smtp_oauth2_service_account"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A payload format may declare a credential type of its own (PayloadFormat.credential_type): the store keeps any
# well-formed type, bound to the secret as associated data; `credentials set` offers the registered ones only.
TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
MASTER_KEY_FILE = "master.key"
SYSTEMD_CREDENTIAL = "certbot-smtp-dist.master-key"  # name under $CREDENTIALS_DIRECTORY
_SUFFIX = ".cred"
_FORMAT = 1
# A credential file is read bounded (a service account's key is a few kB): its secret is bounded to fit it.
MAX_CREDENTIAL_BYTES = 1 << 16
MAX_SECRET_BYTES = 1 << 15
MAX_MASTER_KEY_BYTES = 1 << 10  # 32 bytes in base64 and a newline: 45
MIN_PASSPHRASE = 8  # a PKCS#12 file travels by mail: its passphrase is all that stands against an offline guess
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def secret_problem(type_: str, secret: str) -> str | None:
    """Why `secret` cannot be stored as a credential of `type_`, or None. Never quotes the secret."""
    if not secret:
        return "the secret is empty"
    if len(secret.encode("utf-8")) > MAX_SECRET_BYTES:
        return f"the secret is longer than {MAX_SECRET_BYTES} bytes"
    if "\0" in secret:
        # RFC 4616 §2: NUL separates authzid, authcid and passwd in AUTH PLAIN; a NUL inside a password ends it.
        return "the secret contains a NUL character, which AUTH PLAIN cannot carry (RFC 4616 §2)"
    if type_ == SERVICE_ACCOUNT_TYPE:  # a JSON document: its line breaks and indentation are its own
        from certbot_smtp_dist._internal.oauth2 import key_problem

        return key_problem(secret)
    if any(unicodedata.category(c) in _CONTROL_CATEGORIES for c in secret):
        return ("the secret contains a control character (tab, CR, escape, a line separator, ...); "
                "only one trailing newline is removed from standard input")
    if type_ == "smtp_pkcs12_passphrase":
        if not secret.strip():
            return "a PKCS#12 passphrase must not be blank"
        if len(secret) < MIN_PASSPHRASE:
            return f"a PKCS#12 passphrase needs at least {MIN_PASSPHRASE} characters"
    return None


@dataclass(frozen=True, slots=True)
class StoredCredential:
    name: str
    type: str


class CredentialStore:
    """`credentials/` beside the config file, plus the master key that unlocks it."""

    def __init__(self, config_dir: Path, environ: dict[str, str] | None = None) -> None:
        self.config_dir = config_dir
        self.directory = config_dir / "credentials"
        self._environ = dict(os.environ if environ is None else environ)

    # -- listing (no key needed) --------------------------------------------------------------------------------
    def list(self) -> list[StoredCredential]:
        try:  # not glob(), which reads a directory closed to this user as an empty one
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out: list[StoredCredential] = []
        for path in sorted(self.directory / n for n in names if n.endswith(_SUFFIX)):
            try:
                doc = json.loads(self._read(path))
                out.append(StoredCredential(name=str(doc["name"]), type=str(doc["type"])))
            except UnsafePathError:
                raise
            except (OSError, ValueError, KeyError, TypeError):
                continue  # damaged entries surface when used, by name
        return out

    def types(self) -> dict[str, str]:
        return {c.name: c.type for c in self.list()}

    # -- writing ------------------------------------------------------------------------------------------------
    def set(self, name: str, type_: str, secret: str) -> None:
        _check(name, type_)
        problem = secret_problem(type_, secret)
        if problem is not None:
            raise CredentialError(f"credential {name!r} not stored: {problem}")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        master = AESGCM(self._master_key(create=True))
        data_key = AESGCM.generate_key(bit_length=256)
        aad = _aad(name, type_)
        wrap_nonce, secret_nonce = os.urandom(12), os.urandom(12)
        doc = {
            "format": _FORMAT,
            "name": name,
            "type": type_,
            "cipher": "AES-256-GCM",
            "wrapped_key": _b64(wrap_nonce + master.encrypt(wrap_nonce, data_key, aad)),
            "ciphertext": _b64(secret_nonce + AESGCM(data_key).encrypt(secret_nonce, secret.encode("utf-8"), aad)),
        }
        files.ensure_private_dir(self.directory)
        files.write_private(self._path(name), (json.dumps(doc, indent=1) + "\n").encode())

    def delete(self, name: str) -> bool:
        _check(name, None)
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    # -- reading ------------------------------------------------------------------------------------------------
    def get(self, name: str, type_: str) -> Secret:
        """Decrypt credential `name`, which must have type `type_`."""
        _check(name, type_)
        path = self._path(name)
        try:
            doc = json.loads(self._read(path))
            stored_type = doc["type"]
            wrapped = base64.b64decode(doc["wrapped_key"], validate=True)
            sealed = base64.b64decode(doc["ciphertext"], validate=True)
        except FileNotFoundError as exc:
            raise CredentialError(f"credential {name!r} is not stored") from exc
        except UnsafePathError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CredentialError(f"credential file {path} is damaged") from exc
        if stored_type != type_:
            raise CredentialError(f"credential {name!r} has type {stored_type}, expected {type_}")
        files.warn_if_exposed(self.directory, "credentials directory")
        files.warn_if_exposed(path, "credential file")
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aad = _aad(name, type_)
        try:
            data_key = AESGCM(self._master_key(create=False)).decrypt(wrapped[:12], wrapped[12:], aad)
            plain = AESGCM(data_key).decrypt(sealed[:12], sealed[12:], aad)
        except InvalidTag as exc:
            raise CredentialError(
                f"credential {name!r} cannot be decrypted: wrong master key, or the file was altered or renamed"
            ) from exc
        return Secret(plain.decode("utf-8"))

    # -- keys for the state --------------------------------------------------------------------------------------
    def state_key(self, purpose: str, create: bool = False) -> bytes:
        """The HMAC-SHA256 key that authenticates one part of the state (`journal`, `spool`).

        Derived from the master key (created with it, 0600, if missing and `create`), so it lives wherever the master key lives,
        this directory or a systemd credential, and never in the state directory it protects. The master key is 32
        random bytes, so one HMAC over a label is a sound key derivation (HKDF-Expand, RFC 5869 §2.3, one block).
        """
        return self.state_key_set((purpose,), create)[purpose]

    def state_key_set(self, purposes: tuple[str, ...], create: bool = False) -> dict[str, bytes]:
        """`state_key` for several purposes, reading (and checking) the master key once."""
        master = self._master_key(create=create)
        return {p: hmac.new(master, f"certbot-smtp-dist/state-key/v1\x00{p}".encode(), hashlib.sha256).digest()
                for p in purposes}

    # -- master key ---------------------------------------------------------------------------------------------
    def master_key_location(self) -> Path:
        creds_dir = self._environ.get("CREDENTIALS_DIRECTORY")
        if creds_dir and (Path(creds_dir) / SYSTEMD_CREDENTIAL).is_file():
            return Path(creds_dir) / SYSTEMD_CREDENTIAL
        return self.config_dir / MASTER_KEY_FILE

    def _master_key(self, create: bool) -> bytes:
        path = self.master_key_location()
        if not path.exists():
            if not create:
                raise CredentialError(f"master key {path} is missing: stored credentials cannot be decrypted")
            files.create_private_exclusive(path, _b64(os.urandom(32)).encode() + b"\n")
        try:
            # It unlocks every secret and the state's MACs: the config file's rule. A link on the way only root
            # or we can re-point is followed (a key kept on a root-owned mount); another user's link where others
            # can write, a file of theirs or one others can write is refused (UnsafePathError, exit 77). Read
            # without blocking and bounded: a FIFO or a huge file is damage (CredentialError), not a hang.
            checked = ownership.require_trusted_input(path, "master key", f"chown root {path}; chmod 600 {path}",
                                                      closed=ownership.CONFIG_FIX)
            files.warn_if_exposed(path, "master key")
            data, _ = files.read_regular(path, MAX_MASTER_KEY_BYTES, checked=checked)
            key = base64.b64decode(data.strip(), validate=True)
        except (UnsafePathError, AccessError):
            raise
        except files.RefusedFile as exc:
            raise CredentialError(f"master key {path} cannot be read: it {exc.strerror}; it must be a regular "
                                  "file holding 32 bytes in base64") from exc
        except PermissionError as exc:  # not damaged: this user may not read it
            raise AccessError(path, "read the master key", exc.strerror or "permission denied",
                              ownership.CONFIG_FIX) from exc
        except (OSError, ValueError) as exc:
            raise CredentialError(f"master key {path} is unreadable or damaged") from exc
        if len(key) != 32:
            raise CredentialError(f"master key {path} must hold 32 bytes (base64), not {len(key)}")
        return key

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}{_SUFFIX}"

    @staticmethod
    def _read(path: Path) -> bytes:
        """A credential file: never through a link (one in credentials/, ours alone, was planted: UnsafePathError),
        never a FIFO, never more than MAX_CREDENTIAL_BYTES (CredentialError naming the file and why)."""
        try:
            return files.read_private_bounded(path, MAX_CREDENTIAL_BYTES, " inside the credentials directory")
        except files.RefusedFile as exc:
            raise CredentialError(f"credential file {path} cannot be read: it {exc.strerror}; remove it "
                                  f"(rm {path}) after checking who made it") from exc


def _check(name: str, type_: str | None) -> None:
    if not NAME_RE.fullmatch(name):
        raise CredentialError(f"invalid credential name {name!r}: letters, digits, '.', '_', '-' (at most 64)")
    if type_ is not None and type_ not in CREDENTIAL_TYPES and not TYPE_RE.fullmatch(type_):
        raise CredentialError(f"invalid credential type {type_!r}: one of {', '.join(CREDENTIAL_TYPES)}, or a "
                              "payload format's own (lowercase letters, digits and '_')")


def _aad(name: str, type_: str) -> bytes:
    return f"certbot-smtp-dist/credential/v{_FORMAT}\x00{name}\x00{type_}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
