"""A directory the trust check found missing, made by someone else before the run writes there, is never used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from certbot_smtp_dist._internal import files
from certbot_smtp_dist._internal.ownership import require_trusted_state
from certbot_smtp_dist.errors import UnsafePathError

NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's directory needs root to make")
@pytest.mark.parametrize("made", ["the state directory", "a directory above it"])
def test_a_directory_another_user_made_after_the_trust_check_is_refused(sticky: Path, made: str) -> None:
    state = sticky / "above" / "state"
    require_trusted_state(state)  # nothing there yet: the check passes, "created 0700 on first write"
    theirs = state if made == "the state directory" else state.parent
    theirs.mkdir(parents=True)
    os.chown(theirs, NOBODY, -1)  # in the window between that check and the first write
    with pytest.raises(UnsafePathError, match=str(theirs)):
        files.ensure_private_dir(state)
    assert not (state / "spool").exists()
    ours = sticky / "ours" / "state"
    assert files.ensure_private_dir(ours) == ours and (ours.stat().st_mode & 0o777) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's directory needs root to make")
def test_a_directory_others_can_write_is_refused_even_if_ours(sticky: Path) -> None:
    loose = sticky / "state"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(UnsafePathError, match="writable by group or others"):
        files.ensure_private_dir(loose)


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's directory needs root to make")
def test_an_output_directory_the_operator_names_is_not_held_to_the_state_rule(sticky: Path) -> None:
    out = sticky / "out"
    out.mkdir()
    os.chown(out, NOBODY, -1)
    assert files.ensure_private_dir(out, ours=False) == out
