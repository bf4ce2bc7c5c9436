"""Issue 19 part 1: the Prometheus textfile after delivered, failed, pending and uncertain runs, `metrics` printing
the same text, atomic rewrites under concurrent deploys, and a symbolic link at the destination refused.

Parsed by the strict parser in support.promtext (promtool and prometheus_client are not installed, and not needed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import ci
from support.deployenv import DeployEnv, relay_target
from support.faultscript import CLOSE
from support.pki import LineagePaths, write_lineage
from support.polling import interrupt_when
from support.promtext import Exposition, parse

P = "certbot_smtp_dist_"
STATES = ("pending", "failed", "blocked", "uncertain")
NOT_AFTER = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=30)


@pytest.fixture
def lineage(tmp_path: Path) -> LineagePaths:
    return write_lineage(tmp_path / "live" / "test.example.com", not_after=NOT_AFTER)


@pytest.fixture
def prom(tmp_path: Path) -> Path:
    textfile_dir = tmp_path / "node-exporter"
    textfile_dir.mkdir()
    return textfile_dir / "certbot_smtp_dist.prom"


def deploy(denv: DeployEnv, lineage: LineagePaths, prom: Path, table: dict[str, Any]) -> int:
    denv.write_config({"relay": table}, defaults={"metrics_textfile": str(prom)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode


def read(prom: Path) -> Exposition:
    accepted_by_the_real_parsers(prom.read_text())
    parsed = parse(prom.read_text())
    assert set(parsed.types) == {P + n for n in ("last_attempt_timestamp_seconds", "last_success_timestamp_seconds",
                                                 "last_delivered_not_after_timestamp_seconds", "spool_entries",
                                                 "no_target_deploy_timestamp_seconds", "journal_intact")}
    assert set(parsed.types.values()) == {"gauge"} and set(parsed.helps) == set(parsed.types)
    return parsed


def accepted_by_the_real_parsers(text: str) -> None:
    """What Prometheus itself accepts: `promtool check metrics` (Debian's prometheus package; it also lints names,
    units and HELP) and prometheus_client's text parser, besides the strict grammar of support.promtext."""
    promtool = ci.require_tool("promtool", "apt-get install prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        checked.stdout + checked.stderr)
    ci.require_module("prometheus_client", "pip install prometheus-client (python3-prometheus-client)")
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert set(families.values()) == {"gauge"} and len(families) == 6, families


def spool(parsed: Exposition, target: str = "relay") -> dict[str, float]:
    return {dict(labels)["state"]: v for labels, v in parsed.series(P + "spool_entries").items()
            if dict(labels)["target"] == target}


def test_delivered_run_writes_the_file_and_metrics_prints_the_same(denv: DeployEnv, lineage: LineagePaths,
                                                                  prom: Path, relay_factory) -> None:
    relay = relay_factory("plaintext")
    before = time.time()
    assert deploy(denv, lineage, prom, relay_target(relay)) == 0
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # node-exporter reads it as another user; no secret in it
    parsed = read(prom)
    attempt = parsed.value(P + "last_attempt_timestamp_seconds", target="relay")
    assert before - 1 <= attempt <= time.time() + 1
    assert parsed.value(P + "last_success_timestamp_seconds", target="relay") == attempt
    assert parsed.value(P + "last_delivered_not_after_timestamp_seconds", target="relay",
                        certificate="test.example.com") == NOT_AFTER.timestamp()
    assert spool(parsed) == dict.fromkeys(STATES, 0)
    assert parsed.value(P + "journal_intact") == 1
    assert "pki@example.com" not in prom.read_text()  # never a recipient address
    printed = denv.run("metrics")
    assert printed.returncode == 0 and printed.stdout == prom.read_text()
    assert os.listdir(prom.parent) == [prom.name]  # no temporary file left behind


@pytest.mark.parametrize("outcome", ["failed", "pending", "uncertain"])
def test_undelivered_runs_are_counted_by_state(denv: DeployEnv, lineage: LineagePaths, prom: Path, relay_factory,
                                               fault_server, unused_port: int, outcome: str) -> None:
    if outcome == "failed":
        relay = relay_factory("plaintext", reject={"pki@example.com": "550 5.1.1 No such user"})
        table = relay_target(relay)
    elif outcome == "pending":
        table = {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                 "from_address": "c@example.com", "to": ["pki@example.com"]}
    else:
        server = fault_server(replies={"DATA_END": CLOSE})
        table = {"host": "127.0.0.1", "port": server.port, "tls_mode": "plaintext", "timeout": 4,
                 "from_address": "c@example.com", "to": ["pki@example.com"]}
    assert deploy(denv, lineage, prom, table) != 0
    parsed = read(prom)
    assert spool(parsed) == {s: int(s == outcome) for s in STATES}
    assert (P + "last_attempt_timestamp_seconds", frozenset({("target", "relay")})) in parsed.samples
    assert parsed.series(P + "last_success_timestamp_seconds") == {}
    assert parsed.series(P + "last_delivered_not_after_timestamp_seconds") == {}


def test_retry_and_dismiss_rewrite_the_file(denv: DeployEnv, lineage: LineagePaths, prom: Path,
                                            unused_port: int) -> None:
    table = {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
             "from_address": "c@example.com", "to": ["pki@example.com"]}
    deploy(denv, lineage, prom, table)
    prom.unlink()
    assert denv.run("retry").returncode != 0
    assert spool(read(prom))["pending"] == 1  # written again by `retry`
    [entry] = (denv.state_dir / "spool").glob("*.json")
    assert denv.run("dismiss", entry.stem).returncode == 0
    assert spool(read(prom))["pending"] == 0  # and by `dismiss`


@pytest.mark.parametrize("problem", ["certificate", "credentials"])
def test_a_deploy_that_could_not_send_rewrites_the_file_too(denv: DeployEnv, tmp_path: Path, prom: Path,
                                                            relay_factory, problem: str) -> None:
    """An unusable certificate or credential blocks the deploy in the spool: the file says so (it was left as the
    run before had written it)."""
    relay = relay_factory("plaintext")
    table = relay_target(relay)
    if problem == "credentials":  # a credential renamed by hand: its ciphertext is bound to its own name
        denv.set_credential("relay", "smtp_password", "relay-password-0123")
        store = denv.config_dir / "credentials"
        doc = json.loads((store / "relay.cred").read_text())
        (store / "copied.cred").write_text(json.dumps({**doc, "name": "copied"}))
        (store / "copied.cred").chmod(0o600)
        table.update(auth_method="plain", username="robot", password_credential="copied")
    broken = write_lineage(tmp_path / "broken" / "test.example.com", not_after=NOT_AFTER,
                           garbage=("cert.pem",) if problem == "certificate" else ())
    denv.write_config({"relay": table}, defaults={"metrics_textfile": str(prom)})
    run = denv.run("deploy", extra_env={"RENEWED_LINEAGE": str(broken.live_dir)})  # a renewal's deploy hook
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert spool(parse(prom.read_text()), "*")["blocked"] == 1 and relay.messages == []


@pytest.mark.parametrize("held", ["greeting", "RCPT", "DATA_END"])
def test_an_interrupted_deploy_rewrites_the_file_with_what_it_spooled(denv: DeployEnv, lineage: LineagePaths,
                                                                        prom: Path, fault_server, held: str) -> None:
    """Ctrl-C (exit 130) while the relay holds a reply (the greeting, one in the transaction, the final one): the
    write-ahead entry is in the spool, pending (uncertain after the final "."), and `retry` will send it; the file
    must say so. It was left as the run before had written it (here: none at all). The interrupt ends the run at once, wherever the session waits
    (runloop.py: a Ctrl-C landing as a reply arrived was lost, and the run waited out the relay's stall)."""
    from support.faultscript import STALL

    server = fault_server(replies={held: STALL})
    denv.write_config({"relay": {"host": "127.0.0.1", "port": server.port, "tls_mode": "plaintext", "timeout": 60,
                                 "from_address": "c@example.com", "to": ["a@example.com"]}},
                      defaults={"metrics_textfile": str(prom)})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", str(lineage.live_dir)],
                            env=denv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def held_there() -> bool:  # the write-ahead entry is there and the relay holds the reply it is to hold
        if not list((denv.state_dir / "spool").glob("*.json")) or not server.connections:
            return False
        if held == "DATA_END":
            return bool(server.data_ends)  # the final "." has reached it
        return held == "greeting" or held in server.client_commands

    _, err = interrupt_when(proc, held_there)
    assert proc.returncode == 130 and "Traceback" not in err, err
    # After the final ".", the relay may have the message: uncertain, as at a deadline (`resend_uncertain` rules).
    state = "uncertain" if held == "DATA_END" else "pending"
    status = denv.run("status").stdout
    assert status.startswith(state.upper()), f"the interrupted delivery is not spooled as {state}: {status}"
    assert spool(read(prom)) == {s: int(s == state) for s in STATES}


def test_an_interrupted_retry_rewrites_the_file_with_what_it_recorded(denv: DeployEnv, lineage: LineagePaths,
                                                                      prom: Path, fault_server) -> None:
    """Ctrl-C (exit 130) ending a `retry` after one entry failed permanently and while another's relay holds its
    final reply: the file must show the one failed (an alert) and the other uncertain. It was left as the deploy
    before had written it (both pending: retries under way, no alert), until some later run."""
    from support.faultscript import STALL

    def target(server: Any) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": server.port, "tls_mode": "plaintext", "timeout": 60,
                "from_address": "c@example.com", "to": ["a@example.com"]}

    busy = fault_server(replies={"greeting": "421 4.3.2 busy"})
    denv.write_config({"refusing": target(busy), "slow": target(busy)},
                      defaults={"metrics_textfile": str(prom), "retry_attempts": 1})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode != 0
    assert spool(read(prom), "refusing")["pending"] == 1 and spool(read(prom), "slow")["pending"] == 1
    refusing, slow = fault_server(replies={"MAIL": "550 5.7.1 not from you"}), fault_server(replies={"DATA_END": STALL})
    denv.write_config({"refusing": target(refusing), "slow": target(slow)},
                      defaults={"metrics_textfile": str(prom), "retry_attempts": 1})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "retry"], env=denv.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Once one was refused and the other holds its final reply.
    _, err = interrupt_when(proc, lambda: "MAIL" in refusing.client_commands and refusing.wait_idle(0.1)
                            and slow.data_ends)
    assert proc.returncode == 130 and "Traceback" not in err, err
    parsed = read(prom)
    assert spool(parsed, "refusing") == {s: int(s == "failed") for s in STATES}, prom.read_text()
    assert spool(parsed, "slow") == {s: int(s == "uncertain") for s in STATES}, prom.read_text()


