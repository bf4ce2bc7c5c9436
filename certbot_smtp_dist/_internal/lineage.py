"""Read a certificate artefact from disk and prove it shippable before anything is dialled."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import diagnose, files, pem
from certbot_smtp_dist.errors import CertificateError, UnsafePathError, UsageError
from certbot_smtp_dist.model import Artefact, CertificateFacts, LineageSource, Severity

log = logging.getLogger("certbot_smtp_dist")
MAX_CERTIFICATES = 16  # per certificate file
CLOCK_SKEW = timedelta(minutes=5)  # how far in the future a leaf's notBefore may lie
# UTF-8 bytes of a certificate name, at most: it begins attachment file names (NAME.fullchain.pem, a format's own
# suffix), which a recipient's file system holds to 255 bytes. README documents the bound.
MAX_NAME_BYTES = 128
_NAME_DIGEST = 12  # hex digits of SHA-256 ending a name cut to the bound


def from_lineage_dir(directory: Path, name: str | None = None) -> LineageSource:
    """A certbot-style live directory: cert.pem, chain.pem, fullchain.pem, privkey.pem."""
    return LineageSource(
        cert=directory / "cert.pem",
        key=directory / "privkey.pem",
        chain=directory / "chain.pem",
        fullchain=directory / "fullchain.pem",
        name=given_name(name or directory.name),
        lineage_dir=directory,
    )


HOOK_ENV = "CERTBOT_SMTP_DIST_HOOK"  # set by the shims in hooks/ to the ACME client that runs them


def from_renewal(environ: Mapping[str, str]) -> bool:
    """Whether this run comes from an ACME client's renewal (certbot's or lego's hook variables, or one of the
    shims in hooks/), not from a command typed on a terminal."""
    lego = any(environ.get(f"{prefix}CERT_PATH") for prefix in ("LEGO_HOOK_", "LEGO_"))
    return bool(environ.get("RENEWED_LINEAGE") or environ.get(HOOK_ENV) or lego)


def from_environment(environ: Mapping[str, str]) -> LineageSource | None:
    """Find the renewed certificate from the ACME client's hook environment, if any.

    certbot: RENEWED_LINEAGE. lego 4: LEGO_CERT_DOMAIN/LEGO_CERT_PATH/LEGO_CERT_KEY_PATH; lego 5: LEGO_HOOK_CERT_PATH,
    LEGO_HOOK_CERT_KEY_PATH and, for the name, LEGO_HOOK_CERT_NAME else the first of LEGO_HOOK_CERT_DOMAINS.
    """
    if environ.get("RENEWED_LINEAGE"):
        return from_lineage_dir(Path(environ["RENEWED_LINEAGE"]))
    for prefix in ("LEGO_HOOK_", "LEGO_"):
        cert, key = environ.get(f"{prefix}CERT_PATH"), environ.get(f"{prefix}CERT_KEY_PATH")
        if cert and key:
            domain = (environ.get(f"{prefix}CERT_NAME") or environ.get(f"{prefix}CERT_DOMAIN")
                      or environ.get(f"{prefix}CERT_DOMAINS", "").split(",")[0].strip())
            # lego writes leaf followed by issuer in one file: it is the full chain.
            return LineageSource(cert=None, key=Path(key), chain=None, fullchain=Path(cert),
                                 name=given_name(domain))
    return None


def from_files(
    cert: str | None, key: str | None, chain: str | None, fullchain: str | None, name: str | None
) -> LineageSource:
    """Explicit files from the command line (other ACME clients)."""
    if not key:
        raise UsageError("--key is required with --cert/--fullchain")
    if not cert and not fullchain:
        raise UsageError("give --fullchain (or --cert and --chain) with --key")
    return from_paths(cert, key, chain, fullchain, name)


def from_paths(
    cert: str | None, key: str, chain: str | None, fullchain: str | None, name: str | None
) -> LineageSource:
    """The given files; `lineage_dir` only when they all sit in one directory (certbot's live directory)."""
    paths = [Path(p) for p in (cert, key, chain, fullchain) if p]
    parents = {p.parent for p in paths}
    return LineageSource(
        cert=Path(cert) if cert else None,
        key=Path(key),
        chain=Path(chain) if chain else None,
        fullchain=Path(fullchain) if fullchain else None,
        name=given_name(name),
        lineage_dir=parents.pop() if len(parents) == 1 else None,
    )


def plain_paths(source: LineageSource) -> LineageSource:
    """`source`, if each of its paths is one printable line. The paths an ACME client hands a hook (its arguments,
    RENEWED_LINEAGE, LEGO_*CERT_*PATH) are someone else's text, and every message about a file names it: a line
    break there would start a line of our log, `status` and `history` of its own choosing. No ACME client makes
    such a path. Raises UsageError, the path shown escaped."""
    for label, path in _inputs(source):
        if not str(path).isprintable():
            raise UsageError(f"the {label} file's path {str(path)!r} holds a control or line-separator character: "
                             "refused, no certificate is read from it")
    return source


def load(source: LineageSource, now: datetime | None = None) -> Artefact:
    """Read and check every file; raise CertificateError listing every problem found.

    Each distinct file is read once, bounded (files.read_regular), and its warnings are logged once. Raises
    UnsafePathError when a file is not safe to trust (`read_trusted`).
    """
    raw, twins, key_status = read_trusted(source)
    for warning in files.exposure(source.key, key_status, os.geteuid(), "private key file"):
        log.warning("%s", warning)  # whether or not the artefact is usable: the key sits there either way
    from certbot_smtp_dist._internal import anchors

    # The deploy path's trust question: the hashed directory only, never the whole store parsed (issue 16).
    artefact, notes = check(raw, source, now or datetime.now(timezone.utc), twins, anchors.system_store(False))
    for note in dict.fromkeys(notes):
        log.warning("%s", note)
    for finding in artefact.findings:  # what the email's Diagnostics section says, the run's output says too
        if finding.severity is not Severity.INFO:
            log.warning("certificate %s: %s%s", artefact.facts.name, finding.message,
                        f"; fix: {finding.fix}" if finding.fix else "")
    return artefact


def read_trusted(source: LineageSource) -> tuple[dict[str, bytes], frozenset[str], os.stat_result]:
    """`read_inputs` under the rule every reader of a lineage obeys (deploy, retry, `check --lineage`, `inspect`,
    the certbot plugin's choice of targets): no file is reached through a link another user can re-point
    (`require_steady`, before any is read), each file opened is where that check found it, and the key file is no
    other user's hard link in an ACME user's directory (ownership.require_no_borrowed_name). Raises
    UnsafePathError for any of them; CertificateError naming every file that cannot be read."""
    from certbot_smtp_dist._internal import ownership

    checked = require_steady(source)
    raw, twins, key_status = read_inputs(source, checked)
    ownership.require_no_borrowed_name(source.key, key_status, checked.get(source.key, source.key), "private key file")
    return raw, twins, key_status


def require_steady(source: LineageSource) -> dict[Path, Path]:
    """Every symbolic link on the way to each file (the file itself included) is one only root or the running user
    can re-point (ownership.require_steady_links): another user's link in a directory others can write (/tmp) could
    lead to any lineage root can read, and its key would be mailed. certbot's live/ links into archive/ are root's,
    lego's, acme.sh's and uacme's files no links: they pass. Raises UnsafePathError naming the link. Returns where
    each path led, for read_inputs to hold each file opened to: a link made after the check, where another user can
    write (their own directory, which fs.protected_symlinks does not cover), is refused then (files.read_regular)."""
    from certbot_smtp_dist._internal import ownership

    # A NUL in a path from a spool entry is no path any system call takes: read_inputs names it.
    paths = dict.fromkeys(path for _, path in _inputs(source) if "\0" not in str(path))
    return ownership.require_steady_paths(paths, "run the deploy as uid {uid}, whose files these are (from its ACME "
                                                 "client's own hook), or {fix} if that ACME client runs as root")


def read_inputs(source: LineageSource, checked: Mapping[Path, Path]
                ) -> tuple[dict[str, bytes], frozenset[str], os.stat_result]:
    """The bytes of each file by label (cert, chain, fullchain, key), each distinct file read once and bounded
    (files.read_regular), the labels whose file is the key file itself, and the key file's status. Raises
    CertificateError naming every file that cannot be read; UnsafePathError when a file opened is not where
    `checked` (require_steady) says its path led. Every reader of a lineage calls it through `read_trusted`."""
    problems: list[str] = []
    raw: dict[str, bytes] = {}
    seen: dict[Path, tuple[bytes, os.stat_result]] = {}
    for label, path in _inputs(source):
        try:
            if path not in seen:
                seen[path] = files.read_regular(path, checked=checked.get(path))
            raw[label] = seen[path][0]
        except UnsafePathError:
            raise
        except OSError as exc:
            problems.append(f"cannot read {label} file {path}: {exc.strerror or exc}")
        except ValueError:  # a NUL in a path from a spool entry: os.stat refuses it before any system call
            problems.append(f"cannot read {label} file {path!r}: not a valid path")
    if problems:
        raise CertificateError(problems)
    key_status = seen[source.key][1]
    key_file = (key_status.st_dev, key_status.st_ino)
    twins = frozenset(label for label, path in _inputs(source)
                      if (seen[path][1].st_dev, seen[path][1].st_ino) == key_file)
    return raw, twins, key_status


def _inputs(source: LineageSource) -> list[tuple[str, Path]]:
    return [(label, path) for label, path in (("cert", source.cert), ("chain", source.chain),
                                              ("fullchain", source.fullchain), ("key", source.key))
            if path is not None]


def check(raw: Mapping[str, bytes], source: LineageSource, now: datetime,
          key_twins: frozenset[str] = frozenset(), store: Any | None = None) -> tuple[Artefact, list[str]]:
    """Validation of the artefact's bytes (key matches, chain links, validity), and the warnings to give; pure but
    for `store` (anchors.Store), where the Diagnostics look for the chain's trust anchor.

    Only what was parsed is shipped: the full chain rebuilt from the certificates (leaf first, canonical PEM) and
    the one private key block of the key file. `key_twins` are the labels whose file is the key file itself (one
    combined file), where a private key block is expected rather than warned about.
    """
    chain_certs, key, key_pem, problems, notes = parse(raw, source, key_twins)
    if problems or key is None:
        raise CertificateError(problems)
    leaf = chain_certs[0]
    if diagnose.spki(key.public_key()) != diagnose.spki(leaf.public_key()):
        problems.append("the private key does not match the leaf certificate")
    broken = [why for child, parent in itertools.pairwise(chain_certs) if (why := _not_issued_by(child, parent))]
    problems += broken
    if broken:  # the same certificates in another order may make a chain: say which (inspect's finding)
        found = diagnose.examine(chain_certs, diagnose.spki(key.public_key()), now, None, strict=False).findings
        problems += [f"{f.message}; fix: {f.fix}" for f in found if f.code == "chain-order"]
    not_before, not_after = diagnose.validity(leaf)
    window = f"valid from {not_before:%Y-%m-%d %H:%M} to {not_after:%Y-%m-%d %H:%M} UTC"
    # RFC 5280 §4.1.2.5: outside its window a certificate is not valid, early or late. Early by less than the
    # tolerated skew is the host's clock lagging the CA's just after issuance (not every CA backdates): it ships.
    if not_before > now + CLOCK_SKEW:
        problems.append(f"the leaf certificate is not valid yet ({window}; now {now:%Y-%m-%d %H:%M} UTC)")
    elif not_after <= now:
        problems.append(f"the leaf certificate expired on {not_after:%Y-%m-%d %H:%M} UTC ({window})")
    if problems:
        raise CertificateError(problems)

    from cryptography.hazmat.primitives.serialization import Encoding

    fullchain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in chain_certs)
    facts = _facts(leaf, source, not_before, not_after)
    findings = diagnose.examine(chain_certs, diagnose.spki(key.public_key()), now, store, strict=False).findings
    return Artefact(facts=facts, fullchain_pem=fullchain_pem, key_pem=key_pem, source=source,
                    findings=findings), notes


