"""A sandbox federation and two organisations' running bridges on this machine.

What `sdk-bridge demo` and `sdk-bridge bench` stand on: the sandbox (address book,
SMP/CertPub, access points) in this process, and for organisations A and B a real
`sdk-bridge run` each, a child process with its log in the run's directory and its
registrator's incoming mail in a Maildir. An organisation whose spool is a database may
get more instances (`start_instance`), as a region runs several gateways on one database.
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
from typing import Any

import yaml

from .. import config
from ..spool import Spool
from .sandbox.federation import HOST, Sandbox
from .sandbox.ports import free_tcp_port

START_TIMEOUT = 30.0  # seconds for a bridge to say it is ready
SEND_RETRY_SECONDS = 30.0  # how long a 4xx (the address book still loading) is retried


class LocalRunFailed(Exception):
    """Something did not start or answer; the text says what."""


@dataclass
class RunningBridge:
    label: str  # the organisation
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
        interface: str = "wsplugin",
        organisations: int = 2,
        shared_access_point: bool | None = None,
        admin_plugin_users: bool | None = None,
        log_json: bool = False,
    ) -> None:
        """`outbound`: more `outbound` settings per bridge label, for tests; `deliver_to`:
        the mailbox for every functional address of a label, instead of a Maildir;
        `spools`: a label's spool back end, as `Sandbox` takes it (SQLite if not given);
        `log_json`: the bridges log JSON (`--log-json`); the rest as `Sandbox` takes them.
        Bridges run for A and B; a third organisation has none."""
        self.directory = directory
        self.sandbox = Sandbox(
            directory / "sandbox",
            organisations,
            key_size=key_size,
            retention_minutes=retention_minutes,
            spools=spools,
            shared_access_point=shared_access_point,
            admin_plugin_users=admin_plugin_users,
            interface=interface,
        )
        self.poll_seconds = poll_seconds
        self.outbound = outbound or {}
        self.deliver_to = deliver_to or {}
        self.log_json = log_json
        # By instance name: the organisation's label for its first bridge.
        self.bridges: dict[str, RunningBridge] = {}

    def start(self) -> None:
        """The sandbox, then both bridges; on failure whatever started is stopped."""
        try:
            self.sandbox.start()
            for label in ("a", "b"):
                self.bridges[label] = self._start_bridge(label, label)
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

    def start_instance(self, label: str, name: str) -> RunningBridge:
        """Another bridge of organisation `label`, called `name` here (`bridges[name]`,
        `config(name)`, `spool(name)`), on the same spool database as its first: its own
        SMTP and admin ports, spool directory and registry cache, as on another machine;
        the same access point, keys and mailboxes. Started after `start`."""
        if name in self.bridges:
            raise ValueError(f"there is a bridge called {name!r} already")
        if isinstance(self._settings(label)["spool"], str):
            raise ValueError(
                f"{label.upper()}'s spool is SQLite: a second instance needs a database"
            )
        self.bridges[name] = self._start_bridge(label, name)
        return self.bridges[name]

    def kill(self, name: str, restart: bool = True) -> None:
        """SIGKILL the bridge `name` and start it again, as systemd would restart it (or,
        without `restart`, leave it dead, as a machine that went down)."""
        bridge = self.bridges[name]
        bridge.process.kill()
        bridge.process.wait()
        if bridge.process.stdout is not None:
            bridge.process.stdout.close()
        if restart:
            self.bridges[name] = self._start_bridge(bridge.label, name)

    def maildir(self, label: str) -> Path:
        """Where `label`'s registrator gets its mail."""
        return self.sandbox.maildir(self.sandbox.organisations[label].addresses[0])

    def send(self, name: str, sender: str, recipient: str, mail: EmailMessage) -> None:
        """Send through bridge `name` as an MTA would: a 4xx is tried again a while."""
        send_mail((HOST, self.bridges[name].port), name, sender, recipient, mail)

    def kvittens(self, label: str) -> dict[str, str]:
        """SDK messageId -> the kvittens outcome `label` holds for what it sent."""
        try:
            with self.spool(label) as spool:
                deliveries = spool.deliveries()
        except sqlite3.OperationalError:  # busy: look again
            return {}
        outcomes = {d.sdk_message_id: d.notes.kvittens for d in deliveries}
        return {sdk_id: outcome for sdk_id, outcome in outcomes.items() if outcome}

    def spool(self, name: str) -> contextlib.AbstractContextManager[Spool]:
        """Bridge `name`'s spool, opened as its configuration names it."""
        return opened_spool(self.config(name))

    def config(self, name: str) -> Path:
        return self.sandbox.directory / f"local-{name}.yaml"

    def _settings(self, label: str) -> dict[str, Any]:
        """The sandbox's configuration of `label`'s bridge with this run's changes."""
        settings: dict[str, Any] = yaml.safe_load(self.sandbox.config_path(label).read_text())
        outbound = {"poll_seconds": self.poll_seconds, **self.outbound.get(label, {})}
        settings["outbound"] = {**settings.get("outbound", {}), **outbound}
        if label in self.deliver_to:
            for address in settings["functional_addresses"]:
                address["deliver_to"] = self.deliver_to[label]
        return settings

    def _start_bridge(self, label: str, name: str) -> RunningBridge:
        """The bridge `name` of organisation `label`: its first (the sandbox's ports and
        directories) when `name` is the label, else another instance."""
        settings = self._settings(label)
        port = self.sandbox.smtp_port(label)
        state = Path("state") / label
        if name != label:
            port, state = free_tcp_port(), Path("state") / f"{label}-{name}"
            settings["smtp"]["listen"] = [f"{HOST}:{port}"]
            settings["admin"]["listen"] = f"{HOST}:{free_tcp_port()}"
            settings["registry"]["cache_dir"] = str(state)
            settings["spool"]["directory"] = str(state / "spool")  # its name on its leases
        config = self.config(name)
        config.write_text(yaml.safe_dump(settings, allow_unicode=True, sort_keys=False))
        log = self.directory / f"bridge-{name}.log"
        process = start_bridge(config, log, json=self.log_json)
        spool = self.sandbox.directory / state / "spool"
        return RunningBridge(label, process, port, log, spool)


