"""Private files and directories: 0600/0700, written atomically and fsynced, checked for loose permissions."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from certbot_smtp_dist.errors import UnsafePathError

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


def chosen_path(cli_value: str | None, env_name: str, default: Path,
                environ: Mapping[str, str] = os.environ) -> Path:
    """A location setting: the command-line option wins over the environment, which wins over the default."""
    if cli_value:
        return Path(cli_value)
    if environ.get(env_name):
        return Path(environ[env_name])
    return default


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700 if missing; an existing directory keeps its mode but must be a real
    directory, not a symbolic link (ownership.py checks owner and mode before anything is trusted)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        old = os.umask(0o077)
        try:
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        finally:
            os.umask(old)
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise _planted(path)
    return path


def open_nofollow(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """os.open that never follows a symbolic link at `path`: a planted link is an error naming it, its target
    untouched (O_NOFOLLOW makes open(2) fail with ELOOP on a link)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(path)):
            raise _planted(path) from exc
        raise


def read_nofollow(path: Path) -> bytes:
    """The whole content of a regular file, never through a symbolic link."""
    fd = open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def refuse_link(path: Path) -> None:
    """Raise if `path` is a symbolic link (before replacing it by rename, which would not follow it but would
    silently remove the evidence)."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise _planted(path)
    except FileNotFoundError:
        return


def _planted(path: Path) -> UnsafePathError:
    return UnsafePathError(path, "is a symbolic link (or not a regular entry) inside the state; never followed",
                           f"remove it (rm {path}) after checking who planted it")


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data` as a 0600 file, fsynced with its directory."""
    refuse_link(path)
    tmp = _complete_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def create_private_exclusive(path: Path, data: bytes) -> bool:
    """Create `path` 0600 with `data` only if it does not exist yet; False if someone else won the race."""
    tmp = _complete_temp(path, data)
    try:
        os.link(tmp, path)  # atomic "create if absent", and never a half-written file
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True


def _complete_temp(path: Path, data: bytes) -> str:
    """A fsynced 0600 temporary file beside `path` holding `data`."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def fsync_dir(path: Path) -> None:
    fd = open_nofollow(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def warn_if_exposed(path: Path, what: str) -> None:
    """Log a warning when a file holding secrets is readable or writable by group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s has mode %04o; it should be 0600 (chmod 600 %s)", what, path, stat.S_IMODE(mode), path)
