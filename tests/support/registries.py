"""Registry clients for the sandbox's organisations, and a cache in memory."""

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

from sdk_bridge import config
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.registry.client import Registry


class MemoryCache:
    """A `Cache` in a dict, as a database table would hold it."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[bytes, datetime]] = {}

    def get(self, name: str) -> tuple[bytes, datetime] | None:
        return self.blobs.get(name)

    def put(self, name: str, data: bytes) -> None:
        self.blobs[name] = (data, datetime.now(UTC))


def registry_for(
    sandbox: Sandbox, label: str, cache: Path, shared: MemoryCache | None = None
) -> Registry:
    """An organisation's registry client, from the configuration the sandbox wrote."""
    loaded = config.load(sandbox.config_path(label))
    assert loaded.registry is not None
    registry = dataclasses.replace(loaded.registry, cache_dir=cache)
    return config.open_registry(dataclasses.replace(loaded, registry=registry), shared)
