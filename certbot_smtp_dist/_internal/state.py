"""The state directory (spool, journal) and the advisory file locks that keep concurrent runs consistent."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from certbot_smtp_dist._internal import files

if TYPE_CHECKING:
    from certbot_smtp_dist._internal.credentials import CredentialStore

DEFAULT_STATE_DIR = Path("/var/lib/certbot-smtp-dist")
STATE_ENV = "CERTBOT_SMTP_DIST_STATE_DIR"


def state_dir(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """`--state-dir` wins over $CERTBOT_SMTP_DIST_STATE_DIR, which wins over the default."""
    return files.chosen_path(cli_value, STATE_ENV, DEFAULT_STATE_DIR, environ)


@dataclass(frozen=True, slots=True)
class StateKeys:
    """The HMAC-SHA256 keys that authenticate the journal chain and each spool entry (never shown)."""

    journal: bytes
    spool: bytes
    journal_anchor: Path | None = None  # in the credential store: the MAC of the journal's first line
    oauth2_tokens: bytes = b""  # the AES-256-GCM key that seals cached OAuth 2.0 tokens (tokencache.py)

    def __repr__(self) -> str:
        return "StateKeys(<hidden>)"


def state_keys(store: CredentialStore, state: Path, create: bool = False) -> StateKeys:
    """Both keys, from the credential store (`create`: make its master key if there is none yet), and where the
    journal of `state` is anchored in that store (one anchor per state directory)."""
    where = hashlib.sha256(os.path.realpath(state).encode()).hexdigest()[:16]
    keys = store.state_key_set(("journal", "spool", "oauth2-tokens"), create)  # the master key read once
    return StateKeys(journal=keys["journal"], spool=keys["spool"],
                     journal_anchor=store.directory / f"journal-{where}.anchor", oauth2_tokens=keys["oauth2-tokens"])


class Lock:
    """An flock(2) lock file: released by the kernel when the holder dies, even by SIGKILL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, blocking: bool = True, dir_checked: bool = False) -> bool:
        """`dir_checked`: the caller made and checked the lock's directory just now (spool.Spool.batch)."""
        if not dir_checked:
            files.ensure_private_dir(self.path.parent)
        fd = files.open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    lock = Lock(path)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
