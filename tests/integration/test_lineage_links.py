"""The certificate files a deploy mails are never reached through a symbolic link another user can re-point (theirs,
in a sticky directory others can write, like /tmp): it could lead to any lineage root can read, and root would mail
that key to the configured recipients. Real relays on loopback and the real CLI; the link is nobody's
(fs.protected_symlinks=0 here, as on hosts that do not set it, lets root follow it).

Every other reader of a lineage obeys the same rule: `inspect` (whose report, or `--json` read by monitoring, would
otherwise describe a lineage of the link owner's choosing, or a file only root may read) and the certbot plugin's
certificate names (which choose the targets `check` dials)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths, write_lineage

from certbot_smtp_dist._internal import certbot_adapter, lineage, ownership
from certbot_smtp_dist.errors import UnsafePathError

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="another user's link needs root to make")


@pytest.fixture
def bank(tmp_path: Path) -> LineagePaths:
    """Another lineage of root's, in certbot's layout: the operator never asked to mail its key."""
    return write_lineage(tmp_path / "etc" / "live" / "bank.example", names=("bank.example",), archive_symlinks=True)


def their_link(link: Path, target: Path) -> Path:
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    os.chown(link, NOBODY, -1, follow_symlinks=False)
    return link


def spool(denv: DeployEnv) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((denv.state_dir / "spool").glob("*.json"))]


def _hook_run(sticky: Path, bank: LineagePaths, client: str) -> tuple[list[str], dict[str, str], Path]:
    """The arguments and environment of a renewal whose paths run through a link of nobody's, and that link."""
    if client == "certbot":
        link = their_link(sticky / "live", bank.live_dir)
        return [], {"RENEWED_LINEAGE": str(link)}, link
    key = their_link(sticky / "privkey.pem", bank.privkey)  # the key file itself (a certificate is public)
    return (["--name", "test.example.com", "--key", str(key), "--fullchain", str(bank.fullchain)],
            {"CERTBOT_SMTP_DIST_HOOK": client}, key)


@pytest.mark.parametrize("client", ["certbot", "dehydrated"])
def test_a_renewal_through_another_users_link_sends_nothing_and_stays_blocked(
        denv: DeployEnv, relay_factory: Any, sticky: Path, bank: LineagePaths, client: str) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    args, env, link = _hook_run(sticky, bank, client)

    run = denv.run("deploy", "--json", *args, extra_env=env)

    refusal = f"refusing to trust {link}: a symbolic link owned by uid {NOBODY}, in a directory others can write"
    assert run.returncode == 77, run.stdout + run.stderr  # EX_NOPERM: a path not safe to trust
    assert relay.connections == 0 and relay.messages == []
    target = run.target("a")
    assert target["status"] == "failed" and target["error_code"] == "SMTP_PAYLOAD", target
    assert refusal in target["detail"] and "name the path it leads to" in target["detail"], target["detail"]
    assert refusal in run.stderr and "nothing was sent" in run.stderr and "Traceback" not in run.stderr
    [blocked] = spool(denv)  # as for any unusable certificate files of a renewal: `status` alerts
    assert (blocked["kind"], blocked["state"]) == ("blocked", "failed"), blocked
    assert refusal in blocked["last_failure"]["detail"]

    retried = denv.run("retry", "--include-failed")  # the files read again, through the same link: still refused
    assert retried.returncode == 69, retried.stdout + retried.stderr
    assert refusal in retried.stderr and "still blocked" in retried.stderr
    assert relay.connections == 0 and relay.messages == []


