"""The log is one format whatever writes to it (issue 16): structlog's own lines, the
standard library's (asyncio, aiosmtpd) and the event loop's errors, with exception text in
JSON, and rate-limited where a client can cause the lines."""

import asyncio
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from sdk_bridge.runtime import logs as bridge_logging

Captured = pytest.CaptureFixture[str]


@pytest.fixture
def json_log(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """JSON logging as `--log-json` sets it up, undone afterwards; stderr is captured."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("mail.log").level)
    bridge_logging.configure("info", json=True)
    yield capsys
    logging.captureWarnings(False)
    root.handlers, root.level = saved[0], saved[1]
    logging.getLogger("mail.log").setLevel(saved[2])
    structlog.configure(**saved_config)


def lines(captured: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in captured.readouterr().err.splitlines()]


def test_exceptions_carry_their_text_in_json(json_log: Captured) -> None:
    try:
        raise ValueError("the reason")
    except ValueError:
        structlog.get_logger("test").exception("it failed")
    (line,) = lines(json_log)
    assert line["event"] == "it failed"
    assert "ValueError: the reason" in str(line["exception"])
    assert "exc_info" not in line


def test_the_standard_librarys_lines_are_json_and_rate_limited(json_log: Captured) -> None:
    for number in range(bridge_logging.LINES_PER_MINUTE + 40):
        logging.getLogger("asyncio").warning("warning %d", number)
    logging.getLogger("mail.log").warning("bogus command from a client")  # quiet
    found = lines(json_log)
    assert len(found) == bridge_logging.LINES_PER_MINUTE
    assert found[0] == {**found[0], "event": "warning 0", "logger": "asyncio", "level": "warning"}


def test_event_loop_errors_are_one_json_line_each(json_log: Captured) -> None:
    handler = bridge_logging.loop_errors()
    loop = asyncio.new_event_loop()
    try:
        for _ in range(bridge_logging.LINES_PER_MINUTE + 5):
            handler(loop, {"message": "accept failed", "exception": OSError(24, "Too many")})
    finally:
        loop.close()
    found = lines(json_log)
    assert len(found) == bridge_logging.LINES_PER_MINUTE
    assert found[0]["message"] == "accept failed"
    assert "Too many" in str(found[0]["error"])


def test_a_librarys_warning_is_a_json_line(json_log: Captured) -> None:
    """Not loose text on stderr: a deprecation a library prints must not break the log."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("this is deprecated", UserWarning, stacklevel=1)
    (line,) = lines(json_log)
    assert line["logger"] == "py.warnings" and "this is deprecated" in str(line["event"])
