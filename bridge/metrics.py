"""The numbers an administrator graphs and alerts on, in Prometheus's format.

Counters are bumped where things happen; the depth of each queue is read from the spool
when /metrics is scraped, so it is right even just after a restart. One registry per
process (not prometheus-client's global one), so tests and the daemon see only ours.
"""

from collections.abc import Iterator
from datetime import UTC, datetime

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .spool import Spool

REGISTRY = CollectorRegistry()

SMTP_ACCEPTED = Counter(
    "sdk_bridge_smtp_accepted", "Mails accepted over SMTP (250), durably spooled", registry=REGISTRY
)
OUTBOUND = Counter(
    "sdk_bridge_outbound",
    "SDK messages we sent, by what became of them",
    ["outcome"],  # submitted, delivered, rejected, failed
    registry=REGISTRY,
)
INBOUND = Counter(
    "sdk_bridge_inbound",
    "SDK messages received, by verdict and kvittens reason",
    ["outcome", "reason"],  # accepted/rejected/quarantined; "SIG security", "BV duplicate", …
    registry=REGISTRY,
)
INCIDENTS = Counter(
    "sdk_bridge_incidents",
    "Security incidents: malware found in a received message",
    ["kind"],
    registry=REGISTRY,
)
LOST = Counter(
    "sdk_bridge_inbound_lost",
    "Messages the access point no longer gives out after a crash (recover with inbound import)",
    registry=REGISTRY,
)
KVITTENS_SENT = Counter(
    "sdk_bridge_kvittens_sent",
    "Kvittens handed to the access point",
    ["outcome"],
    registry=REGISTRY,
)
MAILBOX = Counter(
    "sdk_bridge_mailbox_deliveries",
    "Attempts to put received mail into a mailbox, by outcome",
    ["outcome"],  # delivered, retry, failed
    registry=REGISTRY,
)
ACCESS_POINT_ERRORS = Counter(
    "sdk_bridge_access_point_errors",
    "Calls to the access point that failed",
    ["operation"],
    registry=REGISTRY,
)


class QueueCollector(Collector):
    """How much waits in each of the spool's queues, by state, and the oldest of it."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "sdk_bridge_queue_depth",
            "Items in the spool by queue and state",
            labels=["queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "sdk_bridge_queue_oldest_seconds",
            "Age of the oldest item by queue and state",
            labels=["queue", "state"],
        )
        now = datetime.now(UTC)
        for (queue, state), (count, first) in self.spool.queue_depths().items():
            depth.add_metric([queue, state], count)
            oldest.add_metric([queue, state], (now - first).total_seconds())
        yield depth
        yield oldest


class CertificateCollector(Collector):
    """Seconds until each certificate the bridge works with expires (negative: expired)."""

    def __init__(self, certificates: dict[str, x509.Certificate]) -> None:
        self.certificates = certificates

    def collect(self) -> Iterator[GaugeMetricFamily]:
        left = GaugeMetricFamily(
            "sdk_bridge_certificate_expiry_seconds",
            "Seconds until the certificate expires",
            labels=["certificate"],
        )
        now = datetime.now(UTC)
        for name, certificate in self.certificates.items():
            left.add_metric([name], (certificate.not_valid_after_utc - now).total_seconds())
        yield left


_watching: list[Collector] = []


def watch(spool: Spool, certificates: dict[str, x509.Certificate]) -> None:
    """Report the depths of `spool`'s queues and the certificates' time left (in place of
    whatever was watched before: a reload may bring new certificates)."""
    while _watching:
        REGISTRY.unregister(_watching.pop())
    _watching.extend((QueueCollector(spool), CertificateCollector(certificates)))
    for collector in _watching:
        REGISTRY.register(collector)


def exposition() -> bytes:
    """The text a Prometheus scrape gets (reads the spool: run it off the event loop)."""
    return generate_latest(REGISTRY)
