"""Private files are written through a temporary file of their own (files._new_temp, as tempfile.mkstemp makes
one): created 0600 whatever the umask, exclusively and never through a link, another name tried when one is taken."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from certbot_smtp_dist._internal import files


def names(*picked: str) -> Iterator[str]:
    yield from picked
    while True:
        yield os.urandom(8).hex()


def test_a_private_file_is_0600_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    old = os.umask(0o277)  # 0600 through that would be 0400: fchmod makes it 0600
    try:
        files.write_private(tmp_path / "entry.json", b"x" * 100_000)
    finally:
        os.umask(old)
    assert (tmp_path / "entry.json").read_bytes() == b"x" * 100_000
    assert stat.S_IMODE((tmp_path / "entry.json").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]


def test_a_taken_temporary_name_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file or a link already at the name drawn is left as it is (O_EXCL, O_NOFOLLOW): the next name is used."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"theirs")
    (tmp_path / ".entry.json.aaaa.tmp").symlink_to(elsewhere)
    (tmp_path / ".entry.json.bbbb.tmp").write_bytes(b"left")
    drawn = names("aaaa", "bbbb")
    monkeypatch.setattr(files.secrets, "token_hex", lambda size: next(drawn))
    files.write_private(tmp_path / "entry.json", b"ours")
    assert (tmp_path / "entry.json").read_bytes() == b"ours"
    assert elsewhere.read_bytes() == b"theirs" and (tmp_path / ".entry.json.bbbb.tmp").read_bytes() == b"left"
    assert os.readlink(tmp_path / ".entry.json.aaaa.tmp") == str(elsewhere)


def test_no_free_name_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".entry.json.aaaa.tmp").write_bytes(b"left")
    monkeypatch.setattr(files.secrets, "token_hex", lambda size: "aaaa")
    with pytest.raises(FileExistsError):
        files.write_private(tmp_path / "entry.json", b"ours")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.json.aaaa.tmp"]
