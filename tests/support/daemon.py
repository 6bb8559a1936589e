"""One `sdk-bridge run` of organisation A on a sandbox, and what the tests send it."""

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml

from sdk_bridge.lab.launch import BridgeProcess
from sdk_bridge.lab.sandbox.federation import Sandbox
from support.sandboxed import FROM_A as FROM
from support.sandboxed import TO_B


def on_any_port(config: Path, **sections: object) -> dict[str, Any]:
    """The settings of `config` with `sections` changed, listening where the kernel
    chooses (the bridge says where when it is ready)."""
    settings: dict[str, Any] = yaml.safe_load(config.read_text())
    settings.update(sections)
    settings["smtp"]["listen"] = ["127.0.0.1:0"]
    if "admin" in settings:
        settings["admin"]["listen"] = "127.0.0.1:0"
    return settings


class Bridge(BridgeProcess):
    """One `sdk-bridge run` of organisation A's configuration, with `sections` changed."""

    def __init__(self, sandbox: Sandbox, name: str = "daemon", **sections: object) -> None:
        config = sandbox.directory / f"org-a-{name}.yaml"
        settings = on_any_port(sandbox.config_path("a"), **sections)
        config.write_text(yaml.safe_dump(settings, allow_unicode=True))
        super().__init__(config, options=("--log-level", "warning"))
        self.sandbox = sandbox


def mail(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = FROM, TO_B, subject
    message.set_content(f"Innehåll för {subject}.")
    return message


class Sink:
    """The organisation's smart host, as far as DSNs go: collects what it is given."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from sdk_bridge.lab.sandbox.ports import free_tcp_port

        self.messages: list[tuple[str, list[str], bytes]] = []
        self.port = free_tcp_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.original_content))
        return "250 OK"

    def stop(self) -> None:
        self.controller.stop()
