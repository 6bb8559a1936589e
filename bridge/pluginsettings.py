"""Checks for plugin settings, shared by the first-party plugins and open to any other.

Each raises ValueError with a text that names the setting; `bridge.plugins.load` turns it
into a PluginError, which the configuration loader reports with the file line.
"""

import ipaddress
from collections.abc import Mapping
from typing import Any


def positive(
    settings: Mapping[str, Any], key: str, default: float, *, whole: bool = False
) -> float:
    """`settings[key]` (or `default`): a number above zero; a whole number if `whole`."""
    value = settings.get(key, default)
    types: tuple[type, ...] = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, types) or value <= 0:
        kind = "whole number" if whole else "number"
        raise ValueError(f"`{key}` must be a positive {kind}, not {value!r}")
    return value


def port(value: Any) -> int:
    """A TCP port number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"`port` must be a TCP port number, not {value!r}")
    return value


def is_loopback(host: Any) -> bool:
    """Whether `host` is "localhost" or a loopback address (127.0.0.0/8, ::1): the only
    places a plugin may talk without TLS."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
