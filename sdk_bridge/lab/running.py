"""Two bridges already running, known by their configuration files: what `sdk-bridge bench
--running` needs to measure them without starting anything.

From A's configuration: where it takes mail over SMTP, a sender it accepts, its signing key
size and its spool (where the kvittens show). From B's: its first functional address, whose
e-mail form under A's SDK domain is the recipient, and the Maildir it delivers into. Each
bridge's process is looked for on this machine by its command line (`sdk-bridge run -c
FILE`, `python -m sdk_bridge.cli run -c FILE`), for its RSS and CPU; a bridge not found (on
another machine, or another user's with a relative configuration path) is measured without
them, and the report says why.
"""

import fnmatch
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .. import config, plugin
from ..registry.addresses import encoded, is_local_part

SENDER_LOCAL_PART = "sdk-bridge-bench"  # put into a sender pattern's wildcard


class Unusable(ValueError):
    """The configurations do not describe two bridges a run can measure; the text says
    which setting is missing or in the way."""


@dataclass(frozen=True)
class Bridges:
    """The bridges a run measures, whether it started them or not."""

    smtp: dict[str, tuple[str, int]]  # A's SMTP address by instance name: a (a2, ...)
    sender: str
    recipient: str
    config_a: Path  # its spool holds the kvittens
    pids: dict[str, int]  # by name: a (a2, ...), b
    missing: dict[str, str] = field(default_factory=dict)  # name -> why no process was found


@dataclass(frozen=True)
class Running:
    """What the two configurations say, and where the two processes are."""

    bridges: Bridges
    maildir: Path | None  # B's, to watch; None when it delivers elsewhere (watched by IMAP)
    key_size: int  # of A's signing key
    spool: str  # A's spool back end


def find_running(config_a: Path, config_b: Path, imap: bool) -> Running:
    """The running pair `config_a` (the sender) and `config_b`; with `imap`, B's mailbox is
    watched over IMAP, so it need not be a Maildir."""
    a, b = _load(config_a, "A"), _load(config_b, "B")
    if not b.functional_addresses:
        raise Unusable(f"{config_b}: B has no functional_addresses to send to")
    maildir = None if imap else _maildir(b, config_b)
    pids: dict[str, int] = {}
    missing: dict[str, str] = {}
    for name, path in (("a", config_a), ("b", config_b)):
        try:
            pids[name] = _bridge_pid(path)
        except LookupError as e:
            missing[name] = str(e)
    bridges = Bridges(
        smtp={"a": _smtp_address(a, config_a)},
        sender=_sender(a, config_a),
        recipient=_recipient(a, b, config_a),
        config_a=config_a,
        pids=pids,
        missing=missing,
    )
    return Running(bridges, maildir, a.signing.key.key_size, a.spool_backend[0])


def _load(path: Path, label: str) -> config.Config:
    if not path.is_file():
        raise Unusable(f"{path}: no such configuration file (of bridge {label})")
    try:
        loaded = config.load(path)
    except config.ConfigError as e:
        raise Unusable(str(e)) from None
    if loaded.spool is None:
        raise Unusable(f"{path}: bridge {label} has no spool")
    return loaded


def _smtp_address(a: config.Config, path: Path) -> tuple[str, int]:
    """A's first plain SMTP listener, as a client on this machine reaches it, once it is
    clear that A takes mail from this machine without AUTH, as the run sends it."""
    if a.smtp is None or not a.smtp.listen:
        raise Unusable(f"{path}: smtp.listen: A takes no plain SMTP, which the run sends")
    host, port = a.smtp.listen[0]
    listening = ipaddress.ip_address(host)
    if listening.is_unspecified:
        host = "::1" if listening.version == 6 else "127.0.0.1"
    client = _client_address(host, port)
    networks = [ipaddress.ip_network(n, strict=False) for n in a.smtp.allowed_networks]
    if not any(client in network for network in networks):
        raise Unusable(
            f"{path}: smtp.allowed_networks: mail from {client}, where the run sends from,"
            f" needs AUTH (smtp.users), which the run does not do; add {client}/"
            f"{client.max_prefixlen} to A's smtp.allowed_networks"
        )
    return host, port


