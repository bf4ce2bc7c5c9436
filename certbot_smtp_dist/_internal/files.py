"""Private files and directories: 0600/0700, written atomically and fsynced, checked for loose permissions."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

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
    """Create `path` (and parents) as 0700 if missing; an existing directory keeps its mode."""
    if not path.is_dir():
        old = os.umask(0o077)
        try:
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        finally:
            os.umask(old)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data` as a 0600 file, fsynced with its directory."""
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
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exposure(path: Path) -> str | None:
    """Why a file or directory holding secrets is exposed to other local users, or None.

    Group or other permission bits let them read (or, on a directory, swap) what is in it; an owner other than
    the user running this lets that owner chmod it open or replace it at any time.
    """
    try:
        st = path.stat()
    except OSError:
        return None  # what cannot be read is reported where it is used
    want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"has mode {stat.S_IMODE(st.st_mode):04o}; it should be {want:04o} (chmod {want:o} {path})"
    euid = os.geteuid()
    if st.st_uid != euid:
        return f"is owned by uid {st.st_uid}, not by uid {euid} that runs this (chown {euid} {path})"
    return None


def warn_if_exposed(path: Path, what: str) -> None:
    """Log a warning when a file or directory holding secrets is open to group, others or another owner."""
    why = exposure(path)
    if why:
        log.warning("%s %s %s", what, path, why)