def parse(raw: Mapping[str, bytes], source: LineageSource, key_twins: frozenset[str] = frozenset()
          ) -> tuple[list[Any], Any | None, bytes, list[str], list[str]]:
    """The certificates as shipped (leaf first), the private key and its canonical PEM block (None, b"" when it does
    not parse), the problems that stop shipping (files that do not parse or disagree) and the notes to warn about.
    Raises CertificateError when no certificate can be had at all."""
    problems: list[str] = []
    notes: list[str] = []
    certs: dict[str, list[Any]] = {}
    for label in ("cert", "chain", "fullchain"):
        if label in raw:
            try:
                certs[label] = _certificates(getattr(source, label), raw[label], label in key_twins, notes)
            except ValueError as exc:
                problems.append(f"{label} file {getattr(source, label)}: {exc}")
    chain_certs = _chain(certs, problems)
    key, key_pem = None, b""
    try:
        key, key_pem = _private_key(raw["key"])
    except ValueError as exc:
        problems.append(f"key file {source.key}: {exc}")
    return chain_certs, key, key_pem, problems, notes


def _chain(certs: Mapping[str, list[Any]], problems: list[str]) -> list[Any]:
    """Leaf then issuers: fullchain.pem, else cert.pem's first certificate and chain.pem; the files must agree."""
    if "fullchain" in certs:
        chain_certs = certs["fullchain"]
    elif "cert" in certs:
        chain_certs = certs["cert"][:1] + certs.get("chain", [])
    else:
        raise CertificateError(problems or ["no certificate given"])
    if "cert" in certs and certs["cert"][0] != chain_certs[0]:
        problems.append("cert.pem and the first certificate of fullchain.pem differ")
    if "chain" in certs and "fullchain" in certs and certs["fullchain"][1:] != certs["chain"]:
        problems.append("chain.pem does not match the issuer certificates in fullchain.pem")
    return chain_certs


