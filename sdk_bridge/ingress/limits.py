"""Limits on SMTP clients: connections at once (`ConnectionLimits`) and password guessing
(`AuthThrottle`), per client and in all, as Postfix's anvil counts them.

One host must not be able to take every connection (Postfix's
`smtpd_client_connection_count_limit`), and all clients together must stay below the
process's file descriptor limit, so that the spool, the access point poll and the admin
port keep theirs whatever the SMTP side does. A client is its IPv4 address, or its IPv6
/64: one machine on IPv6 has a whole /64 to choose from.
"""

import ipaddress
import time
from collections import deque
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


AUTH_FREE_FAILURES = 3  # failures within the window before failed replies slow down
AUTH_MAX_DELAY = 30.0  # seconds a failed AUTH waits at most (per login, in turn)
_MAX_REMEMBERED = 1000  # failure times kept per client or login


class AuthThrottle:
    """Password guessing, slowed as Postfix's error sleep and anvil's auth rate do it.

    A failed AUTH is answered later the more failures there were within the window, from
    the client (address, IPv6 /64) or for the login, whichever had more: half a second
    after `AUTH_FREE_FAILURES`, doubling up to `AUTH_MAX_DELAY`. Failures for one login
    are answered one at a time, so parallel connections do not multiply the guesses. A
    right password is never delayed or refused: an Exchange server sharing its address
    with a guesser still gets in (a rate limit, not a lock-out).
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._failures: dict[str, deque[float]] = {}  # "client:…"/"login:…" -> times
        self._next_reply: dict[str, float] = {}  # login -> when its next failure may answer
        self._pruned = time.monotonic()

    def failed(self, client: str, login: str) -> float:
        """Record a failure; the seconds to wait before answering it."""
        now = time.monotonic()
        count = max(self._count(f"client:{client}", now), self._count(f"login:{login}", now))
        delay = 0.0
        if count > AUTH_FREE_FAILURES:
            delay = min(0.5 * 2.0 ** min(count - AUTH_FREE_FAILURES - 1, 16), AUTH_MAX_DELAY)
        reply_at = max(now, self._next_reply.get(login, now)) + delay
        self._next_reply[login] = reply_at
        if now - self._pruned > self.window / 10:
            self._prune(now)
        return reply_at - now

    def _count(self, key: str, now: float) -> int:
        times = self._failures.setdefault(key, deque(maxlen=_MAX_REMEMBERED))
        times.append(now)
        while times and times[0] < now - self.window:
            times.popleft()
        return len(times)

    def _prune(self, now: float) -> None:
        """Forget the quiet: the tables stay as small as the recent failures."""
        self._failures = {
            k: v for k, v in self._failures.items() if v and v[-1] > now - self.window
        }
        self._next_reply = {k: t for k, t in self._next_reply.items() if t > now}
        self._pruned = now
