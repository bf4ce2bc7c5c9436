"""A private Debian exim4 relay on loopback for tests, run from its unpacked package (never installed).

exim4 and Postfix both provide ``mail-transport-agent`` and conflict as Debian packages, and the suite needs
Postfix installed; so ``exim4-daemon-light`` is fetched with ``apt-get download`` and unpacked into a cache
(:mod:`support.debunpack`), and its ``exim4`` binary runs from there with a private configuration (``-C``), spool,
log and Maildir under a temporary directory, on ``127.0.0.1:PORT`` (a free port above 20000), stopped by PID.

exim looks up its compiled-in user ``Debian-exim`` before it reads any configuration. The machine's users are
never changed: the daemon runs in a private mount namespace (``unshare --mount``) whose ``/etc/passwd`` and
``/etc/group`` are bind-mounted files naming root and ``Debian-exim`` alone (``Debian-exim`` gets the uid of
``nobody``). Because of ``-C``, exim gives up root at once ("exim user lost privilege for using -C option") and
runs as that user throughout, which is why everything it writes belongs to ``nobody``.

The relay (:class:`EximRelay`) advertises STARTTLS with a certificate from the test PKI, answers MAIL before TLS
with 530 5.7.0, advertises AUTH PLAIN and LOGIN only once TLS is up, relays for authenticated clients only (with
``auth="required"``), and delivers every accepted message into one Maildir the test reads; nothing leaves it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

from . import mta
from .debunpack import Unavailable, Unpacked, unpacked
from .pki import ServerCert

__all__ = ["AuthPolicy", "Delivered", "EximError", "EximRelay", "Unavailable", "install", "running"]

DOMAIN = "archive.test"
PACKAGE = "exim4-daemon-light"
BINARY = "usr/sbin/exim4"
EXIM_USER = "Debian-exim"  # compiled into Debian's binary (exim -bV: "Configure owner", the exim_user lookup)
USER = "certbot-relay"
#: The libraries of exim4-daemon-light's Depends (Debian 12), by the soname ldd reports missing.
LIBRARIES = {
    "libcrypt.so.1": "libcrypt1",
    "libdb-5.3.so": "libdb5.3",
    "libgnutls-dane.so.0": "libgnutls-dane0",
    "libgnutls.so.30": "libgnutls30",
    "libidn.so.12": "libidn12",
    "libidn2.so.0": "libidn2-0",
    "libnsl.so.2": "libnsl2",
    "libpcre2-8.so.0": "libpcre2-8-0",
}
_NAMESPACE = 'mount --bind "$0" /etc/passwd && mount --bind "$1" /etc/group && shift && exec "$@"'
_START_TIMEOUT = 15.0
_STOP_GRACE = 5.0
_LOG_TAIL = 40

#: ``required``: RCPT needs AUTH (a submission relay); ``optional``: AUTH offered, unauthenticated clients may
#: mail @archive.test only (an MX); ``off``: no AUTH offered at all, mail for @archive.test accepted.
AuthPolicy = Literal["required", "optional", "off"]


class EximError(mta.MtaError):
    """The test exim failed (to start, stop or deliver); the message ends with its log."""


def install() -> Unpacked:
    """exim4-daemon-light unpacked and runnable here, or :class:`Unavailable` saying why not."""
    if os.geteuid() != 0:
        raise Unavailable("a private exim4 needs root (a private mount namespace supplies its Debian-exim user)")
    if shutil.which("unshare") is None:
        raise Unavailable("unshare not found (apt-get install util-linux)")
    try:
        pwd.getpwnam("nobody")
    except KeyError as exc:
        raise Unavailable("system user 'nobody' does not exist") from exc
    return unpacked(PACKAGE, [PACKAGE], binary=BINARY, libraries=LIBRARIES)


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message file in the Maildir, as exim's appendfile wrote it (LF line ends, trace headers prepended)."""

    path: Path
    raw: bytes

    def parse(self) -> EmailMessage:
        return mta.parse_message(self.raw)

    @property
    def envelope_to(self) -> tuple[str, ...]:
        """The RCPT TO addresses this copy was delivered for (the ``Envelope-to`` header exim prepends)."""
        value = self.parse()["Envelope-to"]
        return tuple(a.strip() for a in str(value or "").split(",") if a.strip())


