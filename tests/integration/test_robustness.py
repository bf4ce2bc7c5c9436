"""Concurrency, crash safety, load, and secrecy of the state directory under real processes."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

from support.deployenv import DeployEnv, Run, relay_target
from support.faultscript import STALL, Reply
from support.pki import LineagePaths, write_lineage
from support.relay import Relay

PASSWORD = "pw-Zq81-never-leaks"
#: How far past its deadline a target may report finishing. The deadline is an asyncio timeout inside the run;
#: one second covers event-loop scheduling latency with 50 concurrent sessions on a busy two-core machine.
DEADLINE_SLACK = 1.0
#: How early a stalled target may report giving up: the relay must really be waited for until the deadline,
#: not abandoned early; 0.1 s covers timer granularity and duration_s being rounded to milliseconds.
EARLY_SLACK = 0.1
P12 = "p12-Kx55-never-leaks"


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def spool_entries(denv: DeployEnv) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((denv.state_dir / "spool").glob("*.json"))]


def test_concurrent_deploys_and_retries_lose_nothing_and_send_nothing_twice(
    denv: DeployEnv, tmp_path: Path, relay_factory, relay_pki, unused_port: int
) -> None:
    good = relay_factory("plaintext")
    denv.write_config({
        "good": relay_target(good, to=["ok@example.com"]),
        "down": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                 "from_address": "c@example.com", "to": ["later@example.com"]},
    })
    lineages = [write_lineage(tmp_path / "live" / f"site{i}.example.com", names=(f"site{i}.example.com",))
                for i in range(4)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        deploys = [pool.submit(denv.run_process, "deploy", "--lineage", str(lin.live_dir), "--json")
                   for lin in lineages]
        retries = [pool.submit(denv.run_process, "retry") for _ in range(2)]
        runs: list[Run] = [f.result(timeout=120) for f in deploys]
        for f in retries:
            assert f.result(timeout=120).returncode in (0, 75)
    assert [r.returncode for r in runs] == [75] * 4
    # `good` got one message per deploy, no more (a racing retry never re-sends a delivered target), and each is
    # the message its own run reported: matched by the certificate name in the Subject, not just counted.
    received = [parse(m.data) for m in good.messages]
    assert len(received) == 4
    assert len({m["Message-ID"] for m in received}) == 4
    for i, run in enumerate(runs):
        [mine] = [m for m in received if f"site{i}.example.com" in m["Subject"]]
        assert mine["Message-ID"] == run.target("good")["message_id"]
    # Every attempt of every process is in the journal, and the chain is intact.
    attempts = sum(r.target("good")["attempts"] + r.target("down")["attempts"] for r in runs)
    journal = [json.loads(x) for x in (denv.state_dir / "journal.jsonl").read_text().splitlines()]
    assert sum(1 for x in journal if x["event"] == "attempt" and x["run"] == "deploy") == attempts
    assert denv.run("journal", "verify").returncode == 0
    entries = spool_entries(denv)
    assert sorted(e["message_id"] for e in entries) == sorted(r.target("down")["message_id"] for r in runs)
    # The relay comes back; two retries race; each spooled message arrives exactly once.
    with Relay(None, mode="plaintext", port=unused_port) as back:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = [f.result(timeout=120) for f in [pool.submit(denv.run_process, "retry") for _ in range(2)]]
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        if spool_entries(denv):  # the loser of the race saw the winner's lock and left the rest for later
            assert denv.run_process("retry").returncode == 0
        ids = [m.data.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in back.messages]
    assert sorted(ids) == sorted(e["message_id"] for e in entries)
    assert spool_entries(denv) == []
    assert denv.run("journal", "verify").returncode == 0


def test_sigkill_mid_delivery_then_retry_completes(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    stalled = fault_server(replies={"greeting": STALL})
    port = stalled.port
    denv.write_config({"a": {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": 60,
                             "from_address": "c@example.com", "to": ["x@example.com"]}})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", str(lineage.live_dir)],
                            env=denv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while stalled.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stalled.connections >= 1, "deploy never reached the relay"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    [entry] = spool_entries(denv)  # written ahead of the attempt
    assert entry["state"] == "pending"
    verdict = denv.run("journal", "verify")
    assert verdict.returncode == 0, verdict.stdout
    stalled.stop()
    with Relay(None, mode="plaintext", port=port) as relay:
        assert denv.run_process("retry").returncode == 0
        [msg] = relay.messages
        assert entry["message_id"].encode() in msg.data
    assert spool_entries(denv) == []
    assert denv.run("status").returncode == 0


def test_fifty_targets_a_third_faulty(denv: DeployEnv, lineage: LineagePaths, relay_factory, fault_server,
                                      unused_port: int) -> None:
    good = relay_factory("plaintext")
    auth_relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("wrong", "smtp_password", "not-it")
    faults = {
        "refused": ({"port": unused_port}, "SMTP_CONNECT"),
        "stall": ({"port": fault_server(replies={"greeting": STALL}).port}, "SMTP_TRANSIENT"),
        "greet421": ({"port": fault_server(replies={"greeting": "421 4.3.2 busy"}).port}, "SMTP_TRANSIENT"),
        "rcpt550": ({"port": fault_server(rcpt_replies={"x@example.com": "550 5.1.1 nope"}).port}, "SMTP_PERMANENT"),
        "data554": ({"port": fault_server(replies={"DATA_END": "554 5.6.0 rejected"}).port}, "SMTP_PERMANENT"),
        "mail553": ({"port": fault_server(replies={"MAIL": "553 5.1.8 bad sender"}).port}, "SMTP_VALIDATION"),
        "auth": (dict(relay_target(auth_relay), password_credential="wrong"), "SMTP_AUTH"),
        "notls": ({"port": fault_server().port, "tls_mode": "starttls"}, "SMTP_TLS"),
    }
    targets: dict[str, dict] = {}
    expected: dict[str, str | None] = {}
    names = list(faults)
    for i in range(17):
        kind = names[i % len(names)]
        overrides, code = faults[kind]
        targets[f"bad{i:02d}-{kind}"] = {"host": "127.0.0.1", "tls_mode": "plaintext", "timeout": 4,
                                         "from_address": "c@example.com", "to": ["x@example.com"], **overrides}
        expected[f"bad{i:02d}-{kind}"] = code
    for i in range(33):
        targets[f"good{i:02d}"] = relay_target(good, to=[f"r{i}@example.com"], timeout=4)
        expected[f"good{i:02d}"] = None
    denv.write_config(targets)
    started = time.monotonic()
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json")
    wall = time.monotonic() - started
    assert run.returncode == 69
    got = {t["target"]: t["error_code"] for t in run.json["targets"]}
    assert got == expected
    assert len(good.messages) == 33
    # Each target keeps its own deadline, however many others are stalled beside it.
    late = {t["target"]: t["duration_s"] for t in run.json["targets"]
            if t["duration_s"] > targets[t["target"]]["timeout"] + DEADLINE_SLACK}
    assert late == {}
    # Targets run concurrently: the run ends near the largest timeout (4 s), not near the sum of the faulty
    # targets' budgets (68 s). The 6 s on top are what a cold process spends outside any deadline: interpreter
    # and import start-up, reading config and credentials, 50 renders and the journal, on a busy machine.
    largest_timeout = max(t["timeout"] for t in targets.values())
    assert wall < largest_timeout + 6


def test_no_secret_reaches_output_journal_spool_or_logs(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                         relay_factory) -> None:
    """A hostile relay echoes the SASL blob back; nothing secret survives anywhere we write."""
    blob = base64.b64encode(f"\0robot\0{PASSWORD}".encode()).decode()
    echo = fault_server(auth_replies={"PLAIN": f"535 5.7.8 bad credentials {blob} {PASSWORD}"})
    relay = relay_factory("plaintext", reject={"tmp@example.com": f"451 4.3.0 try later {PASSWORD}"})
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.set_credential("p12", "smtp_pkcs12_passphrase", P12)
    common = {"from_address": "c@example.com", "payload": "pkcs12", "pkcs12_passphrase_credential": "p12"}
    denv.write_config({
        "echo": {"host": "127.0.0.1", "port": echo.port, "tls_mode": "plaintext", "auth_method": "plain",
                 "username": "robot", "password_credential": "relay", "to": ["x@example.com"], **common},
        "tmp": {**relay_target(relay, to=["tmp@example.com", "ok@example.com"], timeout=2), **common},
    })
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json", "--log-format", "json", "-v")
    assert run.target("echo")["error_code"] == "SMTP_AUTH"
    assert run.target("tmp")["status"] == "partial"
    key_lines = [ln.decode() for ln in lineage.privkey.read_bytes().splitlines()[1:-1]]
    haystacks = {"stdout": run.stdout, "stderr": run.stderr}
    for path in denv.state_dir.rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_text(errors="replace")
    for where, text in haystacks.items():
        for secret in (PASSWORD, P12, blob, *key_lines):
            assert secret not in text, f"secret leaked into {where}"
    assert "***" in run.target("echo")["detail"]  # redacted, not dropped
    for line in run.stderr.splitlines():
        json.loads(line)  # --log-format json: every log line is a JSON object
    assert os.stat(denv.state_dir / "journal.jsonl").st_mode & 0o077 == 0


def test_stalled_data_and_trickle_respect_the_deadline(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    after_data = fault_server(replies={"DATA_END": STALL})
    trickle = fault_server(replies={"greeting": Reply.text("220 " + "x" * 60, trickle=1.0)})
    base = {"host": "127.0.0.1", "tls_mode": "plaintext", "timeout": 3, "from_address": "c@example.com",
            "to": ["x@example.com"]}
    denv.write_config({"data": {**base, "port": after_data.port}, "trickle": {**base, "port": trickle.port}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert (run.target("data")["error_code"], run.target("data")["phase"]) == ("SMTP_TRANSIENT", "data")
    assert (run.target("trickle")["error_code"], run.target("trickle")["phase"]) == ("SMTP_TRANSIENT", "connect")
    for name in ("data", "trickle"):
        assert "deadline" in run.target(name)["detail"]
        # Waited for until the deadline (a trickling relay resets no timer), and not a moment much past it.
        assert base["timeout"] - EARLY_SLACK <= run.target(name)["duration_s"] <= base["timeout"] + DEADLINE_SLACK
    assert run.returncode == 75


def test_secret_at_the_truncation_boundary_never_leaks(denv: DeployEnv, lineage: LineagePaths,
                                                       fault_server) -> None:
    """Relay text is bounded in length; the bound must not cut a secret in half before it is scrubbed."""
    echo = fault_server(auth_replies={"PLAIN": "535 5.7.8 " + "x" * 380 + " " + PASSWORD + " " + "y" * 100})
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"echo": {"host": "127.0.0.1", "port": echo.port, "tls_mode": "plaintext",
                                "auth_method": "plain", "username": "robot", "password_credential": "relay",
                                "from_address": "c@example.com", "to": ["x@example.com"]}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.target("echo")["error_code"] == "SMTP_AUTH"
    texts = [run.stdout, run.stderr] + [p.read_text() for p in denv.state_dir.rglob("*") if p.is_file()]
    for prefix_len in (6, 10, len(PASSWORD)):
        assert not any(PASSWORD[:prefix_len] in text for text in texts), f"{prefix_len} chars of the password leaked"
    assert len(run.target("echo")["detail"]) <= 400
