"""The metrics refresh after an interrupted deploy never takes the place of the interruption (Ctrl-C, exit 130)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv
from support.pki import write_lineage

from certbot_smtp_dist._internal import deploy, lineage, textfile


def _request(tmp_path: Path) -> deploy.DeployRequest:
    denv = DeployEnv(tmp_path)
    denv.write_config({"relay": {"host": "127.0.0.1", "port": 9, "tls_mode": "plaintext", "timeout": 2,
                                 "from_address": "c@example.com", "to": ["a@example.com"]}},
                      defaults={"metrics_textfile": str(tmp_path / "certbot_smtp_dist.prom")})
    live = write_lineage(tmp_path / "live" / "test.example.com")
    return deploy.DeployRequest(denv.config, lineage.from_lineage_dir(live.live_dir), environ=denv.env(),
                                state_dir=denv.state_dir)


def _defect(*_: Any) -> None:
    raise RuntimeError("a defect in the refresh")


def test_a_failing_refresh_does_not_replace_the_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The refresh ran in a `finally` around the delivery: its own exception replaced the KeyboardInterrupt, so a
    Ctrl-C ended as a crash (exit 1 and a traceback) instead of 130."""
    request = _request(tmp_path)

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "_ship", interrupted)
    monkeypatch.setattr(textfile, "refresh", _defect)
    with caplog.at_level(logging.ERROR, logger="certbot_smtp_dist"), pytest.raises(KeyboardInterrupt):
        deploy.run(request)
    assert "metrics file not refreshed after the run ended by KeyboardInterrupt: RuntimeError" in caplog.text
    assert "a defect in the refresh" not in caplog.text  # the class only: an exception's text may quote anything


def test_a_failing_refresh_after_a_finished_run_is_not_hidden(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an exception already under way is protected: a defect after a run that ended by itself surfaces."""
    request = _request(tmp_path)
    monkeypatch.setattr(deploy, "_ship", lambda *_: [])
    monkeypatch.setattr(textfile, "refresh", _defect)
    with pytest.raises(RuntimeError, match="a defect in the refresh"):
        deploy.run(request)
