"""The certbot adapter's certbot-free logic: option parsing, collecting deploy_cert calls, naming, wording."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import ci

from certbot_smtp_dist._internal import certbot_adapter as installer
from certbot_smtp_dist._internal.state import DEFAULT_STATE_DIR


def test_targets_option_is_a_comma_separated_list_without_blanks_or_repeats() -> None:
    assert installer.parse_targets(None) == ()
    assert installer.parse_targets("") == ()
    assert installer.parse_targets(" ops, web,,ops ,") == ("ops", "web")


def test_options_resolve_like_the_command(tmp_path: Path) -> None:
    env = {"CERTBOT_SMTP_DIST_CONFIG": str(tmp_path / "env.toml"), "CERTBOT_SMTP_DIST_STATE_DIR": str(tmp_path)}
    assert installer.resolve_options(None, "a", env) == installer.Options(tmp_path / "env.toml", ("a",), tmp_path)
    assert installer.resolve_options("/x.toml", None, {}).config == Path("/x.toml")
    assert installer.resolve_options(None, None, {}).state_dir == DEFAULT_STATE_DIR


def test_one_certificate_named_once_per_domain_is_collected_once() -> None:
    live = "/etc/letsencrypt/live/example.com"
    collector = installer.Collector()
    for _ in ("example.com", "www.example.com"):
        collector.add(installer.lineage_source(f"{live}/cert.pem", f"{live}/privkey.pem", f"{live}/chain.pem",
                                               f"{live}/fullchain.pem", "example.com"))
    assert len(collector) == 1
    (source,) = collector.take()
    assert source.lineage_dir == Path(live) and source.fullchain == Path(live) / "fullchain.pem"
    assert collector.take() == ()  # a second flush sends nothing


def test_lineage_name_prefers_cert_name_then_the_live_directory() -> None:
    live = "/etc/letsencrypt/live"
    assert installer.lineage_name(f"{live}/a.example/fullchain.pem", live, "chosen") == "chosen"
    assert installer.lineage_name(f"{live}/a.example/fullchain.pem", live, None) == "a.example"
    assert installer.lineage_name("/srv/certs/fullchain.pem", live, None) is None


def test_resend_command_names_the_failed_targets_and_a_non_default_state_dir(tmp_path: Path) -> None:
    live = tmp_path / "live" / "a b"
    source = installer.lineage_source(str(live / "cert.pem"), str(live / "privkey.pem"), None, None, "a b")
    options = installer.Options(Path("/etc/x.toml"), ("ops",), tmp_path / "state")
    shipment = installer.Shipment(options, source, None, refused="--smtp-dist-targets: unknown target(s): ops")
    assert not shipment.ok
    assert shipment.problems() == ["--smtp-dist-targets: unknown target(s): ops"]
    assert shipment.resend_command() == (
        f"certbot-smtp-dist deploy --config /etc/x.toml --state-dir {tmp_path / 'state'} --lineage '{live}' "
        "--target ops")


def test_setup_error_lists_every_problem_and_has_a_one_line_form() -> None:
    exc = installer.SetupError("configuration c is unusable", ["a: bad", "b: worse"])
    assert str(exc) == "configuration c is unusable\n  - a: bad\n  - b: worse"
    assert exc.one_line() == "configuration c is unusable: a: bad; b: worse"


def _need_certbot() -> None:
    ci.require_module("certbot", "pip install certbot, or apt-get install python3-certbot")


def test_the_plugin_module_imports_nothing_heavy() -> None:
    """certbot imports the entry point on every run: it must not pull in the delivery stack."""
    _need_certbot()
    code = (
        "import sys, certbot.plugins.common, certbot.interfaces\n"
        "before = set(sys.modules)\n"
        "import certbot_smtp_dist.certbot_plugin\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['certbot_smtp_dist', 'certbot_smtp_dist.certbot_plugin']"


def test_renewal_message_warns_that_an_uncertain_target_may_have_it_already(tmp_path: Path) -> None:
    from certbot_smtp_dist._internal import classify
    from certbot_smtp_dist._internal.deploy import DeployReport
    from certbot_smtp_dist.model import DeliveryResult, Phase, Status

    live = tmp_path / "live" / "a"
    source = installer.lineage_source(str(live / "cert.pem"), str(live / "privkey.pem"), None, None, "a")
    lost = classify.deadline(Phase.DATA, True, 5, dot_sent=True)
    results = (DeliveryResult("ops", Status.UNCERTAIN, lost, "<m@x>", attempts=1),
               DeliveryResult("web", Status.DELIVERED, message_id="<n@x>", attempts=1))
    shipment = installer.Shipment(installer.Options(Path("/etc/x.toml"), (), tmp_path / "state"), source,
                                  DeployReport(None, results, exit_status=75))
    assert shipment.uncertain_targets() == ("ops",)
    message = installer.renewal_failure_message(shipment)
    assert "ops: uncertain SMTP_TRANSIENT in data" in message
    assert "Target(s) ops may have it already" in message and "web" not in message.split("Target(s)")[1]