def test_a_pending_delivery_whose_lineage_became_another_users_link_is_failed_not_sent(
        denv: DeployEnv, relay_factory: Any, sticky: Path, bank: LineagePaths, tmp_path: Path) -> None:
    """Deployed through root's link in /tmp; before the retry, the link is gone (a /tmp cleaner) and nobody made
    their own under that name, pointing at another lineage. The retry fails the entry naming the link; the other
    entries of the run go on."""
    mine = write_lineage(tmp_path / "etc" / "live" / "test.example.com")
    relay = relay_factory("plaintext", reject={"busy@example.com": "452 4.2.2 Mailbox full"})
    denv.write_config({"a": relay_target(relay, to=["busy@example.com"])})
    (sticky / "live").symlink_to(mine.live_dir)  # root's: followed
    assert denv.run("deploy", "--lineage", str(sticky / "live")).returncode == 75
    (sticky / "live").unlink()
    link = their_link(sticky / "live", bank.live_dir)
    relay.set_reject({})

    retried = denv.run("retry", "--json")

    assert retried.returncode == 69, retried.stdout + retried.stderr
    assert relay.messages == []
    [entry] = spool(denv)
    assert entry["state"] == "failed" and entry["last_failure"]["error_code"] == "SMTP_PAYLOAD", entry
    assert f"{link}: a symbolic link owned by uid {NOBODY}" in entry["last_failure"]["detail"]
    assert "Traceback" not in retried.stderr


def test_the_certbot_plugin_refuses_the_same_link_and_tells_certbot_without_raising(
        denv: DeployEnv, relay_factory: Any, sticky: Path, bank: LineagePaths) -> None:
    """The plugin's deploy_cert paths (certbot's live directory, as certbot names it) go through the same reader."""
    from certbot_smtp_dist._internal import certbot_adapter

    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    link = their_link(sticky / "live", bank.live_dir)
    source = certbot_adapter.lineage_source(str(link / "cert.pem"), str(link / "privkey.pem"),
                                            str(link / "chain.pem"), str(link / "fullchain.pem"), "live")

    shipment = certbot_adapter.ship(certbot_adapter.Options(denv.config, (), denv.state_dir), source)

    assert not shipment.ok and shipment.report is not None and shipment.report.exit_status == 77
    [problem] = shipment.problems()
    assert f"refusing to trust {link}: a symbolic link owned by uid {NOBODY}" in problem, problem
    assert relay.connections == 0 and relay.messages == []
    [blocked] = spool(denv)
    assert (blocked["kind"], blocked["state"]) == ("blocked", "failed"), blocked


