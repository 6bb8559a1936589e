"""Waiting for a condition instead of sleeping a fixed time: every wait is bounded."""

import time
from collections.abc import Callable

POLL_SECONDS = 0.2


def eventually(condition: Callable[[], object], seconds: float = 60.0, what: str = "") -> None:
    """Return once `condition()` is true; fail after `seconds` saying `what` did not come."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:.0f} s: {what or condition}"
        time.sleep(POLL_SECONDS)
