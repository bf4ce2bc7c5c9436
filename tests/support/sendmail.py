"""A private Debian sendmail 8.17 on loopback for tests: STARTTLS, Cyrus SASL AUTH PLAIN/LOGIN, one file per message.

sendmail-bin conflicts with the installed Postfix (both provide ``mail-transport-agent``), so it is never installed:
:mod:`support.debunpack` downloads and unpacks it outside the checkout. Each instance has its own ``sendmail.cf``
(built with m4 from sendmail-cf's ``cf.m4``), queue, SASL database and message directory, listens only on
``127.0.0.1:PORT``, and runs in private mount, UTS and PID namespaces (``unshare``) where

* the host name is ``mx.archive.test`` and a private ``/etc/hosts`` names it: sendmail canonicalises its own name at
  start-up and sleeps 60 s when that fails; a private ``resolv.conf`` keeps every other lookup off the network;
* Cyrus SASL's compiled-in plugin and config directory holds copies of the PLAIN, LOGIN and sasldb plugins and a
  private ``Sendmail.conf`` (sendmail clears its environment, so ``SASL_CONF_PATH`` cannot point elsewhere);
* the daemon is PID 1, so ending it ends every process of the instance: it is stopped by its PID (unshare's child),
  and dies with the test process too (``setpriv --pdeathsig`` on unshare, ``unshare --kill-child``).

Recipients ``LOCALPART@archive.test`` (one atom) are delivered by a prog mailer into ``message_dir``, one file per
message and recipient; any other recipient is refused at RCPT and nothing ever leaves. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support import ci, mta
from support.debunpack import Unavailable, Unpacked, unpacked

DOMAIN = "archive.test"
HOSTNAME = f"mx.{DOMAIN}"
USER = "relay-user"
#: ``apt-get download`` set: the MTA and the m4 files its config is built from.
PACKAGES = ("sendmail-bin", "sendmail-cf")
#: The libraries of sendmail-bin's Depends (Debian 12), by the soname ldd reports missing; Postfix and sasl2-bin
#: already pull in most of them, liblockfile1 and libwrap0 usually not.
LIBRARIES = {
    "libdb-5.3.so": "libdb5.3",
    "liblber-2.5.so.0": "libldap-2.5-0",
    "libldap-2.5.so.0": "libldap-2.5-0",
    "liblockfile.so.1": "liblockfile1",
    "libnsl.so.2": "libnsl2",
    "libsasl2.so.2": "libsasl2-2",
    "libwrap.so.0": "libwrap0",
}
_BINARY = Path("usr/libexec/sendmail/sendmail")
_CF_DIR = Path("usr/share/sendmail/cf")
_SASL_PLUGINS = ("libplain.so", "liblogin.so", "libsasldb.so")
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_COMMAND_TIMEOUT = 30.0


class SendmailError(mta.MtaError):
    """The test sendmail failed (to be configured, started or to deliver); the message ends with its output."""


Delivered = mta.Delivered  # one message file in a mailbox (Maildir or the mailer's directory)


@dataclass(frozen=True, slots=True)
class SendmailRelay:
    """A running instance, as a client sees it: where to dial, what to trust, how to log in, what arrived."""

    host: str
    port: int
    ca_file: Path
    user: str
    password: str = field(repr=False)
    message_dir: Path
    version: str
    domain: str = DOMAIN

    def address(self, local_part: str) -> str:
        return f"{local_part}@{self.domain}"

    def delivered(self, mailbox: str | None = None) -> list[Delivered]:
        """Messages written so far (all, or one local part's), oldest first; files being written are skipped."""
        found = [
            Delivered(p.name.split(".", 1)[0], p, p.read_bytes())
            for p in self.message_dir.iterdir()
            if p.is_file() and not p.name.startswith(".")
        ]
        found = [d for d in found if mailbox is None or d.mailbox == mailbox]
        return sorted(found, key=lambda d: (d.path.stat().st_mtime_ns, d.path.name))

    def wait_for_delivery(self, count: int, timeout: float = 10.0) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while len(found := self.delivered()) < count:
            if time.monotonic() >= deadline:
                raise SendmailError(f"expected {count} delivered message(s) within {timeout:.0f}s, found {len(found)}")
            time.sleep(0.05)
        return found

    def clear(self) -> None:
        """Forget what earlier tests delivered."""
        for item in self.delivered():
            item.path.unlink()


def _find(name: str) -> str | None:
    """A command, looked up in /usr/sbin too (not on a non-root PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _sasl_plugin_dir() -> Path | None:
    """libsasl2's compiled-in plugin directory (multiarch), if it holds the plugins the instance needs."""
    for directory in sorted(Path("/usr/lib").glob("*/sasl2")):
        if all((directory / plugin).exists() for plugin in _SASL_PLUGINS):
            return directory
    return None


def unavailable() -> str | None:
    """Why a private instance cannot run here, or ``None`` when it can (the package download comes later)."""
    if os.geteuid() != 0:
        return "a private sendmail needs root (namespaces, bind mounts, and sendmail itself)"
    hints = {"unshare": "util-linux", "setpriv": "util-linux", "m4": "m4", "saslpasswd2": "sasl2-bin"}
    missing = [f"{cmd} (apt-get install {pkg})" for cmd, pkg in hints.items() if _find(cmd) is None]
    if missing:
        return "not found: " + ", ".join(missing)
    if _sasl_plugin_dir() is None:
        return f"Cyrus SASL plugins {', '.join(_SASL_PLUGINS)} not found (apt-get install libsasl2-modules)"
    return None


def _prefix() -> Unpacked:
    """sendmail-bin and sendmail-cf unpacked with the libraries the machine lacks, or :class:`Unavailable`."""
    return unpacked("sendmail", PACKAGES, binary=_BINARY, libraries=LIBRARIES)


def _mc_defines(root: Path, helpfile: Path) -> dict[str, object]:
    """The m4 ``define``s: every path private, STARTTLS, AUTH PLAIN/LOGIN only inside TLS."""
    etc = root / "etc"
    return {
        "confDOMAIN_NAME": HOSTNAME,
        "QUEUE_DIR": root / "queue",
        "confPID_FILE": root / "sendmail.pid",
        "confCW_FILE": etc / "local-host-names",
        "HELP_FILE": helpfile,
        "STATUS_FILE": etc / "statistics",
        "ALIAS_FILE": "",  # no aliases: nothing is delivered locally
        "confSERVICE_SWITCH_FILE": etc / "service.switch",
        "confHOSTS_FILE": etc / "hosts",
        "confDONT_PROBE_INTERFACES": "True",
        "confDEF_USER_ID": "65534:65534",
        "confTO_IDENT": "0",  # no RFC 1413 query back to the client
        "confDELIVERY_MODE": "interactive",  # deliver before the reply to the final dot
        "confDOUBLE_BOUNCE_ADDRESS": "",
        # The instance lives under /tmp (sticky, world-writable); without this sendmail calls every file "unsafe"
        # and silently stops offering STARTTLS.
        "confDONT_BLAME_SENDMAIL": "TrustStickyBit",
        "confSERVER_CERT": etc / "server.crt",
        "confSERVER_KEY": etc / "server.key",
        "confCACERT": etc / "ca" / "ca.pem",
        "confCACERT_PATH": etc / "ca",  # sendmail disables STARTTLS unless both are set
        "confTLS_SRV_OPTIONS": "V",  # ask clients for no certificate
        "confAUTH_MECHANISMS": "PLAIN LOGIN",
        # RFC 4954 §4 / RFC 3207 §6: "p" offers no plaintext mechanism before TLS is active, "y" no anonymous one.
        "confAUTH_OPTIONS": "p,y",
        "confAUTH_REALM": HOSTNAME,
    }


def _mc(root: Path, port: int, helpfile: Path) -> str:
    """sendmail.mc: :func:`_mc_defines`, a loopback listener, and archive.test routed to the msgdir mailer."""
    lines = ["divert(0)dnl", "OSTYPE(`linux')dnl"]
    lines += [f"define(`{key}', `{value}')dnl" for key, value in _mc_defines(root, helpfile).items()]
    lines += [
        "FEATURE(`no_default_msa')dnl",
        "FEATURE(`nocanonify')dnl",
        "FEATURE(`accept_unresolvable_domains')dnl",  # the client's sender domain is never looked up
        "RELAY_DOMAIN(`archive.test')dnl",
        "TRUST_AUTH_MECH(`PLAIN LOGIN')dnl",
        f"DAEMON_OPTIONS(`Port={port}, Addr={mta.LOOPBACK}, Name=MTA')dnl",
        "MAILER(`smtp')dnl",  # so that any sender parses; no recipient is ever routed to it (below)
        "LOCAL_CONFIG",
        # Which mechanism and identity the message was accepted under, for the tests to read.
        "H?${auth_type}?X-Test-Auth: ${auth_type} ${auth_authen}",
        "MAILER_DEFINITIONS",
        f"Mmsgdir, P={root / 'etc' / 'deliver'}, F=8nsS, S=EnvFromSMTP/HdrFromSMTP, R=EnvToL/EnvToSMTP, T=DNS/RFC822/SMTP,",
        "\tU=0:0, A=deliver $u",
        "LOCAL_NET_CONFIG",
        # Ruleset 0, after local names and before any relay: a one-atom local part at archive.test goes to the
        # msgdir mailer, any other one there is unknown (550 5.1.1 at RCPT), and a recipient anywhere else is
        # refused (nothing leaves the instance). Senders ({addr_type} "e s") only need to resolve to some mailer.
        # (nocanonify: the domain may or may not carry the trailing dot of a canonical name.)
        *(f"R$- < @ archive.test{dot} > $*\t$#msgdir $@ archive.test $: $1" for dot in ("", " .")),
        *(f'R$* < @ archive.test{dot} > $*\t$#error $@ 5.1.1 $: "550 User unknown"' for dot in ("", " .")),
        "R$* < @ $+ > $*\t$: $&{addr_type} $| $1 < @ $2 > $3",
        'Re r $| $*\t$#error $@ 5.7.1 $: "550 outbound mail is disabled in this test instance"',
        "R$* $| $*\t$#msgdir $@ archive.test $: sender",
    ]
    return "\n".join(lines) + "\n"


def _deliver_script(message_dir: Path) -> str:
    """The msgdir mailer: stdin to ``message_dir/LOCALPART.NANOSECONDS.PID``, written under a dot name first."""
    return f"""#!/bin/sh
# Ruleset 0 routes only one-atom local parts here; refuse anything that could name a path all the same.
case "$1" in ''|.*|*[!A-Za-z0-9_-]*) echo "bad local part" >&2; exit 67;; esac
umask 077
name="$1.$(date +%s%N).$$"
cat > "{message_dir}/.$name" && mv "{message_dir}/.$name" "{message_dir}/$name"
"""


# Runs as PID 1 of the new namespaces: name the host, put the private files in place, become sendmail. The
# private resolv.conf names a loopback resolver that is not there: a lookup the files above do not answer fails at
# once instead of leaving the machine (or waiting for a timeout on one without a network).
_NAMESPACE_SCRIPT = """set -e
echo "$0" > /proc/sys/kernel/hostname
mount --bind "$1" "$2"
mount --bind "$3/hosts" /etc/hosts
if [ -e /etc/resolv.conf ]; then mount --bind "$3/resolv.conf" /etc/resolv.conf; fi
shift 3
exec "$@"
"""


class _Instance:
    """Lay out, start and stop one instance; :func:`running` is the way in."""

    def __init__(self, cert_file: Path, key_file: Path, ca_file: Path, parent: Path | None) -> None:
        self._cert_file, self._key_file, self._ca_file = cert_file, key_file, ca_file
        self.root = Path(tempfile.mkdtemp(prefix="certbot-smtp-dist-sendmail-", dir=parent))
        self.password = "pw " + secrets.token_urlsafe(12)  # a blank inside, as real passwords may have
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.root / "sendmail.log"

    def start(self) -> SendmailRelay:
        package = _prefix()
        port = mta.free_port()
        plugins = _sasl_plugin_dir()
        assert plugins is not None, "unavailable() said the SASL plugins are there"
        self._lay_out(package.prefix, port, plugins)
        argv = [
            # setpriv: should the test process die without stopping the instance, unshare gets SIGKILL, and
            # sendmail with it (--kill-child); setpriv execs unshare, so the PID Popen holds is unshare's.
            _find("setpriv") or "setpriv", "--pdeathsig", "KILL",
            _find("unshare") or "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
            "sh", "-c", _NAMESPACE_SCRIPT, HOSTNAME, str(self.root / "sasl2"), str(plugins),
            str(self.root / "etc"),
            str(package.path(_BINARY)), "-C", str(self.root / "sendmail.cf"), "-bD",
        ]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": package.library_path}
        with self.log_file.open("wb") as log:
            self._process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        if not mta.wait_for_greeting(port, _START_TIMEOUT, self._process):
            raise self._error(f"sendmail did not answer on {mta.LOOPBACK}:{port} within {_START_TIMEOUT:.0f}s")
        return SendmailRelay(mta.LOOPBACK, port, self._ca_file, USER, self.password, self.root / "messages",
                             package.version)

    def stop(self) -> None:
        """SIGTERM to sendmail, PID 1 of the namespace (unshare itself ignores SIGTERM); the kernel then ends every
        other process of the instance. If that takes too long, SIGKILL to unshare, whose --kill-child takes sendmail
        along. Then remove the directory. Idempotent."""
        try:
            process = self._process
            if process is not None and process.poll() is None:
                mta.terminate(process, _STOP_TIMEOUT, targets=_children(process.pid))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _lay_out(self, prefix: Path, port: int, plugins: Path) -> None:
        etc, sasl = self.root / "etc", self.root / "sasl2"
        for directory in (etc, etc / "ca", sasl, self.root / "queue", self.root / "messages"):
            directory.mkdir(mode=0o700)
        sasl.chmod(0o755)  # mounted over the system's plugin directory, which sendmail checks like its own files
        shutil.copyfile(self._cert_file, etc / "server.crt")
        _write(etc / "server.key", self._key_file.read_bytes(), 0o600)  # sendmail refuses a readable key
        shutil.copyfile(self._ca_file, etc / "ca" / "ca.pem")
        for name in ("local-host-names", "statistics"):
            _write(etc / name, b"", 0o600)
        _write(etc / "service.switch", b"hosts files\naliases files\n", 0o644)
        _write(etc / "hosts", f"{mta.LOOPBACK} {HOSTNAME} localhost\n::1 {HOSTNAME} localhost\n".encode(), 0o644)
        _write(etc / "resolv.conf", b"nameserver 127.0.0.1\noptions attempts:1 timeout:1\n", 0o644)
        _write(etc / "deliver", _deliver_script(self.root / "messages").encode(), 0o700)
        for plugin in _SASL_PLUGINS:
            shutil.copyfile(plugins / plugin, sasl / plugin)  # follows the .so -> .so.2.0.25 links
        conf = f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {etc / 'sasldb2'}\n"
        _write(sasl / "Sendmail.conf", conf.encode(), 0o644)
        # -p: the password from stdin, never in argv; the realm is the one sendmail passes (AuthRealm).
        self._command([_find("saslpasswd2") or "saslpasswd2", "-p", "-c", "-f", str(etc / "sasldb2"),
                       "-u", HOSTNAME, USER], stdin=self.password.encode())
        (etc / "sasldb2").chmod(0o600)  # sendmail refuses a group-readable SASL database
        mc = self.root / "sendmail.mc"
        mc.write_text(_mc(self.root, port, prefix / "etc/mail/helpfile"))
        cf = self._command(["m4", "m4/cf.m4", str(mc)], cwd=prefix / _CF_DIR)
        if b"ERROR" in cf.stderr:
            raise self._error("m4 reported errors building sendmail.cf", cf.stderr.decode(errors="replace"))
        _write(self.root / "sendmail.cf", cf.stdout, 0o644)

    def _command(self, argv: list[str], *, cwd: Path | None = None,
                 stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, timeout=_COMMAND_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self._error(f"{argv[0]} failed: {exc}") from exc
        if result.returncode != 0:
            raise self._error(f"{' '.join(argv[:2])} failed (exit {result.returncode})",
                              result.stderr.decode(errors="replace"))
        return result

    def _error(self, what: str, detail: str = "") -> SendmailError:
        try:
            output = self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            output = ""
        parts = [what, detail.strip(), f"--- output of sendmail ---\n{output.strip() or '(empty)'}"]
        return SendmailError("\n".join(p for p in parts if p))


def _children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (from /proc/PID/stat: the fields after the parenthesised command name)."""
    return mta.proc_pids("stat", lambda stat: int(stat.rsplit(b")", 1)[1].split()[1]) == pid)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def running(cert_file: Path, key_file: Path, ca_file: Path, *, parent: Path | None = None) -> Iterator[SendmailRelay]:
    """A started instance serving ``cert_file``/``key_file`` (a client trusts ``ca_file``); stopped on exit."""
    instance = _Instance(Path(cert_file), Path(key_file), Path(ca_file), parent)
    try:
        yield instance.start()
    finally:
        instance.stop()


def serve(cert_file: Path, key_file: Path, ca_file: Path) -> Iterator[SendmailRelay]:
    """For a pytest fixture (``yield from``): skip, or fail under CI, when sendmail cannot run or be fetched here."""
    reason = unavailable()
    if reason is None:
        try:
            _prefix()
        except Unavailable as exc:
            reason = f"sendmail cannot run here: {exc}"
    if reason:
        ci.unavailable(reason)  # outside the except block: the skip or failure carries no chained traceback
    with running(cert_file, key_file, ca_file) as relay:
        yield relay