def _certificates(path: Path | None, data: bytes, is_key_file: bool, notes: list[str]) -> list[Any]:
    """The certificates of one certificate file, in order; any other block is named in `notes` (worded by path, so
    a file named twice is warned about once), never shipped."""
    from cryptography import x509

    found = pem.blocks(data)
    blocks = [b for b in found if b.label == pem.CERTIFICATE]
    if len(blocks) > MAX_CERTIFICATES:  # real chains hold 2 to 4; verifying and reporting stay bounded
        raise ValueError(f"holds {len(blocks)} certificates; at most {MAX_CERTIFICATES} are accepted")
    out = []
    for i, block in enumerate(blocks, 1):
        try:
            cert = x509.load_der_x509_certificate(block.der)
        except ValueError as exc:
            raise ValueError(f"certificate #{i} does not parse ({_short(exc)})") from exc
        undecoded = diagnose.undecodable(cert)  # names are read lazily: a bad one would raise wherever read
        if undecoded:
            named = diagnose.name(cert)
            who = "" if named == diagnose.UNDECODED_NAME else f" ({named})"
            raise ValueError(f"certificate #{i}{who}: {'; '.join(undecoded)}")
        out.append(cert)
    if not out:
        raise ValueError("holds no PEM certificate")
    others = [b for b in found if b.label != pem.CERTIFICATE and not (is_key_file and b.is_private_key)]
    if any(b.is_private_key for b in others):
        notes.append(f"certificate file {path} holds a private key besides its certificates; it is not shipped from "
                     "there: keep the key in its own file, mode 0600")
    stray = sorted({b.shown for b in others if not b.is_private_key})
    if stray:
        named = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        notes.append(f"certificate file {path} holds {named} block(s) besides its certificates; they are not shipped")
    return out


