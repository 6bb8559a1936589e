"""Both organisations' bridges running, B's delivering over IMAPS to a real Dovecot."""

from pathlib import Path

import yaml

from sdk_bridge.lab.launch import BridgeProcess
from sdk_bridge.lab.sandbox.federation import Sandbox
from support import dovecot
from support.daemon import on_any_port
from support.dovecot import Dovecot


class Bridge(BridgeProcess):
    """One organisation's `sdk-bridge run`, delivering its registrator's mail over IMAPS."""

    log: Path

    def __init__(self, sandbox: Sandbox, label: str, server: Dovecot, user: str, folder: str):
        self.label = label
        settings = on_any_port(sandbox.config_path(label))
        settings["functional_addresses"][0]["deliver_to"] = {
            "plugin": "imap",
            "port": server.imaps_port,
            "cafile": str(server.cafile),
            "user": user,
            "password": dovecot.USERS[user],
            "folder": folder,
        }
        settings["outbound"] = {"poll_seconds": 0.3}
        config = sandbox.directory / f"e2e-{label}.yaml"
        config.write_text(yaml.safe_dump(settings, allow_unicode=True))
        super().__init__(config, sandbox.directory / f"e2e-{label}.log")
