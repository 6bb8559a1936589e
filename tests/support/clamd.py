"""A throw-away clamd (Debian package clamav-daemon) for tests, with a local test database.

freshclam cannot reach its mirrors here, so the database directory holds one signature
only: the MD5 hash of the 68-byte EICAR test file (`test.hdb`, `MD5:size:name`). clamd
accepts that as its only database (it logs "Loaded 1 signatures") and starts in well under
a second. clamd reports unsigned databases with ".UNOFFICIAL" appended to the name.

`Clamd(directory)` writes a clamd.conf into `directory` (socket, pid file, log, database
all inside it; TCP on 127.0.0.1 at a free port), starts clamd in the foreground as a child
of the test process (no `User` line, so it keeps the test's user, root included) and polls
PING until PONG. `stop()` sends SIGTERM and waits, then SIGKILL. Starting skips the test
with the reason when clamd is not installed (scripts/install-system-packages installs
clamav-daemon in CI) or does not answer in time.

The session fixture `clamd_server` (support.plugin) is one such clamd for the whole run,
started when a test first asks for it.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk_bridge.lab.sandbox.ports import free_tcp_port
from support.processes import stop_process

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "SDK-Bridge-Test.EICAR"
REPORTED = SIGNATURE + ".UNOFFICIAL"  # what clamd answers for an unsigned database
START_TIMEOUT = 20.0  # seconds
STOP_TIMEOUT = 10.0


def clamd_path() -> str | None:
    # /usr/sbin is not on every user's PATH.
    return shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")


def require_clamd() -> str:
    """Skip the calling test when clamd is not installed; return its path otherwise."""
    path = clamd_path()
    if path is None:
        pytest.skip("clamd not installed (scripts/install-system-packages: clamav-daemon)")
    return path


class Clamd:
    """One clamd process serving a Unix socket and 127.0.0.1:`port`."""

    def __init__(self, directory: Path, stream_max_length: int = 32 * 1024 * 1024) -> None:
        self.directory = directory
        self.socket = str(directory / "clamd.sock")
        self.port = free_tcp_port()
        self.log = directory / "clamd.log"
        self.stream_max_length = stream_max_length
        self.process: subprocess.Popen[bytes] | None = None
        database = directory / "db"
        database.mkdir(parents=True, exist_ok=True)
        md5 = hashlib.md5(EICAR).hexdigest()
        (database / "test.hdb").write_text(f"{md5}:{len(EICAR)}:{SIGNATURE}\n")
        self.config = directory / "clamd.conf"
        self.config.write_text(
            "\n".join(
                [
                    "Foreground yes",
                    f"LocalSocket {self.socket}",
                    "TCPAddr 127.0.0.1",
                    f"TCPSocket {self.port}",
                    f"DatabaseDirectory {database}",
                    f"PidFile {directory / 'clamd.pid'}",
                    f"TemporaryDirectory {directory}",
                    f"LogFile {self.log}",
                    f"StreamMaxLength {stream_max_length}",
                    "SelfCheck 0",
                    "AlertExceedsMax yes",  # as the plugin documentation asks
                    "",
                ]
            )
        )

    def start(self) -> Clamd:
        clamd = require_clamd()
        self.process = subprocess.Popen(
            [clamd, "--config-file", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # Foreground clamd logs to stdout too; LogFile has it
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        pytest.skip(f"clamd did not start within {START_TIMEOUT} s; its log:\n{log}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(self.socket)
                s.sendall(b"zPING\0")
                return s.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process, STOP_TIMEOUT)

    def __enter__(self) -> Clamd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def session_clamd() -> Iterator[Clamd]:
    """One clamd, in a short temporary directory (socket paths are short): the plugin's
    session fixture `clamd_server`."""
    require_clamd()
    with tempfile.TemporaryDirectory(prefix="clamd-") as directory, Clamd(Path(directory)) as c:
        yield c
