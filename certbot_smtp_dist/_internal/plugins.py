"""Build the pluggy plugin manager (never at import time) and read the registries it yields."""

from __future__ import annotations

import logging

import pluggy

from certbot_smtp_dist import hookspecs
from certbot_smtp_dist.errors import ConfigError, ConfigProblem
from certbot_smtp_dist.model import CertificateFacts, DeliveryResult, PayloadFormat

log = logging.getLogger(__name__)


def make_manager(load_entry_points: bool = True, extra: tuple[object, ...] = ()) -> pluggy.PluginManager:
    from certbot_smtp_dist._internal.payload import BuiltinPayloads

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(BuiltinPayloads(), name="builtin-payloads")
    for plugin in extra:
        pm.register(plugin)
    if load_entry_points:
        pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    return pm


def payload_formats(pm: pluggy.PluginManager) -> dict[str, PayloadFormat]:
    formats: dict[str, PayloadFormat] = {}
    problems: list[ConfigProblem] = []
    for batch in pm.hook.smtp_dist_payload_formats():
        for fmt in batch:
            if fmt.name in formats:
                problems.append(ConfigProblem(None, "payload", f"payload format {fmt.name!r} is registered twice"))
            formats[fmt.name] = fmt
    if problems:
        raise ConfigError(problems)
    return formats


def notify_finished(pm: pluggy.PluginManager, facts: CertificateFacts, result: DeliveryResult) -> None:
    for impl in pm.hook.smtp_dist_delivery_finished.get_hookimpls():
        try:
            impl.function(facts=facts, result=result)
        except Exception:
            log.exception("observer %s failed on target %s (ignored)", impl.plugin_name, result.target)


def notify_all(pm: pluggy.PluginManager, facts: CertificateFacts, results: list[DeliveryResult]) -> None:
    """Observers run after every target finished, outside the event loop: a slow one delays nobody's delivery."""
    for result in results:
        notify_finished(pm, facts, result)
