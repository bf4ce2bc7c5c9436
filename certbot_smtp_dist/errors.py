"""The failure vocabulary: error codes with their retry class, and the exceptions the stages raise."""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass


class ErrorCode(str, enum.Enum):
    """Why a target was not delivered. The value is the stable, user-facing code."""

    SMTP_CONNECT = "SMTP_CONNECT"
    SMTP_TLS = "SMTP_TLS"
    SMTP_AUTH = "SMTP_AUTH"
    SMTP_TRANSIENT = "SMTP_TRANSIENT"
    SMTP_PERMANENT = "SMTP_PERMANENT"
    SMTP_VALIDATION = "SMTP_VALIDATION"
    SMTP_PAYLOAD = "SMTP_PAYLOAD"

    @property
    def retryable(self) -> bool:
        """Whether the same delivery can succeed later without anyone changing anything."""
        return self in _RETRYABLE


_RETRYABLE = frozenset({ErrorCode.SMTP_CONNECT, ErrorCode.SMTP_TRANSIENT})


class SmtpDistError(Exception):
    """Base class of every error this package raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in the configuration, keyed by target (None: file-wide) and key (None: whole table)."""

    target: str | None
    key: str | None
    problem: str

    def __str__(self) -> str:
        # Keys, target names and paths are the config's to choose (a TOML quoted key holds any character): one
        # printable line, as UnsafePathError is.
        where = ".".join(p for p in (self.target and f"targets.{self.target}", self.key) if p)
        return _one_line(f"{where}: {self.problem}" if where else self.problem)

    def to_json(self) -> dict[str, str | None]:
        return {"target": self.target, "key": self.key, "problem": self.problem}


class ConfigError(SmtpDistError):
    """The configuration is unusable; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem] | tuple[ConfigProblem, ...], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        head = f"configuration {source} is unusable" if source else "configuration is unusable"
        super().__init__(f"{head} ({len(self.problems)} problem(s)):\n{lines}")


class CertificateError(SmtpDistError):
    """The certificate artefact on disk cannot be shipped (SMTP_PAYLOAD, before any connection)."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("certificate files unusable: " + "; ".join(self.problems))


class PayloadError(SmtpDistError):
    """A payload format could not build its attachments for one target (SMTP_PAYLOAD)."""


class CredentialError(SmtpDistError):
    """A stored credential is missing, of the wrong type, or cannot be decrypted."""


class UnsafePathError(SmtpDistError, PermissionError):
    """A file or directory we would trust is not safe to trust: foreign owner, writable by others, or a symbolic
    link planted inside the state directory (exit status 77, EX_NOPERM). Nothing is read from it."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        # What is wrong, and `fix` what to do: a finding's two fields (inspect). Each names paths someone else may
        # have chosen (where another user's link leads, where a file was when opened): one printable line.
        self.unsafe = _one_line(f"{path}: {problem}")
        self.fix = _one_line(fix)
        self.message = f"{self.unsafe}; {self.fix}"
        super().__init__(errno.EPERM, self.message, str(path))

    def __str__(self) -> str:
        return self.message

    @property
    def refusal(self) -> str:
        """The one line every command and adapter reports it with."""
        return f"refusing to trust {self.message}"


def _one_line(text: str) -> str:
    """`text` with every character that is not printable (line breaks, terminal escapes) shown as "?"."""
    return "".join(c if c.isprintable() else "?" for c in text)


class AccessError(SmtpDistError, PermissionError):
    """A file or directory this command must read or write is closed to the running user (exit status 77,
    EX_NOPERM; `status` says UNKNOWN, 3). One line: the path, what was being done, and the fix."""

    def __init__(self, path: object, operation: str, reason: str, fix: str) -> None:
        self.message = f"cannot {operation} {path} ({reason}): {fix}"
        super().__init__(errno.EACCES, self.message, str(path))

    def __str__(self) -> str:
        return self.message


class UsageError(SmtpDistError):
    """The command line asks for something impossible (exit status 64)."""


class OutputError(SmtpDistError):
    """A file the command was asked to write cannot be written: exit status 73 (cannot create) or 74 (I/O error)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status
