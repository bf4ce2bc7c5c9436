"""`make demo`: ship a sample certificate to a throwaway local relay (STARTTLS + AUTH on loopback) and show it.

Everything is real: an aiosmtpd relay with its own CA, a certbot-style lineage made with `cryptography`, the
credential store, and the `certbot-smtp-dist deploy` command as an ACME client would run it.
"""

from __future__ import annotations

import email
import email.policy
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from support.deployenv import to_toml  # noqa: E402
from support.pki import relay_certs, write_lineage  # noqa: E402
from support.relay import Relay  # noqa: E402

PASSWORD = "demo-relay-password"


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="certbot-smtp-dist-demo-"))
    try:
        return demo(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def demo(root: Path) -> int:
    # aiosmtpd (the demo relay, not this tool) logs "Session.login_data is deprecated" on every AUTH: noise here.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    exe = str(Path(sys.executable).parent / "certbot-smtp-dist")
    pki = relay_certs(root / "relay-pki")
    lineage = write_lineage(root / "letsencrypt" / "live" / "demo.example.com",
                            names=("demo.example.com", "www.demo.example.com"))
    with Relay(pki, mode="starttls", auth=("certbot@example.com", PASSWORD)) as relay:
        etc = root / "etc"
        etc.mkdir()
        config = etc / "config.toml"
        config.write_text(to_toml({
            "pki-archive": {
                "host": "127.0.0.1", "port": relay.port, "tls_mode": "starttls", "tls_ca_file": str(pki.ca_file),
                "auth_method": "plain", "username": "certbot@example.com", "password_credential": "relay",
                "from_address": "certbot@example.com", "from_name": "Certificate robot",
                "to": ["pki@example.com"], "bcc": ["audit@example.com"], "subject_prefix": "DEMO",
            },
        }))
        config.chmod(0o600)  # as the operator's guide makes it (`install -m 0600`): no "readable by everyone" warning
        env = {"CERTBOT_SMTP_DIST_CONFIG": str(config), "CERTBOT_SMTP_DIST_STATE_DIR": str(root / "state"),
               "PATH": "/usr/bin:/bin"}
        step(f"relay listening on 127.0.0.1:{relay.port} (STARTTLS required, AUTH PLAIN/LOGIN)")
        step(f"sample lineage {lineage.live_dir} (cert.pem, chain.pem, fullchain.pem, privkey.pem), issued by a "
             "throwaway test CA: the email's Diagnostics will say, rightly, that its root is not in the system "
             "trust store")
        step(f"config {config}:\n{config.read_text()}")
        step("storing the relay password (read from stdin, envelope-encrypted, never in the config)")
        subprocess.run([exe, "credentials", "set", "relay", "--type", "smtp_password"], input=PASSWORD + "\n",
                       text=True, env=env, check=True)
        step(f"certbot-smtp-dist deploy --json  (RENEWED_LINEAGE={lineage.live_dir}, as certbot's deploy hook "
             "sets it; the log on stderr, the JSON report on stdout)")
        proc = subprocess.run([exe, "deploy", "--json"], env={**env, "RENEWED_LINEAGE": str(lineage.live_dir)},
                              text=True, capture_output=True)
        print(proc.stderr, end="")
        print(proc.stdout)
        print(f"exit status {proc.returncode}")
        messages = relay.wait_for_messages(1, timeout=10) if proc.returncode == 0 else relay.messages
        for received in messages:
            step(f"the relay received (TLS={received.tls}, AUTH user={received.auth_user})")
            print(f"  envelope from: {received.mail_from}")
            print(f"  envelope to:   {', '.join(received.rcpt_tos)}")
            msg = email.message_from_bytes(received.data, policy=email.policy.default)
            for header in ("From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted"):
                print(f"  {header}: {msg[header]}")
            body = msg.get_body(("plain",))
            print("\n" + "\n".join("  | " + line for line in body.get_content().splitlines()))  # type: ignore[union-attr]
            for part in msg.iter_attachments():
                data = part.get_payload(decode=True)
                same = data == lineage.fullchain.read_bytes()
                print(f"\n  attachment {part.get_filename()} ({part.get_content_type()}, {len(data)} bytes)"
                      f" identical to fullchain.pem: {same}")
        if proc.returncode != 0 or len(messages) != 1:
            print("demo FAILED", file=sys.stderr)
            return 1
    step("demo OK: one email, the full chain attached, BCC only in the envelope")
    return 0


def step(text: str) -> None:
    print(f"\n==> {text}")


if __name__ == "__main__":
    sys.exit(main())