def start_bridge(config: Path, log: Path, json: bool = False) -> subprocess.Popen[str]:
    """`sdk-bridge run -c config`, its log appended to `log` (a restarted bridge goes on in
    the same log), once it says it is ready; LocalRunFailed if it does not in time."""
    options = ["--log-json"] if json else []
    with log.open("a") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", *options, "run", "-c", str(config)],
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


def send_mail(
    address: tuple[str, int], name: str, sender: str, recipient: str, mail: EmailMessage
) -> None:
    """Send to the bridge `name` listening at `address` as an MTA would: a 4xx (its address
    book still loading) is tried again a while."""
    deadline = time.monotonic() + SEND_RETRY_SECONDS
    while True:
        try:
            with smtplib.SMTP(*address, timeout=60) as smtp:
                smtp.send_message(mail, sender, [recipient])
            return
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            if code < 500 and time.monotonic() < deadline:
                time.sleep(0.3)
                continue
            raise LocalRunFailed(f"{name.upper()} refused {recipient}: {code} {text!r}") from e
        except (smtplib.SMTPException, OSError) as e:
            raise LocalRunFailed(f"sending to {name.upper()} failed: {e}") from e


@contextlib.contextmanager
def opened_spool(config_file: Path) -> Iterator[Spool]:
    """The spool `config_file` names, SQLite or a database, opened beside the bridge that
    runs on it: a look at its state that does not depend on the back end."""
    spool = config.open_spool(config.load(config_file))
    try:
        yield spool
    finally:
        spool.close()