def test_symlink_at_the_destination_is_refused(denv: DeployEnv, lineage: LineagePaths, prom: Path,
                                               relay_factory, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    prom.symlink_to(victim)
    relay = relay_factory("plaintext")
    denv.write_config({"relay": relay_target(relay)}, defaults={"metrics_textfile": str(prom)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0  # the delivery happened; the metrics file is the only thing refused
    assert f"cannot write the metrics file {prom}" in run.stderr and "symbolic link" in run.stderr
    assert prom.is_symlink() and victim.read_text() == "untouched\n"
    assert sorted(os.listdir(prom.parent)) == [prom.name]


def test_rewritten_atomically_under_four_concurrent_deploys(denv: DeployEnv, lineage: LineagePaths, prom: Path,
                                                            relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"relay": relay_target(relay)}, defaults={"metrics_textfile": str(prom)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0  # the file exists from here on
    cmd = [sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", str(lineage.live_dir)]
    procs = [subprocess.Popen(cmd, env=denv.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    reads, deadline = 0, time.monotonic() + 180
    try:
        while any(p.poll() is None for p in procs) and reads < 100_000 and time.monotonic() < deadline:
            parse(prom.read_text())  # whole, or raises: never a half-written file
            reads += 1
    finally:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert reads > 0
    parsed = read(prom)
    assert spool(parsed) == dict.fromkeys(STATES, 0) and len(relay.messages) == 5
    assert os.listdir(prom.parent) == [prom.name]


def test_a_retry_that_delivers_records_the_not_after(denv: DeployEnv, lineage: LineagePaths, prom: Path,
                                                     relay_factory, unused_port: int) -> None:
    down = {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
            "from_address": "c@example.com", "to": ["pki@example.com"]}
    deploy(denv, lineage, prom, down)
    relay = relay_factory("plaintext")
    denv.write_config({"relay": relay_target(relay)}, defaults={"metrics_textfile": str(prom)})  # the relay is back
    assert denv.run("retry").returncode == 0 and len(relay.messages) == 1
    parsed = read(prom)
    assert spool(parsed) == dict.fromkeys(STATES, 0)
    assert parsed.value(P + "last_delivered_not_after_timestamp_seconds", target="relay",
                        certificate="test.example.com") == NOT_AFTER.timestamp()


def test_a_deploy_through_the_certbot_plugin_writes_the_file_too(denv: DeployEnv, lineage: LineagePaths, prom: Path,
                                                                  relay_factory) -> None:
    from certbot_smtp_dist._internal import certbot_adapter

    relay = relay_factory("plaintext")
    denv.write_config({"relay": relay_target(relay)}, defaults={"metrics_textfile": str(prom)})
    options = certbot_adapter.Options(denv.config, (), denv.state_dir)
    source = certbot_adapter.lineage_source(str(lineage.cert), str(lineage.privkey), str(lineage.chain),
                                            str(lineage.fullchain), "test.example.com")
    assert certbot_adapter.ship(options, source).ok and len(relay.messages) == 1
    assert read(prom).value(P + "last_delivered_not_after_timestamp_seconds", target="relay",
                            certificate="test.example.com") == NOT_AFTER.timestamp()
    prom.unlink()
    assert certbot_adapter.ship(options, source, dry_run=True).ok
    assert not prom.exists()  # a rehearsal writes nothing


@pytest.mark.parametrize("case", ["directory is a link", "no directory"])
def test_a_directory_that_is_a_link_or_missing_is_an_error_not_a_write(denv: DeployEnv, lineage: LineagePaths,
                                                                       relay_factory, tmp_path: Path,
                                                                       case: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    textfile_dir = tmp_path / "linked"
    if case == "directory is a link":
        textfile_dir.symlink_to(elsewhere)
    prom = textfile_dir / "x.prom"
    denv.write_config({"relay": relay_target(relay_factory("plaintext"))}, defaults={"metrics_textfile": str(prom)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0 and f"cannot write the metrics file {prom}" in run.stderr
    assert os.listdir(elsewhere) == []  # nothing written through the link
    assert textfile_dir.is_symlink() if case == "directory is a link" else not textfile_dir.exists()  # none made


def test_a_tampered_journal_is_exposed_and_not_believed(denv: DeployEnv, lineage: LineagePaths, prom: Path,
                                                       relay_factory) -> None:
    """Issue 20: the metrics never say all is well over a journal that fails verification: journal_intact is 0, and
    the lines that fail (here a delivery forged to another target) are not counted."""
    relay = relay_factory("plaintext")
    assert deploy(denv, lineage, prom, relay_target(relay)) == 0
    journal = denv.state_dir / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b'"target":"relay"', b'"target":"forged"')
    journal.write_bytes(b"".join(lines))
    printed = denv.run("metrics")
    assert printed.returncode == 0, printed.stderr
    accepted_by_the_real_parsers(printed.stdout)
    parsed = parse(printed.stdout)
    assert parsed.value(P + "journal_intact") == 0
    assert not any(dict(labels).get("target") == "forged" for labels in
                   parsed.series(P + "last_success_timestamp_seconds"))


def test_a_deploy_no_target_wants_is_a_series_until_the_certificate_is_delivered(
        denv: DeployEnv, lineage: LineagePaths, prom: Path, relay_factory) -> None:
    # A renewal no `certificates` filter matches sends and spools nothing: without a series of its own, the textfile
    # of a host whose every renewal goes unwanted would look like one where nothing renewed.
    relay = relay_factory("plaintext")
    before = time.time()
    assert deploy(denv, lineage, prom, relay_target(relay, certificates=["other.example"])) == 0
    assert relay.connections == 0
    parsed = read(prom)
    [(labels, when)] = parsed.series(P + "no_target_deploy_timestamp_seconds").items()
    assert dict(labels) == {"certificate": "test.example.com"}
    assert before - 1 <= when <= time.time() + 1
    assert spool(parsed) == {s: 0 for s in STATES} and parsed.value(P + "journal_intact") == 1
    assert denv.run("metrics").stdout == prom.read_text()

    assert deploy(denv, lineage, prom, relay_target(relay)) == 0 and len(relay.messages) == 1  # wanted: delivered
    parsed = read(prom)
    assert parsed.series(P + "no_target_deploy_timestamp_seconds") == {}
    assert (P + "last_success_timestamp_seconds", frozenset({("target", "relay")})) in parsed.samples
