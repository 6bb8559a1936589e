"""The `sdk-bridge` command: each group of commands registers its own (`envelopes`,
`operate`, `lab`) beside the code that runs them.

Exit codes: 0 success (for `open`: the input is valid), 1 the input is not valid,
2 usage errors (bad options, unreadable files or keys).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence

from .. import __version__
from ..runtime import logs as bridge_logging
from . import envelopes, lab, operate
from .common import PASSPHRASE_ENV, UsageError

__all__ = ["PASSPHRASE_ENV", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdk-bridge",
        description="Connects an organisation's e-mail to SDK, Säker digital kommunikation.",
    )
    parser.add_argument("--version", action="version", version=f"sdk-bridge {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument("--log-json", action="store_true", help="log JSON lines")
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"passphrase for encrypted keys (default: ${PASSPHRASE_ENV})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (envelopes, operate, lab):
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever it writes (spool, mail, keys, the sandbox's passwords) is its owner's alone,
    # as Postfix does it, also when started by hand from a shell with umask 022.
    previous = os.umask(0o077)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        bridge_logging.configure(args.log_level, args.log_json)
        run: Callable[[argparse.Namespace], int] = args.run
        try:
            return run(args)
        except UsageError as e:
            parser.exit(2, f"sdk-bridge: error: {e}\n")
    finally:
        os.umask(previous)  # called in-process (tests), the caller's umask comes back
