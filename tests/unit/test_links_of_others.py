"""Symbolic links a hostile local user can plant or re-point are refused, never followed, with the path named.

(a) The spool's locks/ directory is made only inside a spool directory that is itself no link: the write-ahead's
one-by-one path (one job, or the batch when the spool cannot be made ready) used to take the entry's lock first,
making locks/ (and the lock file) through whatever the spool path pointed at.
(b) A link in a directory others can write (sticky, like /tmp) is its owner's to re-point at any time: the sticky
bit only keeps the others out. One owned by another user is not trusted on the way to the configuration, the
state, a temporary directory or the metrics textfile (fs.protected_symlinks=0, as here, lets root follow it).
(c) Nor on the way to the certificate files a deploy mails (--lineage, --key, RENEWED_LINEAGE, a hook's paths):
such a link could be re-pointed at any other lineage root can read, and its key would be mailed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from support.pki import LineagePaths, write_lineage

from certbot_smtp_dist._internal import files, lineage, ownership
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.ledger import Ledger
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist._internal.pipeline import Job
from certbot_smtp_dist._internal.state import StateKeys
from certbot_smtp_dist.errors import UnsafePathError
from certbot_smtp_dist.model import CertificateFacts, LineageSource, Message

NOBODY = 65534
NOW = datetime(2026, 12, 2, tzinfo=timezone.utc)
FACTS = CertificateFacts("n", "host.example", ("host.example",), "CN=x", NOW, NOW, "1", "00")
SOURCE = LineageSource(cert=None, key=Path("/nonexistent/privkey.pem"), chain=None, fullchain=None, name="n")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="another user's file needs root to make")


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory of root's elsewhere (/etc, say): nothing of ours may be made in it through a link."""
    where = tmp_path / "victim"
    where.mkdir(mode=0o755)
    return where


def their_link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    os.chown(link, NOBODY, -1, follow_symlinks=False)
    return link


def _jobs(count: int) -> list[Job]:
    table = {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "c@example.com", "to": ["x@example.com"]}
    settings = parse_settings({"targets": {f"t{i}": table for i in range(count)}}, Path("c.toml"), {},
                              {f.name: f for f in BUILTIN_FORMATS})
    return [Job(t, Message(f"<{t.name}@example.com>", "s", "c@example.com", ("x@example.com",), b"m"), None, ())
            for t in settings.targets]


# -- (a) locks/ through a symlinked spool ---------------------------------------------------------------------
@as_root
@pytest.mark.parametrize("count", [1, 2], ids=["one job", "batch falling back"])
@pytest.mark.parametrize("locks", ["missing", "already there"])
def test_the_write_ahead_makes_nothing_through_a_spool_that_is_a_link(sticky: Path, victim: Path, count: int,
                                                                      locks: str) -> None:
    state = sticky / "state"
    ownership.require_trusted_state(state)  # nothing there yet: "created 0700 on first write"
    state.mkdir()  # in the window before the first write, by another user, with the spool pointing elsewhere
    their_link(state / "spool", victim)
    os.chown(state, NOBODY, -1)
    if locks == "already there":
        (victim / "locks").mkdir(mode=0o700)
    before = sorted(p.relative_to(victim) for p in victim.rglob("*"))
    ledger = Ledger(state, "deploy", StateKeys(journal=b"j" * 32, spool=b"s" * 32), NOW)
    with ledger.write_ahead_all(FACTS, SOURCE, _jobs(count)) as entries:
        assert entries == [None] * count  # the deliveries go on without an entry, as for any state trouble
    assert not ledger.healthy
    assert sorted(p.relative_to(victim) for p in victim.rglob("*")) == before  # no locks/, no lock file


@as_root
def test_a_spool_link_of_ours_is_refused_by_name_before_any_lock(tmp_path: Path, victim: Path) -> None:
    from certbot_smtp_dist._internal import spool as sp

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "spool").symlink_to(victim)
    entry = sp.for_delivery("t", FACTS, SOURCE, "<m@example.com>", ("x@example.com",), NOW)
    with pytest.raises(UnsafePathError, match=f"{state / 'spool'}: is a symbolic link"), \
            sp.Spool(state, b"s" * 32).claim_new(entry):
        pass
    assert list(victim.iterdir()) == []


