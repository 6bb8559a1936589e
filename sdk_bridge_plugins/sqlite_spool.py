"""The embedded SQLite spool (the default) as a spool plugin, so every back end is chosen
the same way (sdk_bridge/plugin, group sdk_bridge.spools)."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdk_bridge.plugin.spools import SQLiteSpool


def sqlite(settings: Mapping[str, Any]) -> SQLiteSpool:
    """The spool in `directory`: bodies as files, the queue in SQLite."""
    return SQLiteSpool(Path(settings["directory"]))
