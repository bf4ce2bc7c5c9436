"""A file placed where another local user could replace it: the three ways the ownership rule (ownership.py) refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Exposure = Literal["file_writable_by_others", "directory_writable_by_others", "link_into_such_a_directory"]
EXPOSURES: tuple[Exposure, ...] = ("file_writable_by_others", "directory_writable_by_others",
                                   "link_into_such_a_directory")


def exposed_file(tmp_path: Path, name: str, data: bytes, how: Exposure) -> Path:
    """`data` as `name`, exposed `how`: the file itself writable by others; or its directory writable by others
    (no sticky bit: anyone may rename it away and put their own in its place); or that directory's file named
    through a link in a closed directory. Returns the path to name in the configuration."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    placed = open_dir / name
    placed.write_bytes(data)
    placed.chmod(0o666 if how == "file_writable_by_others" else 0o644)
    if how != "file_writable_by_others":
        open_dir.chmod(0o777)
    if how != "link_into_such_a_directory":
        return placed
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o755)
    named = closed / name
    named.symlink_to(placed)
    return named
