"""The hook contracts (hookspecs.py) say when each hook was added, consistently with the package's version."""

from __future__ import annotations

import re

import pytest

from certbot_smtp_dist import __version__, hookspecs

HOOKS = [name for name in dir(hookspecs) if name.startswith("smtp_dist_")]


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@pytest.mark.parametrize("name", HOOKS)
def test_each_hook_says_when_it_was_added_and_names_no_future_release(name: str) -> None:
    """A hook newer than this release is "Added after X (unreleased)", never "Added in" a version that does not
    exist yet."""
    doc = getattr(hookspecs, name).__doc__ or ""
    released = re.findall(r"Added in (\d+(?:\.\d+)+)\.", doc)
    unreleased = re.findall(r"Added after (\d+(?:\.\d+)+) \(unreleased\)\.", doc)
    assert len(released) + len(unreleased) == 1, doc
    assert all(_release(v) <= _release(__version__) for v in released), (name, released, __version__)
    assert all(v == __version__ for v in unreleased), (name, unreleased, __version__)


def test_there_are_hooks() -> None:
    assert len(HOOKS) == 3
