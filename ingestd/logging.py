"""structlog setup: JSON lines for journald, files and pipes; readable lines on a terminal.

Log events are structured (`event="set.rejected" tenant=... set_id=...`) and
never carry roster values or raw parser messages.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Send structlog events to `stream` (stderr): console style on a TTY, else JSON lines."""
    stream = stream or sys.stderr
    use_console = log_format == "console" or (
        log_format == "auto" and hasattr(stream, "isatty") and stream.isatty()
    )
    renderer: structlog.typing.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    """A logger with `context` bound once (tenant=, set_id=, conn=)."""
    return structlog.get_logger().bind(**context)
