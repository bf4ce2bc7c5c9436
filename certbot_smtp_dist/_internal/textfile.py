"""The metrics of a state directory: read from its journal and spool, and written to `metrics_textfile`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from certbot_smtp_dist._internal import files, metrics
from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist._internal.journal import HEAD_FILE, JOURNAL_FILE, SEALED_FILE, Journal
from certbot_smtp_dist._internal.state import StateKeys
from certbot_smtp_dist.model import Settings

log = logging.getLogger("certbot_smtp_dist")


def spool_states(spool: sp.Spool) -> Iterator[tuple[str, str]]:
    """(target, state) per spool entry: a blocked deploy is `blocked`, a rejected file `rejected`, both under
    target `*` (neither belongs to one target; a rejected file's own claims are not trusted)."""
    for item in spool.entries():
        if isinstance(item, sp.Rejected):
            yield metrics.ANY_TARGET, metrics.REJECTED
        elif item.kind == sp.BLOCKED:
            yield metrics.ANY_TARGET, sp.BLOCKED
        else:
            yield item.target, item.state


def text(state: Path, keys: StateKeys, settings: Settings) -> str:
    """The exposition text for `state`: the configured targets, and any the spool still holds entries for, from the
    journal's verified lines; and whether the journal verifies (one pass over it)."""
    verdict, records = Journal(state, keys.journal, keys.journal_anchor).audit()
    values = metrics.collect(records, spool_states(sp.Spool(state, keys.spool)), [t.name for t in settings.targets])
    recorded = any((state / name).exists() for name in (JOURNAL_FILE, HEAD_FILE, SEALED_FILE))
    return metrics.render(values, verdict.ok if recorded else None)  # nothing recorded yet: no verdict to give


def refresh(state: Path, keys: StateKeys, settings: Settings) -> None:
    """Rewrite `metrics_textfile` if the configuration names one. Trouble is logged, never raised: the run it
    follows has done its work, and the file's own timestamps show that it went stale."""
    path = settings.metrics_textfile
    if path is None:
        return
    try:
        files.write_public(path, text(state, keys, settings).encode("utf-8"))
    except OSError as exc:  # UnsafePathError included: a symbolic link there is refused
        log.error("cannot write the metrics file %s: %s", path, exc.strerror or exc)


def refresh_after_run(config: Path, state: Path) -> None:
    """After `deploy`, `retry` or `dismiss`: reload the configuration to learn whether a textfile is wanted, and
    rewrite it. A configuration or key that cannot be used was reported by the run itself: nothing to add here."""
    from certbot_smtp_dist._internal.loader import credential_store, load
    from certbot_smtp_dist._internal.state import state_keys
    from certbot_smtp_dist.errors import SmtpDistError

    if not _mentions_textfile(config):
        return  # the common case costs a read, not a second load of the plugins and credentials
    try:
        settings = load(config, trusted=True).settings  # checked by _mentions_textfile
        if settings.metrics_textfile is None:
            return
        keys = state_keys(credential_store(config), state)
    except (SmtpDistError, OSError) as exc:
        log.debug("metrics file not refreshed: %s", exc)
        return
    refresh(state, keys, settings)


def _mentions_textfile(config: Path) -> bool:
    """Whether the file names the key at all (validated by the full load that follows when it does); not a byte
    is read from a file someone else could have written."""
    from certbot_smtp_dist._internal.config import METRICS_KEY
    from certbot_smtp_dist._internal.ownership import read_trusted_config, require_trusted_config

    try:
        require_trusted_config(config)
        return METRICS_KEY.encode() in read_trusted_config(config)
    except OSError:  # UnsafePathError and AccessError included: the run itself said so
        return False
