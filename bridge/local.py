"""A sandbox federation and two organisations' running bridges on this machine.

What `sdk-bridge demo` and `sdk-bridge bench` stand on: the sandbox (address book,
SMP/CertPub, access points) in this process, and for organisations A and B a real
`sdk-bridge run` each, a child process with its log in the run's directory and its
registrator's incoming mail in a Maildir.
"""

import contextlib
import os
import select
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import yaml

from . import config
from .sandbox.federation import HOST, Sandbox
from .spool import Spool

START_TIMEOUT = 30.0  # seconds for a bridge to say it is ready
SEND_RETRY_SECONDS = 30.0  # how long a 4xx (the address book still loading) is retried


class LocalRunFailed(Exception):
    """Something did not start or answer; the text says what."""


@dataclass
class RunningBridge:
    label: str
    process: subprocess.Popen[str]
    port: int  # SMTP
    log: Path
    spool: Path


class LocalRun:
    def __init__(
        self,
        directory: Path,
        key_size: int,
        poll_seconds: float = 0.3,
        retention_minutes: int | None = None,
        outbound: dict[str, dict[str, object]] | None = None,
        deliver_to: dict[str, dict[str, object]] | None = None,
        spools: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """`outbound`: more `outbound` settings per bridge label, for tests; `deliver_to`:
        the mailbox for every functional address of a label, instead of a Maildir;
        `spools`: a label's spool back end, as `Sandbox` takes it (SQLite if not given)."""
        self.directory = directory
        self.sandbox = Sandbox(
            directory / "sandbox",
            2,
            key_size=key_size,
            retention_minutes=retention_minutes,
            spools=spools,
        )
        self.poll_seconds = poll_seconds
        self.outbound = outbound or {}
        self.deliver_to = deliver_to or {}
        self.bridges: dict[str, RunningBridge] = {}

    def start(self) -> None:
        """The sandbox, then both bridges; on failure whatever started is stopped."""
        try:
            self.sandbox.start()
            for label in ("a", "b"):
                self.bridges[label] = self._start_bridge(label)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for bridge in self.bridges.values():
            if bridge.process.poll() is None:
                bridge.process.send_signal(signal.SIGTERM)
                try:
                    bridge.process.wait(START_TIMEOUT)
                except subprocess.TimeoutExpired:
                    bridge.process.kill()
                    bridge.process.wait()
            if bridge.process.stdout is not None:
                bridge.process.stdout.close()
        self.sandbox.stop()

    def kill(self, label: str) -> None:
        """SIGKILL `label`'s bridge and start it again, as systemd would restart it."""
        bridge = self.bridges[label]
        bridge.process.kill()
        bridge.process.wait()
        if bridge.process.stdout is not None:
            bridge.process.stdout.close()
        self.bridges[label] = self._start_bridge(label)

    def maildir(self, label: str) -> Path:
        """Where `label`'s registrator gets its mail."""
        return self.sandbox.maildir(self.sandbox.organisations[label].addresses[0])

    def send(self, label: str, sender: str, recipient: str, mail: EmailMessage) -> None:
        """Send through `label`'s bridge as an MTA would: a 4xx is tried again a while."""
        deadline = time.monotonic() + SEND_RETRY_SECONDS
        while True:
            try:
                with smtplib.SMTP(HOST, self.bridges[label].port, timeout=60) as smtp:
                    smtp.send_message(mail, sender, [recipient])
                return
            except smtplib.SMTPRecipientsRefused as e:
                code, text = next(iter(e.recipients.values()))
                if code < 500 and time.monotonic() < deadline:
                    time.sleep(0.3)
                    continue
                raise LocalRunFailed(f"{label.upper()} refused {recipient}: {code} {text!r}") from e
            except (smtplib.SMTPException, OSError) as e:
                raise LocalRunFailed(f"sending to {label.upper()} failed: {e}") from e

    def kvittens(self, label: str) -> dict[str, str]:
        """SDK messageId -> the kvittens outcome `label` holds for what it sent."""
        try:
            with self.spool(label) as spool:
                deliveries = spool.deliveries()
        except sqlite3.OperationalError:  # busy: look again
            return {}
        outcomes = {d.sdk_message_id: d.notes.get("kvittens") for d in deliveries}
        return {sdk_id: outcome for sdk_id, outcome in outcomes.items() if outcome}

    def spool(self, label: str) -> contextlib.AbstractContextManager[Spool]:
        """`label`'s spool, opened as its running bridge's configuration names it."""
        return opened_spool(self.config(label))

    def config(self, label: str) -> Path:
        return self.sandbox.directory / f"local-{label}.yaml"

    def _start_bridge(self, label: str) -> RunningBridge:
        settings = yaml.safe_load(self.sandbox.config_path(label).read_text())
        outbound = {"poll_seconds": self.poll_seconds, **self.outbound.get(label, {})}
        settings["outbound"] = {**settings.get("outbound", {}), **outbound}
        if label in self.deliver_to:
            for address in settings["functional_addresses"]:
                address["deliver_to"] = self.deliver_to[label]
        config = self.config(label)
        config.write_text(yaml.safe_dump(settings, allow_unicode=True, sort_keys=False))
        log = self.directory / f"bridge-{label}.log"
        process = start_bridge(config, log)
        spool = self.sandbox.directory / "state" / label / "spool"
        return RunningBridge(label, process, self.sandbox.smtp_port(label), log, spool)


def start_bridge(config: Path, log: Path) -> subprocess.Popen[str]:
    """`sdk-bridge run -c config`, its log appended to `log` (a restarted bridge goes on in
    the same log), once it says it is ready; LocalRunFailed if it does not in time."""
    with log.open("a") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert process.stdout is not None
    # The daemon prints one line once it listens; a bridge that hangs must not hang us.
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("sdk-bridge ready"):
        process.kill()
        process.wait()
        raise LocalRunFailed(f"{config} did not start a bridge (see {log})")
    return process


@contextlib.contextmanager
def opened_spool(config_file: Path) -> Iterator[Spool]:
    """The spool `config_file` names, SQLite or a database, opened beside the bridge that
    runs on it: a look at its state that does not depend on the back end."""
    spool = config.open_spool(config.load(config_file))
    try:
        yield spool
    finally:
        spool.close()
