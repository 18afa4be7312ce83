"""The one error tree of ingestd: every error a user can see carries a code and says what to do."""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error ingestd raises on purpose; `code` is stable, `message` is for people."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class UsageError(IngestError):
    """The command line or a path given on it is wrong (exit 2)."""

    code = "usage"
    exit_code = 2


class ConfigError(IngestError):
    """The configuration file or a tenant file is invalid; `problems` holds one line per problem."""

    code = "config"
    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return "\n".join([self.message, *(f"  - {p}" for p in self.problems)])


class SetRejected(IngestError):
    """A set failed validation; the report says why."""

    code = "set_rejected"
    exit_code = 1
