"""A Ctrl-C that ends a run (runloop.py, exit 130, one line saying so) keeps what the relay took before it: a target
delivered, a message accepted before the reply to QUIT, the recipients of a partial delivery are recorded, and
`retry` never sends them the message again; what was still under way stays pending, and `retry` sends it.

Before, each was dropped with the cancellation (the run's gather, the session, the delivery's attempt loop), its
write-ahead entry stayed pending for everything, and `retry` sent a second copy. asyncio.run did the same: the losses
predate runloop.py. A Ctrl-C while the outcome is saved waits for the save (runloop.HeldOff); one before anything is
written ahead leaves a renewal's blocked entry (kept, or made), never nothing. Each run is a process of its own;
every stall is the target's 60 s timeout; a Ctrl-C at an exact step is sent by the process itself, from a hook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.deployenv import DeployEnv
from support.faultscript import STALL
from support.faultsmtp import FaultServer
from support.pki import LineagePaths, write_lineage
from support.polling import interrupt_when


@pytest.fixture
def lineage(tmp_path: Path) -> LineagePaths:
    return write_lineage(tmp_path / "live" / "test.example.com")


def _target(server: FaultServer) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": server.port, "tls_mode": "plaintext", "timeout": 60, "from_address": "c@example.com", "to": ["a@example.com"]}


def test_a_target_delivered_before_the_ctrl_c_is_recorded_and_never_sent_again(denv: DeployEnv,
                                                                                lineage: LineagePaths,
                                                                                fault_server) -> None:
    fast = fault_server()
    slow = fault_server(replies={"DATA_END": STALL})
    denv.write_config({"fast": _target(fast), "slow": _target(slow)})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", str(lineage.live_dir)],
                            env=denv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # `fast` took the message and its session is over (the client closed it); `slow` holds its final reply.
    _, err = interrupt_when(proc, lambda: len(fast.messages) == 1 and fast.wait_idle(0.1) and slow.data_ends)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1] == "certbot-smtp-dist: error: deploy: interrupted", err  # it was silent

    status = denv.run("status", "--json")
    assert [e["target"] for e in json.loads(status.stdout)["entries"]] == ["slow"], status.stdout

    relay = fault_server()  # `slow` answers now
    denv.write_config({"fast": _target(fast), "slow": _target(relay)})
    retry = denv.run("retry")
    assert retry.returncode == 0, retry.stderr
    assert len(relay.messages) == 1 and len(fast.messages) == 1  # `fast` got it once, from the deploy


def test_a_retry_interrupted_after_one_delivery_records_it(denv: DeployEnv, lineage: LineagePaths,
                                                             fault_server) -> None:
    busy = fault_server(replies={"greeting": "421 4.3.2 busy"})
    denv.write_config({"fast": _target(busy), "slow": _target(busy)}, defaults={"retry_attempts": 1})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode != 0
    fast, slow = fault_server(), fault_server(replies={"DATA_END": STALL})
    denv.write_config({"fast": _target(fast), "slow": _target(slow)}, defaults={"retry_attempts": 1})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "retry"], env=denv.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = interrupt_when(proc, lambda: len(fast.messages) == 1 and fast.wait_idle(0.1) and slow.data_ends)
    assert proc.returncode == 130 and "Traceback" not in err, err

    status = denv.run("status", "--json")
    assert [e["target"] for e in json.loads(status.stdout)["entries"]] == ["slow"], status.stdout
    relay = fault_server()
    denv.write_config({"fast": _target(fast), "slow": _target(relay)})
    assert denv.run("retry").returncode == 0
    assert len(relay.messages) == 1 and len(fast.messages) == 1


def test_a_ctrl_c_while_the_relay_holds_its_reply_to_quit_records_the_message_as_delivered(
        denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    # The relay took the message (250 to the final "."); the session waits for the reply to QUIT, which a relay may
    # hold up to the target's timeout. A Ctrl-C there dropped the delivery: pending, and sent again by `retry`.
    relay = fault_server(replies={"QUIT": STALL})
    denv.write_config({"relay": _target(relay)})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "deploy", "--json", "--lineage",
                             str(lineage.live_dir)],
                            env=denv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = interrupt_when(proc, lambda: "QUIT" in relay.client_commands)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert out == ""  # no document listing only what finished (README, exit table): `status` shows it
    status = denv.run("status", "--json")
    assert json.loads(status.stdout)["entries"] == [], status.stdout
    assert len(relay.messages) == 1


def test_an_interrupted_check_ends_at_once_with_one_line_and_no_half_document(denv: DeployEnv,
                                                                              fault_server) -> None:
    relay = fault_server(replies={"EHLO": STALL})
    denv.write_config({"relay": _target(relay)})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "check", "--json"], env=denv.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = interrupt_when(proc, lambda: "EHLO" in relay.client_commands)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert out == "" and err.splitlines()[-1] == "certbot-smtp-dist: error: check: interrupted", (out, err)


def test_recipients_that_took_the_message_before_a_ctrl_c_are_not_sent_it_again(denv: DeployEnv,
                                                                                 lineage: LineagePaths,
                                                                                 fault_server) -> None:
    # The first session: a@ takes the message, b@ is told to try later; the second session, for b@ alone, meets a
    # relay holding its greeting, and the Ctrl-C lands there (or in the pause between the two). a@ was dropped with
    # the interrupted delivery: the entry stayed pending for both, and `retry` sent a@ the message a second time.
    from support.faultscript import Script

    relay = fault_server(Script(rcpt_replies={"b@example.com": "451 4.3.0 try later"}, faulty_connections=1,
                                later=Script(replies={"greeting": STALL})))
    denv.write_config({"relay": _target(relay) | {"to": ["a@example.com", "b@example.com"]}})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", str(lineage.live_dir)],
                            env=denv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = interrupt_when(proc, lambda: relay.connections >= 2)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert [m.rcpt_tos for m in relay.messages] == [("a@example.com",)]

    later = fault_server()
    denv.write_config({"relay": _target(later) | {"to": ["a@example.com", "b@example.com"]}})
    assert denv.run("retry").returncode == 0
    assert [m.rcpt_tos for m in later.messages] == [("b@example.com",)]


def test_a_ctrl_c_after_the_final_dot_is_uncertain_and_resend_uncertain_false_holds(denv: DeployEnv,
                                                                                      lineage: LineagePaths,
                                                                                      fault_server) -> None:
    # The final "." has left and the relay holds its reply: it may have the message (RFC 5321 §4.1.1.4), as when
    # our own deadline passes there. It was left pending, and `retry` re-sent it although the target said
    # `resend_uncertain = false`.
    slow = fault_server(replies={"DATA_END": STALL})
    denv.write_config({"archive": {**_target(slow), "resend_uncertain": False}})
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", str(lineage.live_dir)],
                            env=denv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = interrupt_when(proc, lambda: slow.data_ends)
    assert proc.returncode == 130 and "Traceback" not in err, err
    entries = json.loads(denv.run("status", "--json").stdout)["entries"]
    assert [(e["target"], e["state"]) for e in entries] == [("archive", "uncertain")], entries

    relay = fault_server()  # answers now: still not sent again without --include-uncertain
    denv.write_config({"archive": {**_target(relay), "resend_uncertain": False}})
    denv.run("retry")
    assert relay.messages == [] and relay.connections == 0


_CTRL_C_AFTER_THE_JOURNAL = """
import os, signal, sys
from certbot_smtp_dist._internal import journal
from certbot_smtp_dist._internal.cli import main

