"""A sandbox federation and two organisations' running bridges on this machine.

What `sdk-bridge demo` and `sdk-bridge bench` stand on: the sandbox (address book,
SMP/CertPub, access points) in this process, and for organisations A and B a real
`sdk-bridge run` each, a child process with its log in the run's directory and its
registrator's incoming mail in a Maildir. An organisation whose spool is a database may
get more instances (`start_instance`), as a region runs several gateways on one database.
"""

import contextlib
import smtplib
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml

from .. import config
from ..spool import Spool
from .launch import BridgeDidNotStart, BridgeProcess
from .sandbox.federation import HOST, Sandbox

SEND_RETRY_SECONDS = 30.0  # how long a 4xx (the address book still loading) is retried


class LocalRunFailed(Exception):
    """Something did not start or answer; the text says what."""


class RunningBridge(BridgeProcess):
    """One of the run's bridges: organisation `label`'s, its spool directory `spool`."""

    def __init__(self, label: str, config: Path, log: Path, spool: Path, json: bool) -> None:
        super().__init__(config, log, ["--log-json"] if json else [])
        self.label, self.spool = label, spool

    @property
    def port(self) -> int:  # SMTP
        return self.smtp_port


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
            if bridge.running():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    bridge.stop()
            bridge.close()
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
        bridge.close()
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
        state = Path("state") / label
        if name != label:  # its ports are the kernel's choice: it says which when ready
            state = Path("state") / f"{label}-{name}"
            settings["smtp"]["listen"] = [f"{HOST}:0"]
            settings["admin"]["listen"] = f"{HOST}:0"
            settings["registry"]["cache_dir"] = str(state)
            settings["spool"]["directory"] = str(state / "spool")  # its name on its leases
        config = self.config(name)
        config.write_text(yaml.safe_dump(settings, allow_unicode=True, sort_keys=False))
        log = self.directory / f"bridge-{name}.log"
        spool = self.sandbox.directory / state / "spool"
        bridge = RunningBridge(label, config, log, spool, self.log_json)
        try:
            bridge.start()
        except BridgeDidNotStart as e:
            raise LocalRunFailed(f"{config} did not start a bridge (see {log})") from e
        return bridge


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
