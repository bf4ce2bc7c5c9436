"""Issue 19 part 2: `status --nagios` for each state (nothing yet, delivered, expiring, pending, uncertain, failed,
blocked, unreadable), its exit status, and its output grammar per the Monitoring Plugins Development Guidelines."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv, Run, relay_target
from support.faultscript import CLOSE
from support.pki import LineagePaths, write_lineage

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NOW = dt.datetime.now(dt.timezone.utc)

# Guidelines, "Plugin Output": the first line is `TEXT | perfdata`; perfdata is space-separated
# 'label'=value[UOM];[warn];[crit];[min];[max], UOM one of s us ms % B KB MB TB c, thresholds in range notation.
NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"
RANGE = rf"@?(?:~|{NUMBER})?:?(?:{NUMBER})?"
PERF = re.compile(rf"([A-Za-z_][A-Za-z0-9_]*)=({NUMBER})(s|us|ms|%|B|KB|MB|TB|c)?"
                  rf"(?:;({RANGE})?(?:;({RANGE})?(?:;({NUMBER})?(?:;({NUMBER})?)?)?)?)?")
FIRST = re.compile(r"SMTP-DIST (OK|WARNING|CRITICAL|UNKNOWN) - ([^|\n]+?)(?: \| (.+))?")


def nagios(denv: DeployEnv, *extra: str) -> tuple[Run, str, dict[str, tuple[str, ...]], list[str]]:
    run = denv.run("status", "--nagios", *extra)
    assert "Traceback" not in run.stderr, run.stderr
    first, *long = run.stdout.rstrip("\n").split("\n")
    found = FIRST.fullmatch(first)
    assert found, first
    assert found.group(1) == ("OK", "WARNING", "CRITICAL", "UNKNOWN")[run.returncode]
    perf: dict[str, tuple[str, ...]] = {}
    for item in (found.group(3) or "").split(" ") if found.group(3) else []:
        parsed = PERF.fullmatch(item)
        assert parsed, item
        perf[parsed.group(1)] = parsed.groups()[1:]
    assert all("|" not in line for line in long)  # a `|` in long output would start perfdata
    return run, found.group(2), perf, long


def lineage_expiring(tmp_path: Path, days: float) -> LineagePaths:
    return write_lineage(tmp_path / "live" / "test.example.com", not_before=NOW - dt.timedelta(days=60),
                         not_after=NOW + dt.timedelta(days=days))


def deploy(denv: DeployEnv, lineage: LineagePaths, table: dict[str, Any], *extra: str) -> int:
    denv.write_config({"relay": table})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), *extra)
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode


def down(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": 2,
            "from_address": "c@example.com", "to": ["pki@example.com"]}


def test_no_state_is_unknown_unless_allowed(denv: DeployEnv) -> None:
    run, summary, perf, _ = nagios(denv)
    assert run.returncode == UNKNOWN and "no state directory" in summary and perf == {}
    assert nagios(denv, "--allow-empty")[0].returncode == OK


@pytest.mark.parametrize(("days", "code"), [(60, OK), (10, WARNING), (3, CRITICAL)])
def test_delivered_certificate_expiry_against_the_thresholds(denv: DeployEnv, tmp_path: Path, relay_factory,
                                                             days: int, code: int) -> None:
    lineage = lineage_expiring(tmp_path, days)
    assert deploy(denv, lineage, relay_target(relay_factory("plaintext"))) == 0
    run, summary, perf, long = nagios(denv)
    assert run.returncode == code, run.stdout
    left = float(perf["expires_in_days"][0])
    assert days - 1 < left <= days
    assert perf["expires_in_days"][2:4] == ("14:", "7:")  # range notation: alert below
    assert (perf["pending"][0], perf["failed"][0], perf["oldest_pending"][:2]) == ("0", "0", ("0", "s"))
    assert "test.example.com (target relay)" in summary and "pki@example.com" not in run.stdout
    assert any(line.startswith("earliest not-after") for line in long)
    # the thresholds are the operator's
    assert nagios(denv, "--warn-days", "2", "--crit-days", "1")[0].returncode == OK


def test_pending_is_warning_with_its_age(denv: DeployEnv, tmp_path: Path, unused_port: int) -> None:
    assert deploy(denv, lineage_expiring(tmp_path, 60), down(unused_port)) == 75
    run, summary, perf, long = nagios(denv)
    assert run.returncode == WARNING and "1 pending" in summary
    assert perf["pending"][:3] == ("1", None, "0") and perf["oldest_pending"][1] == "s"
    assert 0 <= int(perf["oldest_pending"][0]) < 3600
    assert "expires_in_days" not in perf  # nothing delivered yet
    assert long[0].startswith("pending: ") and "target relay" in long[0]


def test_uncertain_is_warning_then_critical_once_it_waits_for_a_human(denv: DeployEnv, tmp_path: Path,
                                                                       fault_server) -> None:
    server = fault_server(replies={"DATA_END": CLOSE})
    table = {**down(server.port), "timeout": 4}
    deploy(denv, lineage_expiring(tmp_path, 60), table)
    run, summary, perf, _ = nagios(denv)
    assert (run.returncode, perf["uncertain"][0]) == (WARNING, "1")  # `retry` re-sends it once by itself
    deploy(denv, lineage_expiring(tmp_path, 60), {**table, "resend_uncertain": False})
    assert nagios(denv)[0].returncode == CRITICAL


def test_failed_is_critical(denv: DeployEnv, tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("plaintext", reject={"pki@example.com": "550 5.1.1 No such user"})
    assert deploy(denv, lineage_expiring(tmp_path, 60), relay_target(relay)) == 69
    run, summary, perf, long = nagios(denv)
    assert run.returncode == CRITICAL and "1 failed or blocked" in summary and perf["failed"][:4] == ("1", None, "", "0")  # critical above 0
    assert any("next: " in line for line in long)


def test_blocked_deploy_is_critical(denv: DeployEnv, tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("plaintext")
    lineage = lineage_expiring(tmp_path, 60)
    denv.write_config({"relay": relay_target(relay)})
    bad = write_lineage(tmp_path / "live" / "bad.example.com", key_mismatch=True)
    assert denv.run("deploy", extra_env={"RENEWED_LINEAGE": str(bad.live_dir)}).returncode != 0
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0
    run, _, perf, long = nagios(denv)
    assert run.returncode == CRITICAL and perf["failed"][0] == "1" and "deploy blocked" in long[0]


def test_unreadable_state_is_one_unknown_line(denv: DeployEnv, tmp_path: Path) -> None:
    denv.state_dir.write_text("not a directory\n")
    run, summary, _, long = nagios(denv)
    assert run.returncode == UNKNOWN and long == [] and "status:" in summary


def test_bad_thresholds_are_not_a_verdict(denv: DeployEnv, tmp_path: Path, relay_factory) -> None:
    assert deploy(denv, lineage_expiring(tmp_path, 60), relay_target(relay_factory("plaintext"))) == 0
    run = denv.run("status", "--nagios", "--warn-days", "3", "--crit-days", "7")
    assert run.returncode == UNKNOWN and run.stdout.startswith("SMTP-DIST UNKNOWN - ") and "--crit-days" in run.stdout


def test_unusable_configuration_is_one_unknown_line(denv: DeployEnv, tmp_path: Path, relay_factory) -> None:
    assert deploy(denv, lineage_expiring(tmp_path, 60), relay_target(relay_factory("plaintext"))) == 0
    denv.config.write_text("[targets.a]\nport = 'not a number'\n")
    run, summary, perf, long = nagios(denv)
    assert run.returncode == UNKNOWN and long == [] and perf == {} and "targets.a.port" in summary


def test_a_deploy_no_target_wants_is_journalled_and_status_says_so_never_silently_ok(
        denv: DeployEnv, tmp_path: Path, relay_factory) -> None:
    """A renewal of a certificate no target's `certificates` filter matches sends nothing and spools nothing. Its
    journal line (`no_target`) lets `status` say why nothing was delivered instead of "no journal ... nothing was
    ever recorded": UNKNOWN (OK with --allow-empty, the reason still printed) while nothing was ever delivered; once
    something was, OK with a note naming the certificate no target wants any more."""
    lineage = lineage_expiring(tmp_path, 60)
    relay = relay_factory("plaintext")
    unwanted = relay_target(relay, certificates=["other.example"])
    assert deploy(denv, lineage, unwanted) == 0 and relay.connections == 0
    said = "certificate test.example.com: its last deploy ("
    why = ("was wanted by no target (no `certificates` filter of target(s) relay matches test.example.com, "
           "www.test.example.com); nothing to deliver")

    run, summary, perf, _ = nagios(denv)
    assert run.returncode == UNKNOWN and perf == {}, run.stdout
    assert summary.startswith(f"no delivery was ever attempted from {denv.state_dir}: {said}"), summary
    assert why in summary and "check the targets' `certificates` filters" in summary, summary
    text = denv.run("status")
    assert text.returncode == UNKNOWN and text.stdout.startswith("UNKNOWN: no delivery was ever attempted"), text
    assert why in text.stdout and "nothing was ever recorded" not in text.stdout
    doc = json.loads(denv.run("status", "--json").stdout)
    assert doc["status"] == "UNKNOWN" and why in doc["problem"] and doc["entries"] == [], doc
    allowed = denv.run("status", "--allow-empty")
    assert allowed.returncode == OK and allowed.stdout.startswith("OK: no delivery was ever attempted") and why in \
        allowed.stdout, allowed.stdout
    history = denv.run("history", "--all")
    assert "no_target certificate=test.example.com" in history.stdout, history.stdout

    assert deploy(denv, lineage, relay_target(relay)) == 0 and len(relay.messages) == 1  # wanted: delivered
    run, summary, _, long = nagios(denv)
    assert run.returncode == OK and not any(why in line for line in long), run.stdout
    assert json.loads(denv.run("status", "--json").stdout)["no_target"] == []

    assert deploy(denv, lineage, unwanted) == 0 and len(relay.messages) == 1  # no longer wanted
    run, summary, _, long = nagios(denv)
    assert run.returncode == OK and "test.example.com (target relay)" in summary, run.stdout
    [note] = [line for line in long if why in line]
    assert note.startswith(f"note: {said}"), note
    text = denv.run("status")
    assert text.returncode == OK and text.stdout.splitlines()[0] == "OK: no pending, uncertain or failed deliveries"
    assert text.stdout.splitlines()[1] == note, text.stdout
    [entry] = json.loads(denv.run("status", "--json").stdout)["no_target"]
    assert (entry["certificate"], entry["targets"], entry["names"]) == (
        "test.example.com", ["relay"], ["test.example.com", "www.test.example.com"]), entry


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/New_York"])
def test_a_certificate_without_a_well_defined_expiry_is_ok_in_any_time_zone(denv: DeployEnv, tmp_path: Path,
                                                                            relay_factory, zone: str) -> None:
    """RFC 5280 §4.1.2.5: 99991231235959Z, "no well-defined expiration date", is a not-after a CA may write. East
    of UTC that moment is in the year 10000, which no datetime holds: the check still gives its verdict."""
    forever = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    lineage = write_lineage(tmp_path / "live" / "test.example.com", not_after=forever)
    assert deploy(denv, lineage, relay_target(relay_factory("plaintext"))) == 0
    run = denv.run_process("status", "--nagios", extra_env={"TZ": zone})
    assert (run.returncode, run.stderr) == (OK, ""), run.stdout + run.stderr
    first, *long = run.stdout.rstrip("\n").split("\n")
    assert FIRST.fullmatch(first) and "expires in" in first, first
    assert [line for line in long if line.startswith("earliest not-after") and "9999-12-31" in line], long


def test_a_defect_of_ours_under_status_is_unknown_never_a_traceback_read_as_warning(
        denv: DeployEnv, tmp_path: Path, unused_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A crash exits 1 with a traceback: a Nagios-convention monitor reads WARNING, a guess. The stand-in defect is
    # a function of ours raising what a real one did (a year past 9999 in local time, issue found by the attack review).
    from certbot_smtp_dist._internal import unwanted

    assert deploy(denv, lineage_expiring(tmp_path, 60), down(unused_port)) == 75

    def broken(*_: object) -> list[object]:
        raise ValueError("year 10000 is out of range \x1b[2J|secret-looking text")

    monkeypatch.setattr(unwanted, "unwanted", broken)
    for extra, first in ((("--nagios",), "SMTP-DIST UNKNOWN - status: internal error (ValueError)"),
                         ((), "UNKNOWN: certbot-smtp-dist status: internal error (ValueError)")):
        run = denv.run("status", *extra)
        assert run.returncode == UNKNOWN, (run.stdout, run.stderr)
        assert run.stdout.count("\n") == 1 and run.stdout.startswith(first), run.stdout
        assert "Traceback" not in run.stderr and "year 10000" not in run.stdout + run.stderr
    run = denv.run("status", "--json")
    assert run.returncode == UNKNOWN and json.loads(run.stdout)["status"] == "UNKNOWN"
    verbose = denv.run("-v", "status", "--nagios")
    assert verbose.returncode == UNKNOWN and verbose.stdout.startswith("SMTP-DIST UNKNOWN - ")
    assert "Traceback" in verbose.stderr and "ValueError" in verbose.stderr  # -v: the defect's report


def test_a_defect_of_ours_elsewhere_still_raises(denv: DeployEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only monitoring checks turn a crash into their UNKNOWN: another command's defect is not hidden.
    from certbot_smtp_dist._internal import cli_state

    def broken(*_: object) -> int:
        raise ValueError("a defect")

    monkeypatch.setattr(cli_state, "cmd_history", broken)
    with pytest.raises(ValueError, match="a defect"):
        denv.run("history")
