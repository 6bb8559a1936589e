"""Talking to systemd (sd_notify): ready, reloading, stopping, and the watchdog's pulse.

The protocol is one datagram per message on the socket systemd names in $NOTIFY_SOCKET
(sd_notify(3)); outside systemd that variable is unset and nothing is sent. The watchdog
is fed from a task on the event loop, so a loop that hangs stops feeding it and systemd
restarts the bridge.
"""

import asyncio
import os
import socket


def notify(state: str) -> None:
    """Send `state` ("READY=1", "STOPPING=1", …) to systemd, if it is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
        sender.connect(address)
        sender.sendall(state.encode())


def watchdog_interval() -> float | None:
    """Seconds between pulses (half of WatchdogSec), or None when no watchdog is set."""
    microseconds = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not microseconds or (pid and int(pid) != os.getpid()):
        return None
    return int(microseconds) / 1_000_000 / 2


async def feed_watchdog(interval: float, stop: asyncio.Event) -> None:
    """Pulse until `stop` is set."""
    while not stop.is_set():
        notify("WATCHDOG=1")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            continue