def test_a_link_an_acme_user_swaps_in_after_the_check_sends_nothing_and_stays_blocked(
        denv: DeployEnv, relay_factory: Any, bank: LineagePaths, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Root's deploy of an ACME user's plain files (lego run as that user): no link when checked, then the user
    puts one to another lineage in place of the key before the open (their own directory: fs.protected_symlinks
    does not apply). The file opened is not where the check led: refused as the link would have been."""
    from certbot_smtp_dist._internal import lineage

    home = tmp_path / "home" / "acme"
    plain = write_lineage(home / "certificates", names=("acme.example",))
    for path in (home, *home.rglob("*")):
        os.chown(path, NOBODY, -1)
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    checked = lineage.require_steady

    def check_then_swap(source: Any) -> Any:
        result = checked(source)
        plain.privkey.unlink()
        plain.fullchain.unlink()
        their_link(plain.privkey, bank.privkey)
        their_link(plain.fullchain, bank.fullchain)
        return result

    monkeypatch.setattr(lineage, "require_steady", check_then_swap)
    run = denv.run("deploy", "--json", "--key", str(plain.privkey), "--fullchain", str(plain.fullchain),
                   extra_env={"LEGO_CERT_DOMAIN": "acme.example", "CERTBOT_SMTP_DIST_HOOK": "lego"})

    assert run.returncode == 77, run.stdout + run.stderr
    assert relay.connections == 0 and relay.messages == []
    assert f"{plain.fullchain}: led to " in run.target("a")["detail"] and "not to the path checked" in run.stderr
    [blocked] = spool(denv)
    assert (blocked["kind"], blocked["state"]) == ("blocked", "failed"), blocked


def _refusal(source: Any) -> UnsafePathError:
    """What a deploy of `source` refuses it with (lineage.load, deploy's reader)."""
    with pytest.raises(UnsafePathError) as refused:
        lineage.load(source)
    return refused.value


def test_inspect_through_another_users_link_is_refused_as_deploy_refuses_it(
        denv: DeployEnv, sticky: Path, bank: LineagePaths) -> None:
    """Through root's own link in /tmp, inspect reports the lineage; through nobody's, it reports the refusal a
    deploy makes (exit 77, one `untrusted-path` finding) and nothing of the lineage it leads to: no leaf, no chain,
    no verdict of `ok` a monitoring check would believe while every deploy of that path is refused."""
    ca = ["--ca-file", str(bank.root_file)]
    link = sticky / "live"
    link.symlink_to(bank.live_dir)  # root's: followed, as deploy follows it
    ok = denv.run("inspect", "--json", "--lineage", str(link), *ca)
    assert ok.returncode == 0 and json.loads(ok.stdout)["certificate"]["sans"] == ["bank.example"], ok.stdout
    their_link(link, bank.live_dir)

    run = denv.run("inspect", "--json", "--lineage", str(link), *ca)

    doc = json.loads(run.stdout)
    assert run.returncode == doc["exit_status"] == 77, run.stdout + run.stderr
    assert doc["verdict"] == "error" and doc["certificate"] is None and doc["chain"] == [], doc
    [finding] = doc["findings"]
    refused = _refusal(lineage.from_lineage_dir(link))
    assert (finding["severity"], finding["code"]) == ("error", "untrusted-path"), finding
    assert f"{finding['message']}; {finding['fix']}" == refused.refusal, (finding, refused.refusal)
    assert finding["message"].startswith(f"refusing to trust {link}: a symbolic link owned by uid {NOBODY}")
    assert "bank.example" not in json.dumps(doc["certificate"]) and "Traceback" not in run.stderr


def test_inspect_shows_nothing_of_a_file_only_root_may_read_behind_another_users_link(
        denv: DeployEnv, sticky: Path, bank: LineagePaths, tmp_path: Path) -> None:
    """nobody points a --fullchain in /tmp at a file of root's, mode 0600, that holds a certificate and a block
    of something else: read as root, its leaf and its block's label would be printed to whoever sees the report.
    Refused before it is opened; the text report says so in the deploy's words, and nothing else."""
    secret = tmp_path / "etc" / "root-only.pem"
    secret.write_bytes(bank.fullchain.read_bytes() + b"-----BEGIN NAMES SECRET LABEL-----\nAAAA\n"
                       b"-----END NAMES SECRET LABEL-----\n")
    secret.chmod(0o600)
    fullchain = their_link(sticky / "fullchain.pem", secret)

    run = denv.run("inspect", "--fullchain", str(fullchain), "--key", str(bank.privkey))

    assert run.returncode == 77, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert "NAMES SECRET LABEL" not in out and "bank.example" not in out and "leaf:" not in out, out
    refused = _refusal(lineage.from_files(None, str(bank.privkey), None, str(fullchain), None))
    assert run.stdout.splitlines()[1:] == [f"  error:   {refused.refusal.removesuffix('; ' + refused.fix)}",
                                           f"{'':11}fix: {refused.fix}"], run.stdout


def test_inspect_refuses_a_ca_file_behind_another_users_link(
        denv: DeployEnv, sticky: Path, bank: LineagePaths, tmp_path: Path) -> None:
    """--ca-file is held to the rule of the lineage's files: root's own link in /tmp is followed, nobody's is
    refused before anything is read (exit 77, one `untrusted-path` finding in the deploy's words). Followed, it
    would let nobody choose the anchors of the verdict, or print the subject of a CA file only root may read."""
    secret = tmp_path / "etc" / "root-only-ca.pem"
    secret.write_bytes(bank.root_file.read_bytes())
    secret.chmod(0o600)
    link = sticky / "ca.pem"
    link.symlink_to(secret)  # root's: followed
    ok = denv.run("inspect", "--json", "--lineage", str(bank.live_dir), "--ca-file", str(link))
    assert ok.returncode == 0 and json.loads(ok.stdout)["trust_anchor"] == "CN=Test ACME Root X1", ok.stdout
    their_link(link, secret)

    run = denv.run("inspect", "--json", "--lineage", str(bank.live_dir), "--ca-file", str(link))

    doc = json.loads(run.stdout)
    assert run.returncode == doc["exit_status"] == 77, run.stdout + run.stderr
    assert doc["trust_anchor"] is None and doc["certificate"] is None, doc
    [finding] = doc["findings"]
    with pytest.raises(UnsafePathError) as refused:
        ownership.require_steady_links(link)
    assert (finding["severity"], finding["code"]) == ("error", "untrusted-path"), finding
    assert f"{finding['message']}; {finding['fix']}" == refused.value.refusal, (finding, refused.value.refusal)
    assert finding["message"].startswith(f"refusing to trust {link}: a symbolic link owned by uid {NOBODY}")
    text = denv.run("inspect", "--lineage", str(bank.live_dir), "--ca-file", str(link))
    assert text.returncode == 77 and "Test ACME Root" not in text.stdout + text.stderr, text.stdout


def test_inspect_refuses_a_hard_link_to_roots_key_as_deploy_does(
        denv: DeployEnv, sticky: Path, bank: LineagePaths) -> None:
    """Root's key file hard-linked into /tmp by anyone (fs.protected_hardlinks=0): a second name of a file they
    cannot read, refused by deploy's reader after the read (ownership.require_no_borrowed_name), and by inspect."""
    key = sticky / "privkey.pem"
    os.link(bank.privkey.resolve(), key)

    run = denv.run("inspect", "--json", "--fullchain", str(bank.fullchain), "--key", str(key))

    doc = json.loads(run.stdout)
    assert run.returncode == 77 and doc["certificate"] is None, run.stdout + run.stderr
    [finding] = doc["findings"]
    assert finding["code"] == "untrusted-path" and "has 2 names" in finding["message"], finding


def test_the_plugins_certificate_names_are_not_read_through_another_users_link(
        sticky: Path, bank: LineagePaths, caplog: pytest.LogCaptureFixture) -> None:
    """certbot_adapter.certificate_names chooses the targets `check` dials on install/run/reconfigure: through
    nobody's link it would be nobody's choice. None are read (then every selected target is checked, or those
    certbot's own -d/--cert-name select), and the log says why in the deploy's words (the deploy refuses too)."""
    link = sticky / "live"
    link.symlink_to(bank.live_dir)  # root's: its names are read
    assert "bank.example" in certbot_adapter.certificate_names(lineage.from_lineage_dir(link))
    their_link(link, bank.live_dir)
    source = lineage.from_lineage_dir(link)

    with caplog.at_level(logging.WARNING, logger="certbot_smtp_dist"):
        names = certbot_adapter.certificate_names(source)

    assert names == ()
    [record] = [r for r in caplog.records if "refusing to trust" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage().endswith(_refusal(source).refusal), record.getMessage()


def test_the_refusal_of_another_users_link_is_one_printable_line_wherever_the_link_leads(
        denv: DeployEnv, relay_factory: Any, sticky: Path, tmp_path: Path) -> None:
    """The refusal names where the link leads, and its owner chose that: a directory name with a line break and a
    terminal escape. The ERROR line, the blocked entry `status` and `history` show stay one printable line each."""
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    forged = "certbot-smtp-dist: INFO: a: delivered to 1 recipient(s)"
    theirs = write_lineage(tmp_path / f"x\n{forged}\x1b[2J" / "live" / "bank.example", names=("bank.example",))
    link = their_link(sticky / "live", theirs.live_dir)

    run = denv.run_process("deploy", extra_env={"RENEWED_LINEAGE": str(link)})

    assert run.returncode == 77, run.stdout + run.stderr
    assert relay.connections == 0 and f"refusing to trust {link}: a symbolic link owned by uid" in run.stderr
    shown = [run.stderr, denv.run_process("status").stdout, denv.run_process("history", "--all").stdout]
    assert "refusing to trust" in shown[1] and "refusing to trust" in shown[2], shown
    for text in shown:
        for line in text.splitlines():
            assert line.isprintable() and not line.startswith(forged), line
