"""The configuration file: YAML, checked key by key, every error naming the key and its
line. `reader` reads the file into nodes that know their line, `schema` is what a checked
file says, and `loading` reads each section into it."""

from .loading import load, open_registry, open_spool
from .reader import ConfigError
from .schema import (
    AccessPointConfig,
    AdminConfig,
    Config,
    FunctionalAddressConfig,
    OutboundConfig,
    SMTPConfig,
    describe,
)

__all__ = [
    "AccessPointConfig",
    "AdminConfig",
    "Config",
    "ConfigError",
    "FunctionalAddressConfig",
    "OutboundConfig",
    "SMTPConfig",
    "describe",
    "load",
    "open_registry",
    "open_spool",
]
