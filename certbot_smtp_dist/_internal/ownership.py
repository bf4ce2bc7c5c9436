"""Whose files we trust: owner and mode of the config file, the credentials and the state, checked before reading.

The command runs as root. Whoever can write the config file, the credential store or the state directory can make
it mail a private key anywhere, so each must belong to the running user (or root) and be writable by nobody else.
A directory above them matters too: whoever can write it can rename the directory away and put their own in its
place. So every ancestor must also be owned by root or the running user and not be writable by group or others,
unless it has the sticky bit (like /tmp), where others cannot rename what is ours (the pre-created-directory trick is
caught by the owner check of the directory itself). This is OpenSSH's StrictModes rule. A symbolic link in a
directory others can write is its owner's to re-point, sticky bit or not: one on the way must be root's or ours.

Inside the state directory nothing may be a symbolic link (the state is ours alone; a link there was planted).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from certbot_smtp_dist.errors import AccessError, UnsafePathError

log = logging.getLogger("certbot_smtp_dist")

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
STATE_FIX = "run as root, or pass --state-dir DIR"
CONFIG_FIX = "run as root, or pass --config FILE"
_warned: set[Path] = set()


def require_trusted_config(config: Path) -> None:
    """The config file, its directory chain and the credentials directory beside it (before any is read)."""
    _check_chain(config.parent)
    _check_links(config)
    _check_node(config, "configuration file", f"chown root {config}; chmod 600 {config}", closed=CONFIG_FIX)
    credentials = config.parent / "credentials"
    _check_links(credentials)
    _check_node(credentials, "credentials directory", f"chown root {credentials}; chmod 700 {credentials}",
                closed=CONFIG_FIX)
    try:
        mode = os.stat(config).st_mode
    except OSError:
        return  # missing or unreadable: the config loader names it
    if mode & stat.S_IROTH and config not in _warned:
        _warned.add(config)  # once per run, although every entry point checks before it reads
        log.warning("configuration file %s is readable by everyone (mode %04o); it holds no secrets, but "
                    "`chmod 640 %s` keeps its targets private", config, stat.S_IMODE(mode), config)


def read_trusted_config(config: Path) -> bytes:
    """The configuration file's bytes, as opened (a link followed), checked on the open file itself: a regular file
    of ours that others cannot write. `require_trusted_config` ran before, maybe while nothing was there (a
    --config in /tmp not made yet); a file another user made since is theirs, and would say where the key goes."""
    fix = f"chown root {config}; chmod 600 {config}"
    if not stat.S_ISREG(os.stat(config).st_mode):  # opening a device or FIFO is already an act (a watchdog arms)
        raise UnsafePathError(config, "the configuration file is not a regular file", fix)
    fd = os.open(config, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # one swapped in since neither blocks nor is read
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(config, "the configuration file is not a regular file", fix)
        _check_stat(config, st, "configuration file", fix)
        return handle.read()


def untrusted_input(path: Path, what: str) -> str | None:
    """Why a file that decides as much as the config file does (who can decrypt what we send: an S/MIME recipient
    certificate) cannot be trusted, or None: the config file's rule, for the file as named and as resolved (a
    link into a directory others can write is no better than that directory), and for every directory holding a
    link on the way (a link to a link in such a directory is re-pointed there)."""
    try:
        require_trusted_input(path, what, f"chown root {path}; chmod go-w {path}")
    except (UnsafePathError, AccessError) as exc:
        return str(exc)
    return None


def require_trusted_input(path: Path, what: str, fix: str, closed: str = "") -> Path:
    """`untrusted_input`'s rule, raised (UnsafePathError; AccessError when this user cannot look): for a file that
    must be trusted or nothing runs (the credential store's master key). A link on the way is followed when only
    root or we can re-point it (a key kept on a root-owned mount). Returns what `path` finally named when checked,
    for the open to be held to it (files.read_regular's `checked`). `closed`: the fix when this user cannot look."""
    for directory in {path.parent, Path(os.path.realpath(path)).parent}:
        _check_chain(directory)
    final = require_steady_links(path)
    _check_chain(final.parent)
    _check_node(path, what, fix, closed=closed)
    return final


def require_trusted_state(state_dir: Path) -> None:
    """The state directory, the chain above it, and everything inside: no foreign owner, no loose mode, no link."""
    _check_chain(state_dir.parent)
    fix = f"chown root {state_dir}; chmod 700 {state_dir}"
    if not _check_node(state_dir, "state directory", fix, follow=False, closed=STATE_FIX) or not state_dir.is_dir():
        return  # missing: created 0700 on first write; not a directory: every write fails and is reported
    _check_inside(state_dir)


def require_own_directory(path: Path, st: os.stat_result, made: bool) -> None:
    """A directory about to be written in (files.ensure_private_dir; `st` its lstat): ours and closed to others,
    and when we just made it (`made`), every directory above it too. The check before the run may have found
    nothing there: a directory another user made since, in /tmp or the like, must not be used."""
    _check_stat(path, st, "directory", f"remove it (rm -r {path}) after checking who made it")
    if made:
        _check_chain(path.parent)


def _check_inside(directory: Path) -> None:
    """Every entry below `directory`: a link is planted; a subdirectory must be ours and closed to others."""
    try:
        names = sorted(os.listdir(directory))
    except PermissionError as exc:  # ours to trust, but not this user's to read: not an attack, a wrong user
        raise AccessError(directory, "list the state directory", exc.strerror or "permission denied",
                          STATE_FIX) from exc
    except OSError as exc:
        raise UnsafePathError(directory, f"cannot be listed ({exc.strerror})", "check its owner and mode") from exc
    for name in names:
        path = directory / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # removed meanwhile by a concurrent run
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(path, "is a symbolic link inside the state directory (never followed)",
                                  f"remove the link (rm {path}) after checking who planted it")
        if stat.S_ISDIR(st.st_mode):
            _check_stat(path, st, "state directory", f"chown root {path}; chmod 700 {path}")
            _check_inside(path)
        elif st.st_uid not in _trusted_owners():
            raise UnsafePathError(path, f"belongs to uid {st.st_uid}, not to this user or root",
                                  f"remove it (rm {path}) after checking who wrote it")


def _check_node(path: Path, what: str, fix: str, follow: bool = True, closed: str = "") -> bool:
    """False if `path` does not exist; raises if it is not safe to trust (UnsafePathError) or the running user
    cannot even look at it (AccessError, with `closed` as the fix)."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return False
    except PermissionError as exc:
        raise AccessError(path, f"look at the {what}", exc.strerror or "permission denied", closed or fix) from exc
    except OSError as exc:
        raise UnsafePathError(path, f"cannot be checked ({exc.strerror})", fix) from exc
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(path, f"the {what} is a symbolic link", f"use the directory it points to, {fix}")
    _check_stat(path, st, what, fix)
    return True


def _check_stat(path: Path, st: os.stat_result, what: str, fix: str) -> None:
    if st.st_uid not in _trusted_owners():
        raise UnsafePathError(path, f"the {what} belongs to uid {st.st_uid}, not to this user or root", fix)
    if st.st_mode & _WRITABLE_BY_OTHERS:
        raise UnsafePathError(path, f"the {what} is writable by group or others (mode "
                                    f"{stat.S_IMODE(st.st_mode):04o})", fix)


def _check_links(path: Path) -> None:
    """A config file or credentials directory that is a symbolic link: the directory holding each link on the way
    and the one holding the final target, with their chains, and each link's owner. A root-owned file in a
    directory others can write is theirs to swap; checking the target alone (as stat() does) misses that."""
    _check_chain(require_steady_links(path).parent)


def require_steady_links(path: Path) -> Path:
    """Every symbolic link on the way to `path` (itself included) is one only root or we can re-point: no other
    user's where others can write, each held in a directory chain others cannot swap. What `path` finally names,
    returned, may be anyone's (the metrics textfile's directory is its reader's: files.write_public). A check on
    the path, not on what is opened: a component made later where nothing was, or replaced in a directory others
    can write above what `path` names, is not seen."""
    links, final = _resolve(path)
    _require_steady(links)
    return final


def require_steady_paths(paths: Iterable[Path], theirs: str = "") -> dict[Path, Path]:
    """`require_steady_links` for several paths at once (a lineage's files), each directory holding a link
    checked once: certbot's four live/ links share one. Returns what each path finally named when checked.
    `theirs`, when given, is the fix for a directory of another user above a link ({uid} its owner, {fix} the
    chown): a lineage's is better run as that user than chowned away from its ACME client."""
    resolved = {path: _resolve(path) for path in paths}
    _require_steady([link for links, _ in resolved.values() for link in links], theirs)
    return {path: final for path, (_, final) in resolved.items()}


def require_no_borrowed_name(path: Path, st: os.stat_result, where: Path, what: str) -> None:
    """A file read from `where` (the path it was opened at; `st` its fstat) that another user could have hard-linked
    there from a path they can reach but a file they cannot read (fs.protected_hardlinks=0): more than one name, in
    a directory others can write (/tmp), or in one of another user than root or us and owned by someone else than
    that directory. Their own file there (an ACME user's key) has its directory's owner and passes."""
    try:
        holder = os.lstat(where.parent)
    except OSError:
        return  # gone since it was opened: what was read came from where the check led
    foreign = holder.st_uid not in _trusted_owners() and st.st_uid != holder.st_uid
    if st.st_nlink > 1 and (foreign or holder.st_mode & _WRITABLE_BY_OTHERS):
        raise UnsafePathError(path, f"the {what} belongs to uid {st.st_uid} and has {st.st_nlink} names, in a "
                                    f"directory of uid {holder.st_uid} (mode {stat.S_IMODE(holder.st_mode):04o}): "
                                    f"another user could have hard-linked it there from a file they cannot read",
                              "name that file by its own path, or put a copy of your own there (cp, not ln)")


def _require_steady(links: list[Path], theirs: str = "") -> None:
    _check_link_owners(links)
    for holder in dict.fromkeys(link.parent for link in links):
        _check_chain(holder, theirs)


def _check_link_owners(links: list[Path]) -> None:
    """A link in a directory others can write (sticky, or the chain check refuses it) is its owner's to remove and
    make again, pointing anywhere, at any time: the sticky bit keeps out only the others. One of another user's
    there is refused, never followed (fs.protected_symlinks=1 makes the kernel refuse it too, but only where it is
    set). Another user's link in a directory only we can write stays: they cannot replace it."""
    for link in links:
        try:
            owner, holder = os.lstat(link).st_uid, os.stat(link.parent).st_mode
        except OSError:
            continue  # removed meanwhile: nothing of it is followed
        if owner not in _trusted_owners() and holder & _WRITABLE_BY_OTHERS:
            raise UnsafePathError(link, f"a symbolic link owned by uid {owner}, in a directory others can write "
                                        f"(mode {stat.S_IMODE(holder):04o}): its owner can re-point it at any time",
                                  f"name the path it leads to ({os.path.realpath(link)}) instead, or replace it "
                                  f"with a link of your own")


def _resolve(path: Path) -> tuple[list[Path], Path]:
    """Resolve `path` as the kernel does, one component at a time (".." after a link goes up from where the link
    led, not lexically): every link met on the way, at any depth (a link inside a link's target too), named by the
    real directory holding it, and the path finally named. Whoever can write any of those directories, or owns a
    link there, can re-point it."""
    whole = path if path.is_absolute() else Path(os.getcwd(), path)  # not abspath: it folds ".." before the links
    todo = list(reversed(whole.parts[1:]))
    resolved, links = Path("/"), list[Path]()
    for _step in range(4096):  # bounded: at most 40 links (ELOOP), each of at most PATH_MAX components
        if not todo:
            break
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            resolved = resolved.parent
            continue
        try:
            target = os.readlink(resolved / name)
        except OSError:  # not a link, or missing: looked up as it is
            resolved = resolved / name
            continue
        if len(links) >= 40:
            break  # ELOOP: the open fails anyway
        links.append(resolved / name)
        if os.path.isabs(target):
            resolved = Path("/")
        todo.extend(reversed(Path(target).parts[1 if os.path.isabs(target) else 0:]))
    return links, resolved


def _check_chain(directory: Path, theirs: str = "") -> None:
    """Every existing ancestor, literal and resolved, and of every directory holding a link on the way: owned by
    root or us, not writable by others unless sticky; and no link on the way another user can re-point. `theirs`:
    the fix for one of another user (require_steady_paths)."""
    absolute = Path(os.path.abspath(directory))
    seen: set[Path] = set()
    links, final = _resolve(directory)
    _check_link_owners(links)
    for start in (absolute, Path(os.path.realpath(absolute)), final, *(link.parent for link in links)):
        for ancestor in (start, *start.parents):
            if ancestor in seen:
                continue
            seen.add(ancestor)
            try:
                st = os.stat(ancestor)
            except FileNotFoundError:
                continue  # created by us, 0700
            except OSError:
                continue  # cannot look: the path lookup itself will fail and be reported
            fix = f"chown root {ancestor}; chmod go-w {ancestor}"
            if st.st_uid not in _trusted_owners():
                raise UnsafePathError(ancestor, f"this directory above a path it must trust belongs to uid "
                                                f"{st.st_uid}, who could replace what lies below it",
                                      theirs.format(uid=st.st_uid, fix=fix) if theirs else fix)
            if st.st_mode & _WRITABLE_BY_OTHERS and not st.st_mode & stat.S_ISVTX:
                raise UnsafePathError(ancestor, f"this directory above a path it must trust is writable by "
                                                f"group or others (mode {stat.S_IMODE(st.st_mode):04o}) without "
                                                f"the sticky bit", fix)


def _trusted_owners() -> frozenset[int]:
    return frozenset({0, os.geteuid()})
