"""Checks for plugin settings, shared by the first-party plugins and open to any other.

Each raises ValueError with a text that names the setting; `sdk_bridge.plugin.load` turns it
into a PluginError, which the configuration loader reports with the file line.
"""

import ipaddress
import os
import ssl
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any


def only(settings: Mapping[str, Any], known: Set[str]) -> None:
    """Refuse settings the plugin does not know: a misspelt key must not pass unnoticed."""
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")


def positive(
    settings: Mapping[str, Any], key: str, default: float, *, whole: bool = False
) -> float:
    """`settings[key]` (or `default`): a number above zero; a whole number if `whole`."""
    value = settings.get(key, default)
    allowed = isinstance(value, int) or (isinstance(value, float) and not whole)
    if isinstance(value, bool) or not allowed or value <= 0:
        kind = "whole number" if whole else "number"
        raise ValueError(f"`{key}` must be a positive {kind}, not {value!r}")
    return value  # as given: 1 stays 1


def port(value: Any) -> int:
    """A TCP port number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"`port` must be a TCP port number, not {value!r}")
    return value


def file_path(settings: Mapping[str, Any], key: str) -> Path | None:
    """`settings[key]`, a file's path, with environment variables expanded (under systemd a
    secret is `$CREDENTIALS_DIRECTORY/<name>`); None when not set."""
    value = settings.get(key)
    if value is None:
        return None
    if not (isinstance(value, str) and value):
        raise ValueError(f"`{key}` must be a path, not {value!r}")
    expanded = os.path.expandvars(value)
    if "$" in expanded:
        raise ValueError(
            f"`{key}` {expanded}: names an environment variable that is not set"
            " ($CREDENTIALS_DIRECTORY is set by systemd's LoadCredential=)"
        )
    return Path(expanded)


def is_loopback(host: Any) -> bool:
    """Whether `host` is "localhost" or a loopback address (127.0.0.0/8, ::1): the only
    places a plugin may talk without TLS."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_client_context(settings: Mapping[str, Any]) -> ssl.SSLContext:
    """A verifying TLS 1.2+ client context; `cafile` (optional) replaces the system's CAs."""
    cafile = file_path(settings, "cafile")
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
