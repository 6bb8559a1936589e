"""Logging, set up once per process: structlog to stderr, key=value for people or JSON.

Everything goes the same way, rate-limited where a client can cause it: the standard
library's logging (asyncio, aiosmtpd) is handed to structlog, and so are the event loop's
errors (`loop_errors`), so that a flood of failing connections is neither plain-text
tracebacks in a JSON log nor hundreds of megabytes of them.
"""

import asyncio
import logging
import sys
import time
from typing import Any

import structlog

LINES_PER_MINUTE = 60  # of each rate-limited source; the rest are counted, then reported
QUIET_LOGGERS = ("mail.log",)  # aiosmtpd: a warning per bogus command of any client


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written (it may be replaced after set-up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", json: bool = False) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    exceptions: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info] if json else []  # the console renders them
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # a library's warning is a log line too, not loose text
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class _RateLimit:
    """At most `LINES_PER_MINUTE` lines a minute; how many were held back is told with the
    next line that passes."""

    def __init__(self) -> None:
        self._window = time.monotonic()
        self._passed = 0
        self.held_back = 0

    def allows(self) -> bool:
        now = time.monotonic()
        if now - self._window >= 60.0:
            self._window, self._passed = now, 0
        if self._passed >= LINES_PER_MINUTE:
            self.held_back += 1
            return False
        self._passed += 1
        return True

    def take_held_back(self) -> dict[str, int]:
        held, self.held_back = self.held_back, 0
        return {"held_back": held} if held else {}


class _ToStructlog(logging.Handler):
    """The standard library's log records as structlog lines, rate-limited."""

    def __init__(self) -> None:
        super().__init__()
        self._limit = _RateLimit()
        self._log = structlog.get_logger("stdlib")

    def emit(self, record: logging.LogRecord) -> None:
        if not self._limit.allows():
            return
        fields: dict[str, Any] = {"logger": record.name, **self._limit.take_held_back()}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        self._log.log(record.levelno, record.getMessage(), **fields)


def loop_errors() -> Any:
    """An event loop exception handler (`loop.set_exception_handler`): each error one
    structured line with its exception, rate-limited."""
    limit = _RateLimit()
    log = structlog.get_logger("asyncio")

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not limit.allows():
            return
        error = context.get("exception")
        log.error(
            "event loop error",
            message=context.get("message", ""),
            error=repr(error) if error is not None else None,
            exc_info=error if isinstance(error, BaseException) else None,
            **limit.take_held_back(),
        )

    return handle
