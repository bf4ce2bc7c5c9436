"""Files on disk: private ones written 0600/0700 atomically and checked for loose permissions; inputs read bounded."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
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


def ensure_private_dir(path: Path, ours: bool = True) -> Path:
    """Create `path` (and parents) as 0700 if missing; an existing directory keeps its mode but must be a real
    directory, not a symbolic link (ownership.py checks owner and mode before anything is trusted).

    `ours`: ownership.py checked the path before the run, maybe while it did not exist; a directory someone else
    made in /tmp since then (or above the one made here) would be theirs to read, empty or swap. So it must belong
    to this user or root and be closed to others, and one made here must sit under a trusted chain. `--output`,
    a directory the operator names, opts out (what is written there is 0600 and never through a link)."""
    from certbot_smtp_dist._internal import ownership

    made = False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        old = os.umask(0o077)
        try:
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        finally:
            os.umask(old)
        st, made = os.lstat(path), True
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise _planted(path)
    if ours:
        ownership.require_own_directory(path, st, made)
    return path


def open_nofollow(path: Path, flags: int, mode: int = FILE_MODE, where: str = " inside the state") -> int:
    """os.open that never follows a symbolic link at `path`: a planted link is an error naming it (`where` it
    was), its target untouched (O_NOFOLLOW makes open(2) fail with ELOOP on a link)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(path)):
            raise _planted(path, where) from exc
        raise


def read_nofollow(path: Path) -> bytes:
    """The whole content of a regular file, never through a symbolic link."""
    fd = open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def read_private_bounded(path: Path, limit: int, where: str) -> bytes:
    """The bytes of a regular file of ours, never through a symbolic link (UnsafePathError naming it, `where` it
    was planted), never blocking (a FIFO is refused, not opened for a writer that never comes) and never past
    `limit` (RefusedFile for anything but a regular file of at most `limit` bytes, as read_regular)."""
    fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, where=where)
    try:
        _refuse_unless_regular(os.fstat(fd), limit)
        return _read_at_most(fd, limit)
    finally:
        os.close(fd)


def refuse_link(path: Path) -> None:
    """Raise if `path` is a symbolic link (before replacing it by rename, which would not follow it but would
    silently remove the evidence)."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise _planted(path)
    except FileNotFoundError:
        return


def _planted(path: Path, where: str = " inside the state") -> UnsafePathError:
    return UnsafePathError(path, f"is a symbolic link (or not a regular entry){where}; never followed",
                           f"remove it (rm {path}) after checking who planted it")


def write_private(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Atomically replace `path` with `data` as a 0600 file, fsynced with its directory (`sync_dir` False: the
    caller fsyncs the directory once after several files, before relying on any of them)."""
    refuse_link(path)
    tmp = _complete_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


PUBLIC_FILE_MODE = 0o644