# -- (b) another user's link in a sticky directory --------------------------------------------------------------
@pytest.fixture
def real_config(tmp_path: Path) -> Path:
    home = tmp_path / "etc"
    home.mkdir(mode=0o755)
    config = home / "config.toml"
    config.write_text("[targets]\n")
    config.chmod(0o600)
    return config


@as_root
@pytest.mark.parametrize("hop", ["the config file", "its directory"])
def test_another_users_link_to_the_config_in_a_sticky_directory_is_refused(sticky: Path, real_config: Path,
                                                                          hop: str) -> None:
    if hop == "the config file":
        link = their_link(sticky / "config.toml", real_config)
        named = link
    else:
        link = their_link(sticky / "etc", real_config.parent)
        named = link / "config.toml"
    with pytest.raises(UnsafePathError, match=f"{link}: .*symbolic link owned by uid {NOBODY}"):
        ownership.require_trusted_config(named)


@as_root
def test_another_users_link_above_the_state_in_a_sticky_directory_is_refused(sticky: Path, tmp_path: Path) -> None:
    real = tmp_path / "lib"
    real.mkdir(mode=0o755)
    link = their_link(sticky / "lib", real)
    with pytest.raises(UnsafePathError, match=f"{link}: .*uid {NOBODY}"):
        ownership.require_trusted_state(link / "state")


@as_root
def test_another_users_link_on_the_way_to_a_temporary_directory_makes_it_untrusted(sticky: Path,
                                                                                   tmp_path: Path) -> None:
    real = tmp_path / "tmp2"
    (real / "work").mkdir(mode=0o700, parents=True)
    link = their_link(sticky / "tmp2", real)
    said = ownership.untrusted_input(link / "work", "temporary directory")
    assert said is not None and str(link) in said


@as_root
def test_another_users_link_on_the_way_to_the_metrics_textfile_is_refused(sticky: Path, victim: Path) -> None:
    (victim / "sub").mkdir()  # the directory itself a link: refused already (write_public opens it O_NOFOLLOW)
    link = their_link(sticky / "textfile", victim)
    with pytest.raises(UnsafePathError, match=f"{link}: .*uid {NOBODY}"):
        files.write_public(link / "sub" / "node.prom", b"x 1\n")
    assert list((victim / "sub").iterdir()) == []


@as_root
def test_links_their_owner_cannot_re_point_are_still_followed(sticky: Path, real_config: Path, tmp_path: Path,
                                                               victim: Path) -> None:
    """Only the owner of a link in a directory others can write is refused: root's link there, or another
    user's link in a directory only root can write (they cannot replace it), stays usable."""
    (sticky / "etc").symlink_to(real_config.parent)  # root's
    ownership.require_trusted_config(sticky / "etc" / "config.toml")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o755)
    their_link(closed / "etc", real_config.parent)
    ownership.require_trusted_config(closed / "etc" / "config.toml")
    (victim / "sub").mkdir()
    their_link(closed / "textfile", victim)
    files.write_public(closed / "textfile" / "sub" / "node.prom", b"x 1\n")
    assert (victim / "sub" / "node.prom").read_bytes() == b"x 1\n"


# -- (c) another user's link on the way to the certificate files ---------------------------------------------------
@pytest.fixture
def theirs(tmp_path: Path) -> LineagePaths:
    """A lineage of root's (certbot's layout) the operator never asked to mail: the one the link is re-pointed at."""
    return write_lineage(tmp_path / "etc" / "live" / "bank.example", names=("bank.example",), archive_symlinks=True)


def _through(sticky: Path, theirs: LineagePaths, hop: str) -> tuple[LineageSource, Path]:
    """The source a deploy would read, and the link of nobody's on the way."""
    if hop == "--lineage":
        link = their_link(sticky / "live", theirs.live_dir)
        return lineage.from_lineage_dir(link), link
    if hop == "a directory above --key":
        link = their_link(sticky / "certs", theirs.live_dir)
        return lineage.from_files(None, str(link / "privkey.pem"), None, str(link / "fullchain.pem"), None), link
    key = their_link(sticky / "privkey.pem", theirs.privkey)  # the key file itself (a certificate is public)
    return lineage.from_files(None, str(key), None, str(theirs.fullchain), "mine"), key


