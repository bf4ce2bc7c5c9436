"""Subcommands for monitoring systems: `metrics` (Prometheus text exposition)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    metrics = sub.add_parser(
        "metrics", help="print the Prometheus metrics (text exposition format) that [defaults] metrics_textfile "
                        "receives after every deploy, retry and dismiss")
    common(metrics)
    metrics.set_defaults(func=cmd_metrics)


def cmd_metrics(args: argparse.Namespace) -> int:
    """Exit status: 0 printed; 78 an unusable configuration, 77/74 a state that cannot be trusted or read."""
    from certbot_smtp_dist._internal import cli_state, textfile
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.loader import load

    state = cli_state._state(args)
    keys = cli_state._keys(args, state)
    print(textfile.text(state, keys, load(config_path(args.config)).settings), end="")
    return 0
