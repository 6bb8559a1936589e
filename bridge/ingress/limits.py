"""How many SMTP connections at once: per client and in all, as Postfix's anvil counts them.

One host must not be able to take every connection (Postfix's
`smtpd_client_connection_count_limit`), and all clients together must stay below the
process's file descriptor limit, so that the spool, the access point poll and the admin
port keep theirs whatever the SMTP side does. A client is its IPv4 address, or its IPv6
/64: one machine on IPv6 has a whole /64 to choose from.
"""

import ipaddress
import time
from dataclasses import dataclass, field

TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address; try again later"
TOO_MANY = "421 4.7.0 Too many connections; try again later"
REFUSAL_LOG_SECONDS = 60.0  # refusals are logged at most once a minute, with a count


def client_key(host: str) -> str:
    """The address a limit counts by: IPv4 as it is, IPv6 as its /64."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # a dual-stack listener sees ::ffff:10.1.2.3
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class ConnectionLimits:
    """Counts open connections; `admit` says whether one more may be served (the limits
    are passed in, as a reload may change them while connections are open)."""

    open: dict[str, int] = field(default_factory=dict)  # client key -> connections
    open_total: int = 0
    _refused: int = 0  # since the last report
    _reported: float = float("-inf")

    def admit(self, key: str, *, per_client: int, total: int) -> str | None:
        """Count a connection from `key` and return None, or the reply that refuses it."""
        if self.open_total >= total:
            return TOO_MANY
        if self.open.get(key, 0) >= per_client:
            return TOO_MANY_FROM_CLIENT
        self.open[key] = self.open.get(key, 0) + 1
        self.open_total += 1
        return None

    def release(self, key: str) -> None:
        left = self.open.get(key, 0) - 1
        if left > 0:
            self.open[key] = left
        else:
            self.open.pop(key, None)
        self.open_total -= 1

    def refusals_to_report(self) -> int:
        """Count a refusal; how many to report now (0 within a minute of the last report):
        a flood must not become a flood of log lines."""
        self._refused += 1
        now = time.monotonic()
        if now - self._reported < REFUSAL_LOG_SECONDS:
            return 0
        count, self._refused, self._reported = self._refused, 0, now
        return count
