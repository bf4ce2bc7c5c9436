"""A private Debian Postfix instance on loopback for tests: its own config, queue, Maildirs and log.

The instance shares nothing with a system Postfix except the binaries and ``/etc/postfix/postfix-files`` (Debian's
``meta_directory``): it has its own ``main.cf``/``master.cf``, queue and data directories, listens only on
``127.0.0.1:PORT`` (a free port above 20000), delivers ``@archive.test`` into Maildirs under its directory, relays
nothing, sends nothing out, and logs to its own ``maillog`` file. Postfix's master starts as root and drops to
``mail_owner``, so the instance needs root (see :func:`unavailable`).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from . import mta

DOMAIN = "archive.test"
DEFAULT_MAILBOXES = ("pki", "audit", "hidden")
_VIRTUAL_USER = "nobody"  # owns the Maildirs; virtual(8) refuses uids below virtual_minimum_uid (100)
_COMMAND_TIMEOUT = 30.0
_START_TIMEOUT = 15.0
_STOP_GRACE = 5.0
_LOG_TAIL = 60


class PostfixError(mta.MtaError):
    """The test Postfix instance failed (to start, stop, answer or deliver); the message ends with its log."""


def find_command(name: str) -> str | None:
    """A Postfix command: /usr/sbin is not on a non-root PATH, so look there too."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin") / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def unavailable() -> str | None:
    """Why a private instance cannot run here, or ``None`` when it can."""
    missing = [c for c in ("postfix", "postconf", "postqueue") if find_command(c) is None]
    if missing:
        return f"Postfix is not installed ({', '.join(missing)} not found; apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (master(8) starts as root and drops to mail_owner)"
    for user in ("postfix", _VIRTUAL_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"system user {user!r} does not exist"
    return None


Delivered = mta.Delivered  # one message file in a mailbox (Maildir or the mailer's directory)


def _main_cf(root: Path, conf: Path, *, domain: str, uid: int, gid: int) -> str:
    """main.cf: every setting the instance relies on, so nothing comes from Postfix's or Debian's defaults."""
    settings = {
        # Avoid the "backwards-compatible default" warnings and behaviours of compatibility_level 0.
        "compatibility_level": "3.6",
        "queue_directory": root / "queue",
        "data_directory": root / "data",
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": f"mx.{domain}",  # the host's own name may not be a FQDN (Postfix refuses to start then)
        "mydomain": domain,
        "myorigin": "$myhostname",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.1/32",  # listed explicitly: no interface discovery; never used to permit relaying
        "smtpd_peername_lookup": "no",  # no DNS in the test's path
        "smtpd_banner": "$myhostname ESMTP Postfix (certbot-smtp-dist test instance)",
        "biff": "no",
        # Nothing is local and nothing leaves: only the virtual domain below delivers.
        "mydestination": "",
        "alias_maps": "",
        "alias_database": "",
        "local_transport": "error:5.1.1 local delivery is disabled in this test instance",
        "default_transport": "error:5.7.1 outbound mail is disabled in this test instance",
        "relay_transport": "error:5.7.1 outbound mail is disabled in this test instance",
        "relayhost": "",
        "smtpd_relay_restrictions": "reject_unauth_destination",  # Debian's default permits mynetworks
        # Mailboxes without system users. Recipients not in virtual_mailbox_maps are refused at RCPT with
        # "550 5.1.1 ... User unknown in virtual mailbox table" (smtpd_reject_unlisted_recipient, default yes).
        "virtual_mailbox_domains": domain,
        "virtual_mailbox_base": root / "mail",
        "virtual_mailbox_maps": f"texthash:{conf / 'vmailbox'}",  # texthash: no postmap, no .db file
        "virtual_uid_maps": f"static:{uid}",
        "virtual_gid_maps": f"static:{gid}",
        "virtual_transport": "virtual",
        # RFC 3207 §4: with "encrypt", MAIL before STARTTLS gets "530 5.7.0 Must issue a STARTTLS command first".
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_chain_files": f"{conf / 'smtpd.key'}, {conf / 'smtpd.crt'}",
        "smtpd_tls_received_header": "yes",  # "(using TLSv1.3 with cipher ...)" in the Received header
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_session_cache_database": "",
        # Postfix >= 3.4 logs through postlogd(8) (the "postlog" service in master.cf) into this file instead of
        # syslog; the file must lie under one of maillog_file_prefixes (default "/var, /dev/stdout").
        "maillog_file": root / "maillog",
        "maillog_file_prefixes": root,
        # Quick retries if a delivery is ever deferred; warnings about delayed mail are noise here.
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "delay_warning_time": "0h",
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def _master_cf(port: int) -> str:
    """master.cf: one SMTP listener on 127.0.0.1:PORT and the services it needs, none chrooted.

    Debian's master.cf chroots most daemons into the queue directory (and its init script copies /etc files
    there); a private instance has no such copies, so nothing runs chrooted.
    """
    services = [
        # service            type        private unpriv chroot wakeup maxproc command
        (f"{mta.LOOPBACK}:{port}", "inet", "n", "-", "n", "-", "-", "smtpd"),
        ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
        ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
        ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
        ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
        ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
        ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
        ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
        ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
        ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
        ("error", "unix", "-", "-", "n", "-", "-", "error"),
        ("retry", "unix", "-", "-", "n", "-", "-", "error"),
        ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
        ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
        ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
        ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
        ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
    ]
    return "".join(" ".join(f"{field:<10}" for field in row).rstrip() + "\n" for row in services)


class Postfix:
    """A private Postfix instance; use as a context manager (or call :meth:`start` / :meth:`stop`).

    ``cert_file``/``key_file`` are copied into the instance's config directory and served for STARTTLS, which is
    required. ``mailboxes`` are the local parts that exist at ``@domain``; every other recipient gets 550 5.1.1.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        domain: str = DOMAIN,
        mailboxes: Iterable[str] = DEFAULT_MAILBOXES,
        parent: Path | None = None,
    ) -> None:
        self.domain = domain
        self.mailboxes = tuple(mailboxes)
        self._cert_file = Path(cert_file)
        self._key_file = Path(key_file)
        self._parent = parent
        self.host = mta.LOOPBACK
        self.port = 0
        self._root: Path | None = None
        self._log_mark = 0
        self._running = False

    # ------------------------------------------------------------------ layout

    @property
    def root(self) -> Path:
        if self._root is None:
            raise PostfixError("the instance has not been started")
        return self._root

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def address(self, local_part: str) -> str:
        return f"{local_part}@{self.domain}"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Postfix:
        # Not under pytest's tmp dirs: those are 0700 and root's, but virtual(8) writes the Maildirs as an
        # unprivileged user that must traverse every directory above them.
        self._root = Path(tempfile.mkdtemp(prefix="certbot-smtp-dist-postfix-", dir=self._parent))
        self.root.chmod(0o711)
        try:
            self._lay_out()
            mta.on_free_port(self._start_on, lambda _: "Address already in use" in self.log())
            self._running = True
            self._wait_for_port()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_on(self, port: int) -> None:
        self.port = port
        (self.config_dir / "master.cf").write_text(_master_cf(port))
        # postfix-script's start runs the integrity checks and `post-install create-missing`, which makes the
        # queue subdirectories with Postfix's ownership and modes.
        result = self._run("postfix", "start", check=False)
        if result.returncode != 0:
            raise self._error(f"postfix start failed (exit {result.returncode})", result.stderr)

    def stop(self) -> None:
        """Stop the instance, kill whatever of it is left, remove its directory. Idempotent."""
        if self._root is None:
            return
        try:
            if self._running:
                self._run("postfix", "stop", check=False)
            mta.kill_leftovers(self._instance_pids, _STOP_GRACE)
        finally:
            self._running = False
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _lay_out(self) -> None:
        nobody, owner = pwd.getpwnam(_VIRTUAL_USER), pwd.getpwnam("postfix")
        for directory in (self.config_dir, self.queue_dir, self.root / "data"):
            directory.mkdir(mode=0o755)
        os.chown(self.root / "data", owner.pw_uid, owner.pw_gid)  # master.lock, verify/scache databases
        self.mail_dir.mkdir(mode=0o700)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        conf = self.config_dir
        shutil.copyfile(self._cert_file, conf / "smtpd.crt")
        fd = os.open(conf / "smtpd.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self._key_file.read_bytes())
        # texthash map: "recipient  maildir/" (the trailing slash selects Maildir format in virtual(8)).
        (conf / "vmailbox").write_text("".join(f"{self.address(box)} {box}/\n" for box in self.mailboxes))
        (conf / "main.cf").write_text(
            _main_cf(self.root, conf, domain=self.domain, uid=nobody.pw_uid, gid=nobody.pw_gid)
        )
        (conf / "master.cf").write_text(_master_cf(0))
        self.maillog.touch(mode=0o644)

    def _wait_for_port(self) -> None:
        if not mta.wait_for_greeting(self.port, _START_TIMEOUT):
            raise self._error(f"Postfix did not answer on {self.host}:{self.port} within {_START_TIMEOUT:.0f}s")

    def _instance_pids(self) -> list[int]:
        """Processes of this instance: Postfix passes MAIL_CONFIG (import_environment) to every daemon."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        return mta.proc_pids("environ", lambda environ: marker in environ.split(b"\0"))

    # ------------------------------------------------------------------ commands

    def _run(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        path = find_command(command)
        if path is None:
            raise PostfixError(f"{command} not found")
        argv = [path, "-c", str(self.config_dir), *args]
        env = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, env=env,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise self._error(f"{' '.join(argv)} did not finish within {_COMMAND_TIMEOUT:.0f}s") from exc
        if check and result.returncode != 0:
            raise self._error(f"{' '.join(argv)} failed (exit {result.returncode})", result.stdout + result.stderr)
        return result

    def flush(self) -> None:
        """``postqueue -f``: attempt every queued message now."""
        self._run("postqueue", "-f")

    def queue(self) -> list[dict[str, object]]:
        """``postqueue -j``: one record per queued message (queue_id, queue_name, sender, recipients...)."""
        out = self._run("postqueue", "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # ------------------------------------------------------------------ mailboxes and log

    def delivered(self, mailbox: str | None = None) -> list[Delivered]:
        """Messages in the Maildirs (all of them, or one mailbox's), oldest first."""
        boxes = [mailbox] if mailbox is not None else list(self.mailboxes)
        found = []
        for box in boxes:
            for sub in ("new", "cur"):
                directory = self.mail_dir / box / sub
                if directory.is_dir():
                    found += [Delivered(box, p, p.read_bytes()) for p in directory.iterdir() if p.is_file()]
        return sorted(found, key=lambda d: (d.path.stat().st_mtime_ns, d.path.name))

    def wait_for_delivery(self, count: int, timeout: float = 10.0) -> list[Delivered]:
        """Wait until the Maildirs hold at least ``count`` messages and the queue has drained.

        virtual(8) writes the Maildir file before qmgr(8) removes the queue file, so both are awaited; on timeout
        the error carries the queue and the log.
        """
        deadline = time.monotonic() + timeout
        while len(found := self.delivered()) < count:
            if time.monotonic() >= deadline:
                raise self._error(
                    f"expected {count} delivered message(s) within {timeout:.0f}s, found {len(found)}",
                    f"postqueue -j:\n{json.dumps(self.queue(), indent=1)}",
                )
            time.sleep(0.05)
        self.wait_for_empty_queue(max(deadline - time.monotonic(), 1.0))
        return self.delivered()

    def wait_for_empty_queue(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while queued := self.queue():
            if time.monotonic() >= deadline:
                raise self._error(f"the queue did not drain within {timeout:.0f}s", json.dumps(queued, indent=1))
            time.sleep(0.05)

    def clear(self) -> None:
        """Forget earlier tests: wait for the queue to drain, empty the Maildirs, make :meth:`log` start here."""
        self.wait_for_empty_queue()
        for item in self.delivered():
            item.path.unlink()
        self._log_mark = self.maillog.stat().st_size

    def log(self, *, everything: bool = False) -> str:
        """The instance's maillog since the last :meth:`clear` (or all of it)."""
        try:
            with self.maillog.open("rb") as handle:
                handle.seek(0 if everything else self._log_mark)
                return handle.read().decode("utf-8", "replace")
        except (OSError, PostfixError):
            return ""

    def _error(self, what: str, detail: str = "") -> PostfixError:
        tail = "\n".join(self.log(everything=True).splitlines()[-_LOG_TAIL:]) if self._root else ""
        parts = [what]
        if detail.strip():
            parts.append(detail.strip())
        parts.append(f"--- last lines of {self.maillog if self._root else 'maillog'} ---\n{tail or '(empty)'}")
        return PostfixError("\n".join(parts))
