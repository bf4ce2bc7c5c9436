"""Work done once per run, not once per use (issue 16 review): the configuration's trust check and load, the
lineage and the credentials a drain needs, the metrics textfile's settings and keys. Counted on real runs (the
counted functions still run), never timed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths

from certbot_smtp_dist._internal import credentials, loader, ownership
from certbot_smtp_dist._internal import lineage as lineages


class Calls:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        self._patch = monkeypatch

    def count(self, owner: Any, name: str, key: str | None = None) -> None:
        real: Callable[..., Any] = getattr(owner, name)
        label = key or name

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[label] = self.counts.get(label, 0) + 1
            return real(*args, **kwargs)

        self._patch.setattr(owner, name, counted)


@pytest.fixture
def prom(tmp_path: Path) -> Path:
    (tmp_path / "textfiles").mkdir()
    return tmp_path / "textfiles" / "certbot_smtp_dist.prom"


def test_a_deploy_checks_and_loads_its_configuration_once_metrics_included(
        denv: DeployEnv, lineage: LineagePaths, relay_factory: Any, prom: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay), "b": relay_target(relay)}, defaults={"metrics_textfile": str(prom)})
    calls = Calls(monkeypatch)
    calls.count(loader, "load")
    calls.count(ownership, "require_trusted_config", "trust")
    calls.count(loader, "require_trusted_config", "trust")  # loader's own name for it
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0, run.stderr
    assert calls.counts == {"load": 1, "trust": 1}
    assert 'certbot_smtp_dist_last_delivered_not_after_timestamp_seconds{target="b",' in prom.read_text()


def test_a_drain_reads_a_lineage_and_decrypts_a_targets_secrets_once(
        denv: DeployEnv, lineage: LineagePaths, unused_port: int, prom: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    down = {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2, "auth_method": "plain",
            "username": "robot", "password_credential": "relay", "from_address": "certbot@example.com",
            "to": ["ops@example.com"]}
    denv.set_credential("relay", "smtp_password", "relay-password-0123")
    denv.write_config({"a": down}, defaults={"metrics_textfile": str(prom), "retry_attempts": 1})
    for _ in range(3):  # three renewals' deliveries pending for one target
        assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    calls = Calls(monkeypatch)
    calls.count(lineages, "load", "lineage")
    calls.count(credentials.CredentialStore, "get", "decrypt")
    calls.count(loader, "load", "config")
    run = denv.run("retry")
    assert run.returncode == 75, run.stderr
    assert calls.counts == {"lineage": 1, "decrypt": 1, "config": 1}
    assert 'certbot_smtp_dist_spool_entries{target="a",state="pending"} 3' in prom.read_text()


def test_a_ca_file_named_by_many_targets_is_checked_once_per_load(
        denv: DeployEnv, lineage: LineagePaths, relay_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from certbot_smtp_dist._internal import config

    relay = relay_factory("plaintext")
    good, bad = tmp_path / "ca.pem", tmp_path / "not-a-ca.pem"
    good.write_text(lineage.chain.read_text())
    bad.write_text("no certificate here\n")
    targets = {f"t{i}": relay_target(relay, tls_ca_file=str(good)) for i in range(4)}
    denv.write_config(targets)
    calls = Calls(monkeypatch)
    calls.count(config, "ca_file_problem", "ca")
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0, run.stderr
    assert calls.counts == {"ca": 1}
    # A bad file is still reported for every target that names it, each keyed by its own target.
    denv.write_config({**targets, "t1": relay_target(relay, tls_ca_file=str(bad)),
                       "t2": relay_target(relay, tls_ca_file=str(bad))})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 78
    assert calls.counts == {"ca": 3}
    assert "t1.tls_ca_file" in run.stderr and "t2.tls_ca_file" in run.stderr and "t0.tls_ca_file" not in run.stderr


def test_a_deploy_through_the_certbot_plugin_checks_and_loads_its_configuration_once(
        denv: DeployEnv, lineage: LineagePaths, relay_factory: Any, prom: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin used to reload the configuration after deploy.run (one more trust check, one more load of the
    plugins and credentials) to rewrite a metrics file deploy.run had just rewritten with what it loaded."""
    from certbot_smtp_dist._internal import certbot_adapter

    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)}, defaults={"metrics_textfile": str(prom)})
    calls = Calls(monkeypatch)
    calls.count(loader, "load")
    calls.count(ownership, "require_trusted_config", "trust")
    calls.count(loader, "require_trusted_config", "trust")
    options = certbot_adapter.Options(denv.config, (), denv.state_dir)
    source = certbot_adapter.lineage_source(str(lineage.cert), str(lineage.privkey), str(lineage.chain),
                                            str(lineage.fullchain), "test.example.com")
    assert certbot_adapter.ship(options, source).ok and len(relay.messages) == 1
    assert calls.counts == {"load": 1, "trust": 1}
    assert 'certbot_smtp_dist_last_delivered_not_after_timestamp_seconds{target="a",' in prom.read_text()


def test_a_dismiss_checks_its_configuration_once_metrics_included(
        denv: DeployEnv, lineage: LineagePaths, unused_port: int, prom: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    down = {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
            "from_address": "certbot@example.com", "to": ["ops@example.com"]}
    denv.write_config({"a": down}, defaults={"metrics_textfile": str(prom), "retry_attempts": 1})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    [entry] = (denv.state_dir / "spool").glob("*.json")
    calls = Calls(monkeypatch)
    calls.count(loader, "load")
    calls.count(ownership, "require_trusted_config", "trust")
    calls.count(loader, "require_trusted_config", "trust")
    run = denv.run("dismiss", entry.stem)
    assert run.returncode == 0, run.stderr
    assert calls.counts == {"load": 1, "trust": 1}  # the load: the file names metrics_textfile
    assert 'certbot_smtp_dist_spool_entries{target="a",state="pending"} 0' in prom.read_text()
