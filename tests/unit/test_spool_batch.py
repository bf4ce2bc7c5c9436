"""A spool batch checks its directories once (spool.Spool.batch, issue 16's fan-out), never for longer: the next
batch, and every claim outside one, checks them again, so a directory swapped for a link meanwhile is refused as
it always was, and nothing is made where the link points."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist.errors import UnsafePathError

KEY = b"k" * 32


def entry(number: int) -> sp.Entry:
    return sp.Entry(id=f"{number:024x}", state=sp.PENDING, target="t", certificate="c", serial="01",
                    fingerprint="ff", message_id=f"<{number}@example.com>", date="d", envelope_to=("a@example.com",),
                    source={"key": "/k/privkey.pem"}, created="c", updated="u")


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("swapped", ["spool", "locks"])
@pytest.mark.parametrize("ended", ["normally", "by an exception"])
@pytest.mark.parametrize("next_claim", ["in the next batch", "outside a batch"])
def test_a_directory_swapped_for_a_link_after_a_batch_is_refused(tmp_path: Path, swapped: str, ended: str,
                                                                  next_claim: str) -> None:
    spool = sp.Spool(tmp_path / "state", KEY)
    with pytest.raises(Interrupted) if ended == "by an exception" else nullcontext():
        with spool.batch():
            spool.make_directories()  # checked once for the batch (what write_ahead_all does)...
            for number in (1, 2):  # ...and not again by its claims
                with spool.claim_new(entry(number)):
                    pass
            if ended == "by an exception":
                raise Interrupted
    assert sorted(p.name for p in spool.directory.glob("*.json")) == [f"{entry(n).id}.json" for n in (1, 2)]

    where = spool.directory if swapped == "spool" else spool.directory / "locks"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "locks").mkdir(parents=True, mode=0o700)
    where.rename(tmp_path / "moved")
    where.symlink_to(elsewhere)  # someone's link where the directory was, after the batch that checked it

    block: AbstractContextManager[object] = spool.batch() if next_claim == "in the next batch" else nullcontext()
    with block, pytest.raises(UnsafePathError, match="symbolic link"):
        with spool.claim_new(entry(3)):
            pass
    assert [p.name for p in elsewhere.rglob("*")] == ["locks"]  # no lock and no entry made through the link


def test_a_batch_whose_check_failed_checks_at_every_claim(tmp_path: Path) -> None:
    """make_directories raising in a batch leaves it unchecked: each claim meets (and raises) the problem itself."""
    spool = sp.Spool(tmp_path / "state", KEY)
    spool.directory.parent.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    spool.directory.symlink_to(tmp_path / "elsewhere")
    with spool.batch():
        with pytest.raises(UnsafePathError):
            spool.make_directories()
        for number in (1, 2):
            with pytest.raises(UnsafePathError), spool.claim_new(entry(number)):
                pass
    assert not any((tmp_path / "elsewhere").iterdir())
    assert os.path.islink(spool.directory)