@dataclass(frozen=True, slots=True)
class EximRelay:
    """A running private exim: where to dial, whom to trust, how to log in, where messages land."""

    host: str
    port: int
    ca_file: Path
    user: str
    password: str
    maildir: Path
    root: Path
    auth: AuthPolicy
    version: str  # the Debian package version, e.g. 4.96-15+deb12u11

    def address(self, local_part: str) -> str:
        return f"{local_part}@{DOMAIN}"

    @property
    def mainlog(self) -> Path:
        return self.root / "log" / "mainlog"

    def messages(self) -> list[Delivered]:
        """Every delivered message, oldest first."""
        found = [p for sub in ("new", "cur") if (self.maildir / sub).is_dir() for p in (self.maildir / sub).iterdir()]
        ordered = sorted((p for p in found if p.is_file()), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [Delivered(p, p.read_bytes()) for p in ordered]

    def queued(self) -> list[str]:
        """Ids of messages still in the spool (accepted, not yet delivered)."""
        inputs = self.root / "spool" / "input"
        return sorted(p.name[:-2] for p in inputs.rglob("*-H")) if inputs.is_dir() else []

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[Delivered]:
        """The delivered messages once there are at least ``count`` and the spool is empty; EximError otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.messages()) < count or self.queued():
            if time.monotonic() >= deadline:
                raise self.error(f"expected {count} delivered message(s) within {timeout:.0f}s, found "
                                 f"{len(self.messages())}; still queued: {self.queued()}")
            time.sleep(0.05)
        return self.messages()

    def log(self) -> str:
        """The main log since the last :meth:`clear` (exim appends with O_APPEND, so truncating it is safe)."""
        try:
            return self.mainlog.read_text(errors="replace")
        except OSError:
            return ""

    def clear(self, timeout: float = 10.0) -> None:
        """Forget earlier tests: wait (bounded) for the spool to drain, empty the Maildir and the log."""
        deadline = time.monotonic() + timeout
        while self.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        for item in self.messages():
            item.path.unlink()
        if self.mainlog.exists():
            os.truncate(self.mainlog, 0)

    def error(self, what: str) -> EximError:
        tail = "\n".join(self.log().splitlines()[-_LOG_TAIL:])
        return EximError(f"{what}\n--- last lines of {self.mainlog} ---\n{tail or '(empty)'}")


# ---------------------------------------------------------------------------- configuration


def _acls(auth: AuthPolicy) -> str:
    # RFC 3207 §4: a server requiring TLS answers MAIL with 530 5.7.0 until STARTTLS. An ACL message may
    # replace deny's 550 with another 5xx code (exim spec, "ACL return codes").
    mail = ("acl_mail:\n"
            "  deny    !encrypted = *\n"
            "          message = 530 5.7.0 Must issue a STARTTLS command first\n"
            "  accept\n")
    if auth == "required":
        # RFC 4954 §6: 530 5.7.0 Authentication required. An authenticated client may relay anywhere; every
        # address is captured into the Maildir below.
        rcpt = ("acl_rcpt:\n"
                "  deny    !authenticated = *\n"
                "          message = 530 5.7.0 Authentication required\n"
                "  accept\n")
    else:
        rcpt = ("acl_rcpt:\n"
                "  accept  authenticated = *\n"
                "  accept  domains = +local_domains\n"
                "  deny    message = 550 5.7.1 Relaying denied\n")
    return f"begin acl\n\n{mail}\n{rcpt}"


def _matches(user_var: str, password_var: str, user: str, password: str) -> str:
    """An exim condition true when both variables equal the fixed test credential (hex and a plain name)."""
    return "${if and {{eq{" + user_var + "}{" + user + "}}{eq{" + password_var + "}{" + password + "}}}}"


def _authenticators(user: str, password: str) -> str:
    # RFC 4954 §4 / RFC 3207 §6: no credentials in clear, so neither mechanism is advertised (or accepted; exim
    # refuses AUTH with a mechanism whose advertise condition is false) before TLS.
    return (
        "begin authenticators\n\n"
        "PLAIN:\n"
        "  driver = plaintext\n"
        "  public_name = PLAIN\n"
        "  server_advertise_condition = ${if def:tls_in_cipher}\n"
        "  server_prompts = :\n"  # RFC 4616: authzid NUL authcid NUL passwd -> $auth1 $auth2 $auth3
        f"  server_condition = {_matches('$auth2', '$auth3', user, password)}\n"
        "  server_set_id = $auth2\n\n"
        "LOGIN:\n"
        "  driver = plaintext\n"
        "  public_name = LOGIN\n"
        "  server_advertise_condition = ${if def:tls_in_cipher}\n"
        "  server_prompts = Username:: : Password::\n"
        f"  server_condition = {_matches('$auth1', '$auth2', user, password)}\n"
        "  server_set_id = $auth1\n"
    )


def _config(root: Path, binary: Path, port: int, auth: AuthPolicy, user: str, password: str) -> str:
    """The whole configuration: nothing comes from Debian's /etc/exim4, nothing is looked up in DNS."""
    main = {
        "keep_environment": "LD_LIBRARY_PATH",  # exim re-execs itself to deliver; the libraries must stay found
        "exim_path": binary,
        "primary_hostname": f"mx.{DOMAIN}",  # the host's own name may not be a FQDN
        "qualify_domain": DOMAIN,
        "spool_directory": root / "spool",
        "log_file_path": root / "log" / "%slog",
        "pid_file_path": root / "spool" / "exim-daemon.pid",
        "daemon_smtp_ports": port,
        "local_interfaces": f"<; {mta.LOOPBACK}",
        "host_lookup": "",
        "rfc1413_hosts": "",  # no ident callbacks
        "smtp_banner": f"mx.{DOMAIN} ESMTP Exim $version_number (certbot-smtp-dist test instance) $tod_full",
        "tls_advertise_hosts": "*",
        "tls_certificate": root / "conf" / "relay.crt",
        "tls_privatekey": root / "conf" / "relay.key",
        "acl_smtp_mail": "acl_mail",
        "acl_smtp_rcpt": "acl_rcpt",
        "log_selector": "+smtp_connection +tls_cipher +tls_peerdn +received_recipients +smtp_protocol_error "
                        "+smtp_syntax_error",
    }
    text = "".join(f"{key} = {value}\n" for key, value in main.items())
    text += f"domainlist local_domains = {DOMAIN}\n\n"
    text += _acls(auth)
    text += (
        "\nbegin routers\n\n"
        "capture:\n  driver = accept\n  transport = capture\n\n"
        "begin transports\n\n"
        "capture:\n"
        "  driver = appendfile\n"
        f"  directory = {root / 'mail'}\n"  # a fixed path: exim refuses file names built from tainted addresses
        "  maildir_format\n"
        "  create_directory\n"
        "  envelope_to_add\n"
        "  return_path_add\n"
        "  delivery_date_add\n"
        f"  user = {EXIM_USER}\n"
        "  mode = 0600\n\n"
    )
    if auth != "off":
        text += _authenticators(user, password)
    return text


# ---------------------------------------------------------------------------- processes


def _instance_pids(config: Path) -> list[int]:
    """This instance's processes: the daemon, its forks and its re-execs all carry ``-C CONFIG`` in argv."""
    marker = str(config).encode()
    return mta.proc_pids("cmdline", lambda cmdline: marker in cmdline.split(b"\0"))


def _stop(process: subprocess.Popen[bytes], config: Path) -> None:
    """SIGTERM the daemon by its PID, wait (bounded), then SIGKILL it and whatever of the instance is left."""
    mta.terminate(process, _STOP_GRACE)
    mta.kill_leftovers(lambda: _instance_pids(config), _STOP_GRACE)  # connection and delivery processes finishing


def _lay_out(root: Path, served: ServerCert) -> None:
    nobody = pwd.getpwnam("nobody")
    conf = root / "conf"
    conf.mkdir(mode=0o750)
    os.chown(conf, 0, nobody.pw_gid)  # exim re-reads its configuration (which holds the password) as nobody
    for private in ("spool", "log", "mail"):
        (root / private).mkdir(mode=0o700)
        os.chown(root / private, nobody.pw_uid, nobody.pw_gid)
    shutil.copyfile(served.cert_file, conf / "relay.crt")
    fd = os.open(conf / "relay.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(served.key_file.read_bytes())
    os.chown(conf / "relay.key", nobody.pw_uid, nobody.pw_gid)  # read by exim as Debian-exim
    (conf / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\n"
                                 f"{EXIM_USER}:x:{nobody.pw_uid}:{nobody.pw_gid}::/nonexistent:/usr/sbin/nologin\n")
    (conf / "group").write_text(f"root:x:0:\n{EXIM_USER}:x:{nobody.pw_gid}:\n")


def _write_config(path: Path, text: str) -> None:
    """Owned by root, readable by exim's group only: exim refuses a configuration others can write."""
    path.write_text(text)
    os.chown(path, 0, pwd.getpwnam("nobody").pw_gid)
    path.chmod(0o640)


def _spawn(install: Unpacked, root: Path) -> subprocess.Popen[bytes]:
    """``exim4 -C CONFIG -bdf`` (daemon, foreground) in its namespace; unshare and sh exec, so the PID is exim's."""
    conf = root / "conf"
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _NAMESPACE,
            str(conf / "passwd"), str(conf / "group"), str(install.path(BINARY)), "-C", str(conf / "exim.conf"), "-bdf"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": install.library_path}
    with (root / "daemon.out").open("ab") as out:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _start(install: Unpacked, relay: EximRelay) -> subprocess.Popen[bytes]:
    """The daemon, answering on ``relay.port``; EximError (with its output) if it exits or stays silent."""
    process = _spawn(install, relay.root)
    if not mta.wait_for_greeting(relay.port, _START_TIMEOUT, process):
        _stop(process, relay.root / "conf" / "exim.conf")
        output = (relay.root / "daemon.out").read_text(errors="replace")
        raise relay.error(f"exim did not answer on {relay.host}:{relay.port} (exit {process.returncode}):\n"
                          f"{output}")
    return process


def _launch(package: Unpacked, root: Path, ca_file: Path, auth: AuthPolicy,
            port: int) -> tuple[EximRelay, subprocess.Popen[bytes]]:
    """Configure the instance for ``port`` with a fresh password and start it."""
    relay = EximRelay(mta.LOOPBACK, port, ca_file, USER, secrets.token_hex(12), root / "mail", root, auth,
                      package.version)
    _write_config(root / "conf" / "exim.conf", _config(root, package.path(BINARY), port, auth, relay.user,
                                                        relay.password))
    return relay, _start(package, relay)


@contextmanager
def running(served: ServerCert, ca_file: Path, *, auth: AuthPolicy = "required",
            package: Unpacked | None = None) -> Iterator[EximRelay]:
    """A private exim serving ``served`` (trusted through ``ca_file``) for the ``with`` block; stopped by PID after.

    ``package`` is :func:`install`'s result (called here when not given). Raises :class:`Unavailable` when exim
    cannot run here, :class:`EximError` when it fails to start.
    """
    package = package or install()
    # Not under pytest's tmp dirs: those are 0700 and root's, but exim runs as nobody and must traverse them.
    root = Path(tempfile.mkdtemp(prefix="certbot-smtp-dist-exim-"))
    root.chmod(0o711)
    process: subprocess.Popen[bytes] | None = None
    try:
        _lay_out(root, served)
        relay, process = mta.on_free_port(lambda port: _launch(package, root, Path(ca_file), auth, port),
                                      lambda exc: "Address already in use" in str(exc))
        yield relay
    finally:
        if process is not None:
            _stop(process, root / "conf" / "exim.conf")
        shutil.rmtree(root, ignore_errors=True)