def write_public(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data` as a 0644 file (for what holds no secret, e.g. the metrics textfile
    node-exporter reads as another user): a temporary file beside it, created O_EXCL|O_NOFOLLOW, written, fsynced,
    then renamed over it, and the directory fsynced. A symbolic link at `path` is refused, never followed; the
    directory must exist (it is the reader's, not created here) and is held open (O_NOFOLLOW) for the whole write,
    so a directory swapped for a link meanwhile cannot redirect the rename. A link above it must be one nobody
    but root or us can re-point (ownership.require_steady_links): another user's in /tmp would let them choose
    where root writes."""
    from certbot_smtp_dist._internal import ownership

    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path.parent):
            raise _planted(path.parent, "") from exc
        raise
    try:
        ownership.require_steady_links(path.parent)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise _planted(path, "")
        tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"  # no .prom suffix: the collector skips it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PUBLIC_FILE_MODE,
                     dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), PUBLIC_FILE_MODE)  # whatever the umask
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    ensure_private_dir(path.parent, ours=False)  # the state's writers check theirs first; --output is the operator's
    fd, tmp = _new_temp(path)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            rest = memoryview(data)
            while rest:
                rest = rest[os.write(fd, rest):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


_TEMP_TRIES = 100


def _new_temp(path: Path) -> tuple[int, str]:
    """A new empty file `.NAME.RANDOM.tmp` beside `path`, open for writing, as tempfile.mkstemp makes one: created
    0600 with O_EXCL and O_NOFOLLOW (never an existing file, never through a link), another name tried if taken.
    Its random part is 64 bits from `secrets`: mkstemp's name generator and argument handling were a tenth of
    writing a spool entry ahead (issue 16's fan-out: one a target)."""
    for _ in range(_TEMP_TRIES):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {_TEMP_TRIES} tries", str(path.parent))


def fsync_dir(path: Path) -> None:
    fd = open_nofollow(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exposure(path: Path, status: os.stat_result, runner_uid: int, what: str) -> list[str]:
    """Why a file or directory holding secrets is exposed to someone other than root and the runner, each with
    the command that fixes it; empty when it is not.

    Group or other permission bits let them read (or, on a directory, swap) what is in it; an owner other than
    root and the user running this can chmod it open or replace it at any time (certbot warns the same way about
    its own files).
    """
    problems = []
    mode = stat.S_IMODE(status.st_mode)
    want = DIR_MODE if stat.S_ISDIR(status.st_mode) else FILE_MODE
    loose = mode & (stat.S_IRWXG | stat.S_IRWXO)
    if loose:
        who = " and ".join(w for w, bits in (("group", stat.S_IRWXG), ("others", stat.S_IRWXO)) if loose & bits)
        problems.append(f"{what} {path} is open to {who} (mode {mode:04o}); it should be {want:04o}; "
                        f"fix: chmod {want:o} {_quoted(path)}")
    if status.st_uid not in (0, runner_uid):
        problems.append(f"{what} {path} is owned by uid {status.st_uid}, neither root nor the user running this "
                        f"(uid {runner_uid}); its owner can read and replace it; fix: chown {runner_uid} "
                        f"{_quoted(path)}")
    return problems


def _quoted(path: Path) -> str:
    import shlex  # only for the fix of a file found exposed

    return shlex.quote(str(path))


def warn_if_exposed(path: Path, what: str) -> None:
    """Log a warning for each way a file or directory holding secrets is open to others (see `exposure`)."""
    try:
        status = path.stat()
    except OSError:
        return  # what cannot be read is reported where it is used
    for problem in exposure(path, status, os.geteuid(), what):
        log.warning("%s", problem)


MAX_INPUT_BYTES = 1 << 20  # per certificate or key file: a long chain is a few kB; README documents the bound


class RefusedFile(OSError):
    """An input file that is not read: not a regular file, or larger than the bound. `strerror` says why."""


def read_regular(path: Path, limit: int = MAX_INPUT_BYTES, checked: Path | None = None
                 ) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at `path` (symlinks followed: certbot's live/ links into archive/), with the
    status of the file actually read.

    Never blocks and never reads without bound: a FIFO, device, socket or directory is refused before it is opened,
    the open is non-blocking so a FIFO swapped in after that check cannot stall it either, the opened descriptor is
    checked again (what is read is what was checked), and at most `limit` bytes are read, whatever the size claims.
    (A hung network file system can still stall a read of a regular file; nothing short of a thread bounds that.)
    With `checked`, the path `path` named when its links were checked (ownership.require_steady_paths): the file
    opened must sit there (`require_opened_at`). Raises OSError (RefusedFile for the refusals, UnsafePathError when
    the open led elsewhere).
    """
    _refuse_unless_regular(os.stat(path), limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        _refuse_unless_regular(status, limit)
        if checked is not None:
            require_opened_at(fd, path, checked)
        return _read_at_most(fd, limit), status
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = os.read(fd, min(1 << 16, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise RefusedFile(errno.EFBIG, f"grew past {_size(limit)} while being read")


def require_opened_at(fd: int, path: Path, checked: Path) -> None:
    """The file open on `fd` is the one at `checked`, where `path` led when its links were checked. Between that
    check and the open, whoever can write a directory on the way (an ACME user's own, where fs.protected_symlinks
    does not reach) can rename a file or directory away and put a link in its place; the kernel's name for what
    was opened (/proc/self/fd) then lies elsewhere. Without /proc the check before the open stands alone."""
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    if opened != str(checked):
        raise UnsafePathError(path, f"led to {opened} when opened, not to the path checked ({checked}): a link on the "
                                    f"way was made or changed after the check (by whoever can write a directory "
                                    f"there, or a renewal meanwhile); nothing was read from it",
                              "run it again, and check who can write the directories on the way")


def _refuse_unless_regular(status: os.stat_result, limit: int) -> None:
    mode = status.st_mode
    if not stat.S_ISREG(mode):
        raise RefusedFile(errno.EINVAL, f"is {_kind(mode)}, not a regular file")
    if status.st_size > limit:
        raise RefusedFile(errno.EFBIG, f"is {status.st_size} bytes, more than the {_size(limit)} allowed")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), f"of type {stat.S_IFMT(mode):o}")


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"

