"""One `sdk-bridge run` of organisation A on a sandbox, and what the tests send it."""

import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage

from bridge.lab.sandbox.federation import Sandbox
from support.sandboxed import FROM_A as FROM
from support.sandboxed import TO_B

START_TIMEOUT = 60.0


class Bridge:
    """One `sdk-bridge run -c org-a.yaml` process."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.config = sandbox.config_path("a")
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "bridge.cli",
            "--log-level",
            "warning",
            "run",
            "-c",
            str(self.config),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        deadline = time.monotonic() + START_TIMEOUT
        line = self.process.stdout.readline()
        assert line.startswith("sdk-bridge ready"), line
        assert time.monotonic() < deadline

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(timeout=60)
        self.process = None
        return code


def mail(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = FROM, TO_B, subject
    message.set_content(f"Innehåll för {subject}.")
    return message


def wait_until(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


class Sink:
    """The organisation's smart host, as far as DSNs go: collects what it is given."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from bridge.lab.sandbox.ports import free_tcp_port

        self.messages: list[tuple[str, list[str], bytes]] = []
        self.port = free_tcp_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.original_content))
        return "250 OK"

    def stop(self) -> None:
        self.controller.stop()