def _private_key(data: bytes) -> tuple[Any, bytes]:
    """The key file's one private key and its canonical PEM block (nothing else of the file is ever shipped)."""
    from cryptography.hazmat.primitives import serialization

    keys = [b for b in pem.blocks(data) if b.is_private_key]
    if len(keys) != 1:
        raise ValueError("holds no PEM private key" if not keys else
                         f"holds {len(keys)} private keys; give a file with exactly one")
    block = keys[0]
    if block.label == "ENCRYPTED PRIVATE KEY":
        raise ValueError("is encrypted; encrypted keys are not supported")
    text = block.encode()
    try:
        return serialization.load_pem_private_key(text, password=None), text
    except (ValueError, TypeError) as exc:
        raise ValueError(f"does not parse ({_short(exc)}); encrypted keys are not supported") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for exotic keys
        raise ValueError(f"is not supported ({_short(exc)})") from exc


def _not_issued_by(child: Any, parent: Any) -> str | None:
    """Check name chaining and the signature (RFC 5280 §6.1.3); None when `parent` issued `child`."""
    from certbot_smtp_dist._internal import signatures

    if child.issuer != parent.subject:
        return (f"chain broken: {diagnose.name(child)} names issuer {diagnose.name(child, 'issuer')}, "
                f"but the next certificate is {diagnose.name(parent)}")
    try:
        signatures.verify(child, parent)
    except signatures.SignatureMismatch as exc:
        return f"chain broken: the signature on {diagnose.name(child)} was not made by the next certificate ({exc})"
    return None


