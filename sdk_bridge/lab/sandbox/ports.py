"""Ports for servers that must be told their port before they start (a sandbox's bridges,
a test's Dovecot): chosen below the kernel's ephemeral range, so no outgoing connection made
between the choosing and the binding can take the port."""

import random
import socket
from pathlib import Path

LOWEST = 10000
TRIES = 200
_handed_out: set[tuple[int, int]] = set()


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on just now and no connect() will take."""
    return _free(socket.SOCK_STREAM, host)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on `host` that nothing uses just now and no connect() will take."""
    return _free(socket.SOCK_DGRAM, host)


def _free(kind: int, host: str) -> int:
    # Below the range connect() and bind(0) draw from; handed out once per process.
    highest = _ephemeral_low() - 1
    for _ in range(TRIES if highest > LOWEST else 0):
        port = random.randint(LOWEST, highest)
        if (kind, port) in _handed_out:
            continue
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add((kind, port))
        return port
    with socket.socket(socket.AF_INET, kind) as probe:  # a kernel with no room below
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