def _client_address(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address this machine sends from to `host`: what A's allowed_networks must hold.
    A UDP socket's connect picks it without sending anything."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        address = ipaddress.ip_address(probe.getsockname()[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _sender(a: config.Config, path: Path) -> str:
    """The first of A's sender patterns that a plain address fits, a wildcard filled in."""
    for address in a.functional_addresses:
        for pattern in address.senders:
            candidate = pattern.replace("*", SENDER_LOCAL_PART).replace("?", "x")
            if "@" in candidate and fnmatch.fnmatchcase(candidate.lower(), pattern.lower()):
                return candidate
    raise Unusable(
        f"{path}: functional_addresses: senders: A lists no sender the run can send as"
        " (such as registrator@kommun.se or *@kommun.se)"
    )


def _recipient(a: config.Config, b: config.Config, path: Path) -> str:
    """B's first functional address under A's SDK domain, in a form that needs no alias
    from the address book: its identifier, or the encoded form (`fa-...`)."""
    if a.sdk_domain is None:
        raise Unusable(f"{path}: organisation.sdk_domain: A has none, so no SDK recipient")
    identifier = b.functional_addresses[0].id
    local = identifier if is_local_part(identifier) else encoded(identifier)
    organisation = b.organisation_id.removeprefix("0203:").lower()
    return f"{local}@{organisation}.{a.sdk_domain}"


def _maildir(b: config.Config, path: Path) -> Path:
    """Where B delivers its first functional address's mail: the Maildir its `deliver_to`
    names, or without one the daemon's default in the spool directory."""
    assert b.spool is not None
    address = b.functional_addresses[0]
    if address.deliver_to is None:
        return b.spool / "mailboxes" / address.id
    name, settings = address.deliver_to
    if name != "maildir":
        raise Unusable(
            f"{path}: functional_addresses: deliver_to: B delivers {address.id}'s mail through"
            f" the {name} plugin; give --imap with the folder it ends in"
        )
    from sdk_bridge_plugins.maildir import (
        Maildir,  # the first-party plugin, whose layout this reads
    )

    box = plugin.load(plugin.MAILBOXES, name, settings)
    assert isinstance(box, Maildir)
    return box.directory


def _bridge_pid(config_file: Path) -> int:
    """The process of `sdk-bridge run` with `config_file` on this machine; LookupError
    saying why there is not exactly one."""
    wanted = config_file.stat()
    found, unreadable = [], 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            continue
        given = _config_argument(argv)
        if given is None:
            continue
        try:
            path = Path(given)
            if not path.is_absolute():  # from the bridge's working directory
                path = Path(os.readlink(entry / "cwd")) / path
            same = path.stat()
        except OSError:  # gone, or another user's: its working directory is not ours to see
            unreadable += 1
            continue
        if (same.st_dev, same.st_ino) == (wanted.st_dev, wanted.st_ino):
            found.append(int(entry.name))
    if len(found) == 1:
        return found[0]
    if found:
        raise LookupError(f"{len(found)} processes run with {config_file}: {found}")
    where = f" ({unreadable} bridges' configurations could not be told)" if unreadable else ""
    raise LookupError(f"no `sdk-bridge run -c {config_file}` on this machine{where}")


def _config_argument(argv: list[str]) -> str | None:
    """FILE of a bridge daemon's command line (`... sdk-bridge run -c FILE`, `... -m
    sdk_bridge.cli run --config=FILE`), or None for any other process."""
    if "run" not in argv or not (
        "sdk_bridge.cli" in argv or any(Path(arg).name == "sdk-bridge" for arg in argv)
    ):
        return None
    after = argv[argv.index("run") + 1 :]
    for number, arg in enumerate(after):
        if arg in ("-c", "--config") and number + 1 < len(after):
            return after[number + 1]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
        if arg.startswith("-c") and len(arg) > 2:
            return arg[2:]
    return None
