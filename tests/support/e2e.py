"""Both organisations' bridges running, B's delivering over IMAPS to a real Dovecot."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import yaml

from bridge.lab.sandbox.federation import Sandbox
from support import dovecot
from support.dovecot import Dovecot

START_TIMEOUT = 60.0


class Bridge:
    """One organisation's `sdk-bridge run`, delivering its registrator's mail over IMAPS."""

    def __init__(self, sandbox: Sandbox, label: str, server: Dovecot, user: str, folder: str):
        self.label = label
        self.port = sandbox.smtp_port(label)
        settings = yaml.safe_load(sandbox.config_path(label).read_text())
        settings["functional_addresses"][0]["deliver_to"] = {
            "plugin": "imap",
            "port": server.imaps_port,
            "cafile": str(server.cafile),
            "user": user,
            "password": dovecot.USERS[user],
            "folder": folder,
        }
        settings["outbound"] = {"poll_seconds": 0.3}
        self.config = sandbox.directory / f"e2e-{label}.yaml"
        self.config.write_text(yaml.safe_dump(settings, allow_unicode=True))
        self.log = sandbox.directory / f"e2e-{label}.log"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "run", "-c", str(self.config)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("sdk-bridge ready"), self.log.read_text()[-3000:]

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(timeout=START_TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.process = None
        return code


def wait_for(probe: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
