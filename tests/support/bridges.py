"""An `sdk-bridge run` process for a test, in a process group of its own: `stop` signals the
bridge as systemd would (SIGTERM to stop, SIGKILL for a crash), `close` then ends whatever
of the group is left, so a test leaves no crypto worker behind even where the bridge's own
care for them failed."""

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT = 60.0


class BridgeProcess:
    def __init__(self, config: Path, log: Path | None = None, options: Sequence[str] = ()):
        """`log`: where its stderr goes (appended; None: the test's own); `options`: the
        command's options before `run` (`--log-level warning`)."""
        self.config = config
        self.log = log
        self.options = tuple(options)
        self.process: subprocess.Popen[str] | None = None
        self.group: int | None = None  # its process group, once started

    def start(self) -> None:
        """Start it and return once it says it is ready (SMTP listening)."""
        with contextlib.ExitStack() as stack:
            stderr = stack.enter_context(self.log.open("a")) if self.log else None
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", *self.options, "run", "-c", str(self.config)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own process group, for `close`
            )
        self.group = self.process.pid
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("sdk-bridge ready"):
            self.close()
            raise AssertionError(self.log.read_text()[-3000:] if self.log else line)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the bridge alone and return its exit code once it is gone."""
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(timeout=START_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        return code

    def close(self) -> None:
        """End the bridge, if it still runs, and everything left in its process group."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
        if self.group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.group, signal.SIGKILL)
