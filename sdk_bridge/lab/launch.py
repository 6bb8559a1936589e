"""`sdk-bridge run` as a child process, for the lab's local runs and the tests alike.

It starts in a process group of its own and is ready once it says so, on its first line,
with the addresses it listens on (a configuration may ask for port 0). `stop` signals the
bridge as systemd would (SIGTERM to stop, SIGKILL for a crash); `close` then ends whatever
of its group is left, so no crypto worker outlives it even where the bridge's own care for
them failed.
"""

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT = 60.0  # seconds for a bridge to say it is ready, or to stop
_ADDRESS = re.compile(r"(\S+):(\d+)")


class BridgeDidNotStart(Exception):
    """It exited or said nothing in time; the text ends with its log."""


class BridgeProcess:
    def __init__(self, config: Path, log: Path | None = None, options: Sequence[str] = ()):
        """`log`: where its stderr goes (appended, so a restarted bridge goes on in the same
        log; None: ours); `options`: the command's options before `run` (`--log-json`)."""
        self.config = config
        self.log = log
        self.options = tuple(options)
        self.process: subprocess.Popen[str] | None = None
        self.group: int | None = None  # its process group, once started
        self.smtp: list[tuple[str, int]] = []  # where it listens, as it said when ready
        self.admin: tuple[str, int] | None = None

    @property
    def smtp_port(self) -> int:
        return self.smtp[0][1]

    @property
    def admin_port(self) -> int:
        assert self.admin is not None, "it serves no admin port"
        return self.admin[1]

    @property
    def pid(self) -> int:
        assert self.process is not None, "not running"
        return self.process.pid

    def start(self) -> None:
        """Start it and return once it says it is ready (SMTP listening)."""
        with contextlib.ExitStack() as stack:
            stderr = stack.enter_context(self.log.open("a")) if self.log else None
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sdk_bridge.cli",
                    *self.options,
                    "run",
                    "-c",
                    str(self.config),
                ],
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
            said = self.log.read_text()[-3000:] if self.log else line
            raise BridgeDidNotStart(f"{self.config} did not start a bridge:\n{said}")
        smtp, _, admin = line.partition(" admin on ")
        self.smtp = [(host, int(port)) for host, port in _ADDRESS.findall(smtp)]
        self.admin = next(((h, int(p)) for h, p in _ADDRESS.findall(admin)), None)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the bridge alone and return its exit code once it is gone."""
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(timeout=START_TIMEOUT)
        self._done()
        return code

    def close(self) -> None:
        """End the bridge, if it still runs, and everything left in its process group."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT)
            self._done()
        if self.group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.group, signal.SIGKILL)

    def _done(self) -> None:
        assert self.process is not None
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
