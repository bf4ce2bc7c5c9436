"""The libraries' floor: what any cold `deploy` built on asyncio and cryptography must do, and nothing of ours.

Usage: lib_floor.py HOST PORT CAFILE MESSAGE FROM TO LIVE_DIR PAYLOAD [smtplib]; PAYLOAD is `pem` or `pkcs12` (then
the passphrase is $BENCH_P12_PASSPHRASE). AUTH PLAIN with $BENCH_SMTP_USER and $BENCH_SMTP_PASSWORD when the user is
set. With `smtplib`, the session is smtp_send.py's blocking one and asyncio is never imported: the floor of a
`deploy` that would drop asyncio, the one structural change left on the session side of the budget.

One process, the work `deploy` cannot skip, in the fewest lines the libraries allow: import asyncio,
cryptography's X.509 and serialization and the email package; read the lineage's certificate, chain and key, check
the leaf's validity and that the key matches it; for `pkcs12`, build the bundle as payload.py does (PBES2, the same
KDF rounds); trust the system store (its hashed directory, looked up by subject: tlspolicy.py's first look) plus
CAFILE, as a target with `tls_ca_file` does; then one STARTTLS session on asyncio's own transports (asyncio_min.py's,
as `deploy` speaks SMTP itself) sending MESSAGE (the bytes `deploy` rendered); then it ends without the interpreter's teardown (os._exit), as
`deploy` does (abandon.end_process). No config, no state, no journal, no diagnostics, no scrubbing, no retry: the
difference between this and `deploy` is the price of those, and of our own imports.
"""

import datetime
import email.policy  # noqa: F401 - rendering needs it: imported as deploy imports it
import os
import ssl
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

KDF_ROUNDS = 200_000  # certbot_smtp_dist/_internal/payload.py's PKCS12_KDF_ROUNDS


def spki(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined, no-any-return]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def read_lineage(live: Path, payload: str) -> None:
    leaf = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    chain = [x509.load_pem_x509_certificate(b"-----BEGIN CERTIFICATE-----" + block)
             for block in (live / "chain.pem").read_bytes().split(b"-----BEGIN CERTIFICATE-----")[1:]]
    key = serialization.load_pem_private_key((live / "privkey.pem").read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    begins = getattr(leaf, "not_valid_before_utc", None) or leaf.not_valid_before.replace(tzinfo=datetime.timezone.utc)
    ends = getattr(leaf, "not_valid_after_utc", None) or leaf.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    if not begins <= now <= ends or spki(key.public_key()) != spki(leaf.public_key()):
        raise SystemExit("the lineage is unusable")
    if payload == "pkcs12":
        encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(KDF_ROUNDS)
                      .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
                      .build(os.environ["BENCH_P12_PASSPHRASE"].encode()))
        pkcs12.serialize_key_and_certificates(b"bench", key, leaf, chain or None,  # type: ignore[arg-type]
                                              encryption)


def main() -> None:
    host, port, cafile, message, sender, rcpt, live, payload = sys.argv[1:9]
    blocking = sys.argv[9:] == ["smtplib"]
    read_lineage(Path(live), payload)
    # the system store's hashed directory (deploy's first look: its bundle is read only for a refused certificate) ...
    context = ssl.create_default_context(capath=ssl.get_default_verify_paths().capath)
    context.load_verify_locations(cafile=cafile)  # ... plus the target's tls_ca_file
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if blocking:  # smtp_send.py's session: smtplib quotes the dots and ends the lines itself
        import smtplib

        with smtplib.SMTP(host, int(port), timeout=30) as smtp:
            smtp.starttls(context=context)
            user = os.environ.get("BENCH_SMTP_USER", "")
            if user:
                smtp.login(user, os.environ["BENCH_SMTP_PASSWORD"])
            smtp.sendmail(sender, [rcpt], Path(message).read_bytes())
    else:
        import asyncio

        from asyncio_min import data_lines, session

        asyncio.run(session(host, int(port), context, data_lines(Path(message).read_bytes()), sender, rcpt))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


main()