@as_root
@pytest.mark.parametrize("hop", ["--lineage", "a directory above --key", "the key file itself"])
def test_another_users_link_on_the_way_to_the_certificate_files_is_refused_before_they_are_read(
        sticky: Path, theirs: LineagePaths, hop: str) -> None:
    source, link = _through(sticky, theirs, hop)
    with pytest.raises(UnsafePathError, match=f"^{link}: a symbolic link owned by uid {NOBODY}, in a directory "
                                              f"others can write .*name the path it leads to"):
        lineage.load(source)


@as_root
def test_lineage_links_their_owner_cannot_re_point_are_still_followed(sticky: Path, theirs: LineagePaths,
                                                                      tmp_path: Path) -> None:
    """certbot's live/ links into archive/ (root's), root's link in /tmp, and another user's link in a directory
    only root can write: each is read as before."""
    assert lineage.load(lineage.from_lineage_dir(theirs.live_dir)).facts.name == "bank.example"
    (sticky / "live").symlink_to(theirs.live_dir)  # root's
    assert lineage.load(lineage.from_lineage_dir(sticky / "live", "x")).facts.common_name == "bank.example"
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o755)
    their_link(closed / "live", theirs.live_dir)
    assert lineage.load(lineage.from_lineage_dir(closed / "live", "x")).facts.common_name == "bank.example"


@as_root
def test_a_link_in_another_users_own_directory_is_theirs_to_re_point_their_plain_files_are_read(
        tmp_path: Path, theirs: LineagePaths) -> None:
    """Root deploying an ACME user's files: a link in that user's directory (dehydrated's privkey.pem ->
    privkey-TIMESTAMP.pem) could be re-pointed by them at any lineage root can read, so it is refused; their plain
    files (lego, acme.sh, uacme) are read, the key file's owner warned about as before."""
    home = tmp_path / "home" / "acme"
    home.mkdir(parents=True, mode=0o755)
    plain = write_lineage(home / "certs" / "acme.example", names=("acme.example",))
    their_link(home / "certs" / "acme.example" / "privkey-1.pem", theirs.privkey)
    for path in (home, *(p for p in home.rglob("*") if not p.is_symlink())):
        os.chown(path, NOBODY, -1)
    assert lineage.load(lineage.from_lineage_dir(plain.live_dir)).facts.common_name == "acme.example"
    source = lineage.from_files(None, str(plain.live_dir / "privkey-1.pem"), None, str(theirs.fullchain), None)
    with pytest.raises(UnsafePathError, match=f"^{plain.live_dir}: this directory above a path it must trust "
                                              f"belongs to uid {NOBODY}"):
        lineage.load(source)