def _facts(leaf: Any, source: LineageSource, not_before: datetime, not_after: datetime) -> CertificateFacts:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    # Certificate-borne text goes to mail headers, logs, journals and terminals: printable and bounded here, once.
    sans = tuple(diagnose.shown(s, diagnose.SHOWN_SAN) for s in diagnose.subject_alt_names(leaf))
    cns = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common_name = diagnose.shown(str(cns[0].value)) if cns else (sans[0] if sans else "")
    name = source.name or common_name or (sans[0] if sans else "certificate")
    der = leaf.public_bytes(serialization.Encoding.DER)
    return CertificateFacts(
        name=_safe_name(name),
        common_name=common_name,
        sans=sans,
        issuer=diagnose.name(leaf, "issuer"),
        not_before=not_before,
        not_after=not_after,
        serial_hex=format(leaf.serial_number, "x"),
        sha256_fingerprint=hashlib.sha256(der).hexdigest(),
        spki_sha256=hashlib.sha256(diagnose.spki(leaf.public_key())).hexdigest(),
    )


def given_name(name: str | None) -> str | None:
    """A certificate name an ACME client gives (its hook's domain argument or variable, the lineage directory's
    name): someone else's text, which the journal, the spool, `status`, `history` and the log lines show before the
    certificate is read (a blocked deploy). Made safe here, once, as the facts' name is: the same name throughout,
    one printable line. None when none is given."""
    return _safe_name(name) if name else None


def _safe_name(name: str) -> str:
    """The certificate name becomes part of attachment file names: keep it to a safe alphabet and, past
    MAX_NAME_BYTES, to its head and a digest of the whole (readable, the same for the same name every run, and two
    long names that share a head stay apart). Applied again, it changes nothing."""
    cleaned = "".join(c if c.isalnum() or c in ".-_" else "_" for c in name.replace("*", "wildcard"))
    cleaned = cleaned.strip(".") or "certificate"
    whole = cleaned.encode("utf-8")
    if len(whole) <= MAX_NAME_BYTES:
        return cleaned
    head = whole[:MAX_NAME_BYTES - _NAME_DIGEST - 1].decode("utf-8", "ignore")  # never half a character
    return f"{head}-{hashlib.sha256(whole).hexdigest()[:_NAME_DIGEST]}"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
