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

    text = README.read_text("utf-8")
    lines = []
    for line in text.split(".. code-block:: toml\n\n", 1)[1].splitlines():
        if line and not line.startswith("    "):
            break  # the first unindented line ends the literal block
        lines.append(line[4:])
    example = "\n".join(lines)
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