def _swap_after_the_check(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    """The other user's move in the window between the link check and the reads: the real check runs, then they
    act (a rename and a link, as a loop of theirs would, timed by luck instead of by this hook)."""
    checked = lineage.require_steady

    def check_then_swap(source: LineageSource) -> Any:
        result = checked(source)
        swap()
        return result

    monkeypatch.setattr(lineage, "require_steady", check_then_swap)


@as_root
@pytest.mark.parametrize("hop", ["the key file", "its directory"])
def test_a_link_an_acme_user_swaps_in_after_the_check_is_refused_not_read(
        tmp_path: Path, theirs: LineagePaths, monkeypatch: pytest.MonkeyPatch, hop: str) -> None:
    """Root deploying an ACME user's plain files (lego as that user): the check finds no link, then the user
    renames their key (or its directory) away and puts a link to another lineage in its place. Their directory is
    not sticky, so fs.protected_symlinks does not stop root following it: what was opened is checked against the
    path checked, and the other lineage's key is never loaded."""
    home = tmp_path / "home" / "acme"
    plain = write_lineage(home / "certs" / "acme.example", names=("acme.example",))
    for path in (home, *home.rglob("*")):
        os.chown(path, NOBODY, -1)
    (tmp_path / "home").chmod(0o755)

    def swap() -> None:
        if hop == "the key file":
            plain.privkey.rename(plain.live_dir / "old.pem")
            their_link(plain.privkey, theirs.privkey)
            plain.fullchain.unlink()
            their_link(plain.fullchain, theirs.fullchain)
        else:
            plain.live_dir.rename(plain.live_dir.with_name("old"))
            their_link(plain.live_dir, theirs.live_dir)

    _swap_after_the_check(monkeypatch, swap)
    source = lineage.from_files(None, str(plain.privkey), None, str(plain.fullchain), None)
    with pytest.raises(UnsafePathError, match=f"^{re.escape(str(plain.fullchain))}: led to [^ ]*/bank\\.example/"
                                              f"fullchain1\\.pem when opened, not to the path checked"):
        lineage.load(source)


@as_root
def test_a_hard_link_to_roots_key_in_an_acme_users_directory_is_refused(tmp_path: Path,
                                                                        theirs: LineagePaths) -> None:
    """With fs.protected_hardlinks=0 another user can hard-link any file whose path they can reach into their own
    directory: root's key then sits, as a plain file, where root reads the ACME user's key (a certificate over its
    public key is theirs to make). A key file of another owner than its directory's, with more than one name, is
    refused; the ACME user's own key there is read as before (the hard link here is made as root, which
    fs.protected_hardlinks=1 on this host lets root do)."""
    home = tmp_path / "home" / "acme"
    plain = write_lineage(home / "certs" / "acme.example", names=("acme.example",))
    for path in (home, *home.rglob("*")):
        os.chown(path, NOBODY, -1)
    (tmp_path / "home").chmod(0o755)
    assert lineage.load(lineage.from_lineage_dir(plain.live_dir)).facts.common_name == "acme.example"
    plain.privkey.unlink()
    os.link(theirs.privkey.resolve(), plain.privkey)  # root's key file in archive/ itself, by a second name
    plain.fullchain.unlink()
    os.link(theirs.fullchain.resolve(), plain.fullchain)
    with pytest.raises(UnsafePathError, match=f"^{re.escape(str(plain.privkey))}: the private key file belongs to "
                                              f"uid 0 and has 2 names, in a directory of uid {NOBODY} "):
        lineage.load(lineage.from_files(None, str(plain.privkey), None, str(plain.fullchain), None))


@as_root
def test_a_hard_link_to_roots_key_in_a_sticky_directory_is_refused(sticky: Path, theirs: LineagePaths) -> None:
    """The same hard link made in /tmp by anyone (a --key given there): root's file in root's directory, but one
    others can write. Root's own copy there, by one name, is read."""
    key = sticky / "privkey.pem"
    os.link(theirs.privkey.resolve(), key)
    with pytest.raises(UnsafePathError, match=f"^{re.escape(str(key))}: the private key file belongs to uid 0 and "
                                              f"has 2 names, in a directory of uid 0 \\(mode 1777\\)"):
        lineage.load(lineage.from_files(None, str(key), None, str(theirs.fullchain), "x"))
    key.unlink()
    key.write_bytes(theirs.privkey.read_bytes())
    assert lineage.load(lineage.from_files(None, str(key), None, str(theirs.fullchain), "x")).facts.name == "x"


@as_root
def test_a_link_in_an_acme_users_directory_refused_to_root_says_to_run_the_deploy_as_that_user(
        tmp_path: Path) -> None:
    """dehydrated run as its own user under /var/lib/dehydrated (privkey.pem -> privkey-TIMESTAMP.pem), deployed by
    root: refused (that user could re-point the link at any key root can read). The fix given is the one that keeps
    the ACME client working, not a chown of its directory alone: the deploy as that user (its own hook), and the
    chown only where the client runs as root."""
    certs = tmp_path / "var" / "lib" / "dehydrated" / "certs" / "d.example"
    plain = write_lineage(certs, names=("d.example",))
    os.rename(plain.privkey, certs / "privkey-1700000000.pem")
    plain.privkey.symlink_to("privkey-1700000000.pem")
    for path in (certs.parent.parent, *certs.parent.parent.rglob("*")):
        os.chown(path, NOBODY, -1, follow_symlinks=False)
    source = lineage.from_files(None, str(plain.privkey), None, str(plain.fullchain), None)
    with pytest.raises(UnsafePathError) as refused:
        lineage.load(source)
    assert str(refused.value).startswith(f"{certs}: this directory above a path it must trust belongs to uid {NOBODY}")
    assert f"run the deploy as uid {NOBODY}" in str(refused.value), refused.value
    assert f"chown root {certs}" in str(refused.value) and "if that ACME client runs as root" in str(refused.value)