append_all = journal.Journal.append_all

def then_ctrl_c(self, records):  # one Ctrl-C, landing just after the journal took the first attempts saved
    append_all(self, records)
    if any(r.get("event") == "attempt" for r in records) and not hasattr(journal, "pressed"):
        journal.pressed = True
        os.kill(os.getpid(), signal.SIGINT)

journal.Journal.append_all = then_ctrl_c
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["deploy", "a renewal's deploy", "retry", "retry of two certificates"])
def test_a_ctrl_c_while_a_delivery_is_saved_never_leaves_it_to_be_sent_again(denv: DeployEnv, lineage: LineagePaths,
                                                                             fault_server, tmp_path: Path,
                                                                             command: str) -> None:
    # A Ctrl-C (the user's second, as the first ended the run; or the ACME client's SIGINT) between the journal's
    # append and the settling of the entries: the delivered target's entry stayed pending, and `retry` sent the
    # message again. Saving is a few writes: the Ctrl-C waits for it, then ends the run (130). `retry` saves each
    # certificate's deliveries in turn: the Ctrl-C waits for all of them, not only the first.
    lineages = [lineage] + ([write_lineage(tmp_path / "live" / "other.example.com")] if "two" in command else [])
    if command.startswith("retry"):
        busy = fault_server(replies={"greeting": "421 4.3.2 busy"})
        denv.write_config({"relay": _target(busy)}, defaults={"retry_attempts": 1})
        for each in lineages:
            assert denv.run("deploy", "--lineage", str(each.live_dir)).returncode != 0
    relay = fault_server()
    denv.write_config({"relay": _target(relay)})
    argv = ["deploy", "--lineage", str(lineage.live_dir)] if command == "deploy" else ["retry"]
    if command == "a renewal's deploy":  # delivered and saved: no blocked entry saying nothing was sent
        argv, env = ["deploy"], denv.env() | {"RENEWED_LINEAGE": str(lineage.live_dir)}
    else:
        env = denv.env()
    run = subprocess.run([sys.executable, "-c", _CTRL_C_AFTER_THE_JOURNAL, *argv], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
    assert len(relay.messages) == len(lineages)
    entries = json.loads(denv.run("status", "--json").stdout)["entries"]
    assert entries == [], entries
    denv.run("retry")
    assert len(relay.messages) == len(lineages)  # never sent again


_CTRL_C_WHILE_PREPARING = """
import os, signal, sys
from certbot_smtp_dist._internal import pipeline
from certbot_smtp_dist._internal.cli import main

prepare_job = pipeline.prepare_job

def ctrl_c_then(*args, **kwargs):  # a Ctrl-C while the payloads are built, before anything is written ahead
    os.kill(os.getpid(), signal.SIGINT)
    return prepare_job(*args, **kwargs)

pipeline.prepare_job = ctrl_c_then
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [["deploy"], ["retry", "--include-failed"]])
def test_a_blocked_deploy_interrupted_before_anything_is_spooled_stays_blocked(denv: DeployEnv, lineage: LineagePaths,
                                                                              fault_server, argv: list[str]) -> None:
    # The deploy closed the blocked entry as soon as it got past the certificate and credentials, before its
    # payloads were built and its entries written ahead: a Ctrl-C there left nothing at all, `status` read OK, and
    # the certificate was never sent (no renewal calls the hook again for it).
    relay = fault_server()
    denv.write_config({"relay": _target(relay)})
    good_key = lineage.privkey.read_bytes()
    lineage.privkey.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    renewal = {"RENEWED_LINEAGE": str(lineage.live_dir)}
    assert denv.run("deploy", extra_env=renewal).returncode == 65
    lineage.privkey.write_bytes(good_key)
    run = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_PREPARING, *argv], env=denv.env() | renewal,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
    assert relay.connections == 0
    entries = json.loads(denv.run("status", "--json").stdout)["entries"]
    assert [(e["kind"], e["state"]) for e in entries] == [("blocked", "failed")], entries
    assert denv.run("status").returncode == 2  # still an alert, never OK
    assert denv.run("retry", "--include-failed").returncode == 0 and len(relay.messages) == 1


def test_a_renewal_interrupted_before_anything_is_spooled_leaves_a_blocked_entry(denv: DeployEnv,
                                                                                lineage: LineagePaths,
                                                                                fault_server) -> None:
    # A renewal's deploy hook interrupted while its payloads were built: nothing was written ahead, nothing recorded,
    # `status` read OK, and the renewed certificate was never sent (certbot does not call the hook again).
    relay = fault_server()
    denv.write_config({"relay": _target(relay)})
    renewal = {"RENEWED_LINEAGE": str(lineage.live_dir)}
    run = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_PREPARING, "deploy"], env=denv.env() | renewal,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
    entries = json.loads(denv.run("status", "--json").stdout)["entries"]
    assert [(e["kind"], e["state"]) for e in entries] == [("blocked", "failed")], entries
    assert "interrupted" in entries[0]["detail"]
    assert denv.run("status").returncode == 2  # an alert, never OK
    assert denv.run("retry", "--include-failed").returncode == 0 and len(relay.messages) == 1
    assert json.loads(denv.run("status", "--json").stdout)["entries"] == []


_CTRL_C_AFTER_THE_RUN = """
import os, signal, sys
from certbot_smtp_dist._internal import pipeline
from certbot_smtp_dist._internal.cli import main

deliver_all = pipeline.deliver_all

def then_ctrl_c(*args, **kwargs):  # one Ctrl-C once the run's event loop is over, before its outcome is saved
    deliveries = deliver_all(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGINT)
    return deliveries

pipeline.deliver_all = then_ctrl_c
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["deploy", "retry"])
def test_a_ctrl_c_between_the_event_loop_and_the_save_waits_for_the_save(denv: DeployEnv, lineage: LineagePaths,
                                                                         fault_server, command: str) -> None:
    # The event loop handed SIGINT back to Python's default handler as it ended, and the save took it over
    # (runloop.HeldOff) only later: a Ctrl-C between the two (the loop's teardown, the return to the use case)
    # ended the run with the delivered target's entry pending, and `retry` sent the message again.
    if command == "retry":
        busy = fault_server(replies={"greeting": "421 4.3.2 busy"})
        denv.write_config({"relay": _target(busy)}, defaults={"retry_attempts": 1})
        assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode != 0
    relay = fault_server()
    denv.write_config({"relay": _target(relay)})
    argv = ["deploy", "--lineage", str(lineage.live_dir)] if command == "deploy" else ["retry"]
    run = subprocess.run([sys.executable, "-c", _CTRL_C_AFTER_THE_RUN, *argv], env=denv.env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
    assert len(relay.messages) == 1
    entries = json.loads(denv.run("status", "--json").stdout)["entries"]
    assert entries == [], entries
    denv.run("retry", "--include-failed")
    assert len(relay.messages) == 1  # never sent again


_CTRL_C_WHILE_WRITING_AHEAD = """
import os, signal, sys, threading
from certbot_smtp_dist._internal import ledger
from certbot_smtp_dist._internal.cli import main

enter, first = ledger._enter, threading.Lock()

def then_ctrl_c(claim):  # one Ctrl-C once an entry is written ahead, while the others are written
    entered = enter(claim)
    if first.acquire(blocking=False):
        os.kill(os.getpid(), signal.SIGINT)
    return entered

ledger._enter = then_ctrl_c
sys.exit(main(sys.argv[1:]))
"""


def test_a_renewal_interrupted_while_its_entries_are_written_ahead_is_pending_not_blocked(
        denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    # A Ctrl-C while the writer threads wrote the entries ahead ended the write-ahead half done: the run was blocked
    # ("nothing was sent") beside the entries already written, pending, and `retry --include-failed` sent those
    # and then ran the whole deploy again: every target written ahead got the certificate twice.
    relay = fault_server()
    denv.write_config({"one": _target(relay), "two": _target(relay), "three": _target(relay)})
    renewal = {"RENEWED_LINEAGE": str(lineage.live_dir)}
    run = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_WRITING_AHEAD, "deploy"], env=denv.env() | renewal,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
    assert relay.connections == 0
    entries = json.loads(denv.run("status", "--json").stdout)["entries"]
    assert sorted((e["kind"], e["state"], e["target"]) for e in entries) == [
        ("delivery", "pending", name) for name in ("one", "three", "two")], entries
    assert denv.run("retry", "--include-failed").returncode == 0
    assert sorted(m.rcpt_tos for m in relay.messages) == [("a@example.com",)] * 3  # each target once
    assert json.loads(denv.run("status", "--json").stdout)["entries"] == []


def test_a_ctrl_c_while_the_arguments_are_parsed_is_one_line_and_exit_130(denv: DeployEnv) -> None:
    # Before the command ran (the parser built, the arguments read), a Ctrl-C ended the process with a traceback.
    script = ("import os, signal, sys\n"
              "from certbot_smtp_dist._internal import cli\n"
              "build_parser = cli.build_parser\n"
              "def ctrl_c_then(*args, **kwargs):\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    return build_parser(*args, **kwargs)\n"
              "cli.build_parser = ctrl_c_then\n"
              "sys.exit(cli.main())\n")
    run = subprocess.run([sys.executable, "-c", script, "retry"], env=denv.env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout == "" and run.stderr == "certbot-smtp-dist: error: interrupted\n", run.stderr
