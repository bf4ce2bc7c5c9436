"""The suite's one skip-or-fail rule (tests/support/ci.py): every spelling of "under CI" fails, anything else skips."""

from __future__ import annotations

import pytest
from support import ci


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "YES", " true\n"])
def test_ci_spellings(value: str) -> None:
    assert ci.in_ci({"CI": value})


@pytest.mark.parametrize("value", ["", "0", "false", "no", "on", "truthy"])
def test_not_ci(value: str) -> None:
    assert not ci.in_ci({"CI": value})
    assert not ci.in_ci({})


@pytest.mark.parametrize(("value", "outcome"), [("Yes", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                                ("", pytest.skip.Exception)])
def test_missing_prerequisite_fails_under_ci_and_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch, value: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(outcome, match="no-such-tool-x9"):
        ci.require_tool("no-such-tool-x9", "nowhere")
    with pytest.raises(outcome, match="no_such_module_x9"):
        ci.require_module("no_such_module_x9", "nowhere")
    with pytest.raises(outcome, match="postfix is absent"):
        ci.require(False, "postfix is absent")


def test_present_prerequisites_pass_through() -> None:
    assert ci.require_tool("sh", "apt-get install dash").endswith("/sh")
    ci.require_module("pytest", "pip install pytest")
    ci.require(True, "unused")
