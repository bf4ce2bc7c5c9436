"""The collector paused for a cold `deploy` start-up: resumed by the run before it delivers, and a host interpreter's
collector never touched."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.deployenv import DeployEnv
from support.pki import write_lineage

from certbot_smtp_dist._internal import deploy, lineage, startup


@pytest.fixture(autouse=True)
def _collector() -> Iterator[None]:
    """Whatever a test does, the test process's collector ends as it was, nothing frozen."""
    was = gc.isenabled()
    yield
    startup.resume()
    gc.unfreeze()
    if was:
        gc.enable()
    else:
        gc.disable()


def test_pause_then_resume_freezes_what_start_up_made() -> None:
    startup.pause()
    assert not gc.isenabled()
    startup.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    frozen = gc.get_freeze_count()
    startup.resume()  # once only
    assert gc.get_freeze_count() == frozen


def test_a_host_collector_is_never_touched() -> None:
    """The certbot plugin runs deploy.run in certbot's process: nothing paused, so resuming freezes nothing."""
    startup.resume()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_collector_someone_else_disabled_stays_disabled() -> None:
    gc.disable()
    startup.pause()
    startup.resume()
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_the_deploy_resumes_collection_before_it_delivers(tmp_path: Path) -> None:
    """A paused start-up (the hook's own process) collects again for the deliveries: a dry run goes as far."""
    denv = DeployEnv(tmp_path)
    denv.write_config({"relay": {"host": "127.0.0.1", "port": 9, "tls_mode": "plaintext", "timeout": 2,
                                 "from_address": "c@example.com", "to": ["a@example.com"]}})
    live = write_lineage(tmp_path / "live" / "test.example.com")
    request = deploy.DeployRequest(denv.config, lineage.from_lineage_dir(live.live_dir), environ=denv.env(),
                                   dry_run=True)
    startup.pause()
    result = deploy.run(request)
    assert result.exit_status == 0 and [r.status.value for r in result.results] == ["rendered"]
    assert gc.isenabled() and gc.get_freeze_count() > 0
