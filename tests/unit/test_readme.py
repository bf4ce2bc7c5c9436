"""README.rst is the user manual and the PyPI page: it must render without a single docutils warning."""

from __future__ import annotations

import io
from pathlib import Path

from support import ci

README = Path(__file__).resolve().parents[2] / "README.rst"


def test_readme_renders_cleanly() -> None:
    ci.require_module("docutils", "pip install docutils")
    import docutils.core
    import docutils.writers.null

    warnings = io.StringIO()
    docutils.core.publish_string(README.read_text("utf-8"), writer=docutils.writers.null.Writer(),
                                 settings_overrides={"warning_stream": warnings, "report_level": 2,
                                                     "halt_level": 5})
    assert warnings.getvalue() == ""


def test_readme_opens_with_the_two_setup_commands() -> None:
    head = README.read_text("utf-8").split("What it does", 1)[0]
    assert "make demo" in head and "make test" in head


def test_readme_configuration_example_is_valid(tmp_path: Path) -> None:
    """The documented example must pass the same validation a user's file does."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    from certbot_smtp_dist._internal.config import parse_settings
    from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS

    example = literal_block(README.read_text("utf-8"), "toml", "[defaults]")
    ca = tmp_path / "relay-ca.pem"
    from support.pki import make_ca

    ca.write_bytes(make_ca("Relay CA").cert_pem())
    doc = tomllib.loads(example.replace("/etc/ssl/relay-ca.pem", str(ca)))
    settings = parse_settings(doc, tmp_path / "config.toml",
                              {"relay": "smtp_password", "archive-p12": "smtp_pkcs12_passphrase"},
                              {f.name: f for f in BUILTIN_FORMATS})
    [target] = settings.targets
    assert (target.name, target.host, target.port, target.bcc) == ("pki-archive", "smtp.example.com", 587,
                                                                   ("audit@example.com",))


# ---------------------------------------------------------------------------------------------- the operator's guide


def literal_block(text: str, language: str, first_line: str) -> str:
    """The `.. code-block:: LANGUAGE` whose first line starts with `first_line`, dedented."""
    for chunk in text.split(f".. code-block:: {language}\n\n")[1:]:
        lines = []
        for line in chunk.splitlines():
            if line and not line.startswith("    "):
                break  # the first unindented line ends the literal block
            lines.append(line[4:])
        if lines and lines[0].startswith(first_line):
            return "\n".join(lines).strip("\n") + "\n"
    raise AssertionError(f"README.rst has no {language} block starting with {first_line!r}")


def test_minimal_configuration_is_valid_as_written(tmp_path: Path) -> None:
    """Copied as it is (no tls_ca_file to replace), it passes validation, needing only the stored password."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    from certbot_smtp_dist._internal.config import parse_settings
    from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS

    doc = tomllib.loads(literal_block(README.read_text("utf-8"), "toml", "# /etc/letsencrypt/smtp-dist/config.toml (minimal)"))
    settings = parse_settings(doc, tmp_path / "config.toml", {"relay": "smtp_password"},
                              {f.name: f for f in BUILTIN_FORMATS})
    [target] = settings.targets
    assert (target.name, target.port, target.tls_mode.value, target.payload) == ("pki-team", 587, "starttls", "pem")
    assert settings.warnings == ()


def test_the_unit_in_the_readme_is_the_shipped_unit() -> None:
    """One source: packaging/systemd's file, shown verbatim (the 0.1.0 README showed a different unit)."""
    shipped = (README.parent / "packaging/systemd/certbot-smtp-dist-retry.service").read_text("utf-8")
    assert literal_block(README.read_text("utf-8"), "ini", "[Unit]") == shipped


def test_the_cron_line_runs_the_units_command() -> None:
    from certbot_smtp_dist._internal.cli import build_parser

    cron = literal_block(README.read_text("utf-8"), "sh", "# /etc/cron.d/certbot-smtp-dist").splitlines()[1]
    minute, hour, day, month, weekday, user, *command = cron.split()
    assert (minute, hour, day, month, weekday, user) == ("*/15", "*", "*", "*", "*", "root")
    unit = (README.parent / "packaging/systemd/certbot-smtp-dist-retry.service").read_text("utf-8")
    [exec_start] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert command[:2] == exec_start.split()  # the same program and subcommand as the timer's unit
    args = build_parser().parse_args(command[1:])
    assert args.func.__name__ == "cmd_retry" and args.quiet
