"""What the commands share: usage errors, keys and files named on the command line, the
configuration's spool."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from .. import config
from ..sdk.keys import KeyError_, KeyPair, load_certificates, load_keypair, read_passphrase

if TYPE_CHECKING:  # imported when used: most commands need no registry
    from ..spool import Spool


PASSPHRASE_ENV = "SDK_BRIDGE_KEY_PASSPHRASE"


class UsageError(Exception):
    """Reported as `sdk-bridge: error: ...` with exit code 2."""


def _keypair(key: str, cert: str | None, args: argparse.Namespace) -> KeyPair:
    try:
        if args.passphrase_file:
            passphrase: bytes | None = read_passphrase(Path(args.passphrase_file))
        else:
            passphrase = os.environ.get(PASSPHRASE_ENV, "").encode() or None
        return load_keypair(Path(key), Path(cert) if cert else None, passphrase)
    except (KeyError_, OSError) as e:
        raise UsageError(str(e)) from None


def _certificates(paths: Sequence[str] | None) -> list[x509.Certificate] | None:
    if not paths:
        return None
    try:
        return [c for p in paths for c in load_certificates(Path(p))]
    except (KeyError_, OSError) as e:
        raise UsageError(str(e)) from None


def _read(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None


def _write(data: bytes | bytearray, output: str | None) -> None:
    if output:
        try:
            Path(output).write_bytes(data)
        except OSError as e:
            raise UsageError(f"{output}: {e.strerror}") from None
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def _at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: not an ISO 8601 time: {value}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _spool_config(config_file: str) -> config.Config:
    try:
        loaded = config.load(Path(config_file))
    except config.ConfigError as e:
        raise UsageError(str(e)) from None
    if loaded.spool is None:
        raise UsageError(f"{config_file}: the configuration has no spool")
    return loaded


def _spool(config_file: str, loaded: config.Config | None = None) -> Spool:
    from ..plugin import PluginError

    try:
        return config.open_spool(loaded or _spool_config(config_file))
    except PluginError as e:
        raise UsageError(f"{config_file}: {e}") from None
