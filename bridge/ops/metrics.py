"""The numbers an administrator graphs and alerts on, in Prometheus's format.

Counters are bumped where things happen; the depth of each queue is read from the spool
when /metrics is scraped, so it is right even just after a restart. One registry per
process (not prometheus-client's global one), so tests and the daemon see only ours.
"""

from collections.abc import Iterator
from datetime import UTC, datetime

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..registry.addressbook import AddressBook
from ..spool import Spool

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
OUTBOUND_REJECTED = Counter(
    "sdk_bridge_outbound_rejected",
    "SDK messages we sent that the receiver's kvittens REJECTED, by reason",
    ["reason"],  # "BV not-found", "SIG security", …
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
FOREIGN = Counter(
    "sdk_bridge_inbound_foreign",
    "Messages for other organisations listed by the access point, left there untouched",
    registry=REGISTRY,
)
OVERSIZED = Counter(
    "sdk_bridge_inbound_oversized",
    "Messages at the access point too large to take (answered REJECTED too-long if they can be)",
    registry=REGISTRY,
)
KVITTENS_SENT = Counter(
    "sdk_bridge_kvittens_sent",
    "Kvittens handed to the access point",
    ["outcome"],
    registry=REGISTRY,
)
KVITTENS_FAILED = Counter(
    "sdk_bridge_kvittens_failed",
    "Kvittens the access point could not send to the sender's, given up",
    registry=REGISTRY,
)
MAILBOX = Counter(
    "sdk_bridge_mailbox_deliveries",
    "Attempts to put received mail into a mailbox, by outcome",
    ["outcome"],  # delivered, retry, failed
    registry=REGISTRY,
)
SMTP_CONNECTIONS_REFUSED = Counter(
    "sdk_bridge_smtp_connections_refused",
    "SMTP connections refused with 421 4.7.0: over the per-client or the total limit",
    registry=REGISTRY,
)
SMTP_TLS = Counter(
    "sdk_bridge_smtp_tls_sessions",
    "SMTP sessions that completed a TLS handshake, by kind",
    ["kind"],  # starttls, implicit (the port 465 style listener)
    registry=REGISTRY,
)
SMTP_REGISTRY_DEFERRALS = Counter(
    "sdk_bridge_smtp_registry_deferrals",
    "Recipients deferred (451) because the registry could not answer",
    registry=REGISTRY,
)
# Seconds: from the end of DATA to 250; from 250 to the access point taking it; judging
# one received message; one mailbox delivery.
LATENCY = Histogram(
    "sdk_bridge_latency_seconds",
    "How long each stage takes",
    ["stage"],  # smtp_accept, submit, inbound_judge, mailbox
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
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


class AddressBookCollector(Collector):
    """How old the cached address book is, and how often refreshing it failed."""

    def __init__(self, book: AddressBook) -> None:
        self.book = book

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if self.book.refreshed_at is not None:
            age = (datetime.now(UTC) - self.book.refreshed_at).total_seconds()
            yield GaugeMetricFamily(
                "sdk_bridge_address_book_age_seconds", "Age of the cached address book", age
            )
        yield CounterMetricFamily(
            "sdk_bridge_address_book_refresh_errors",
            "Address book refreshes that failed (the cache kept serving)",
            self.book.refresh_errors,
        )


_watching: list[Collector] = []


def watch(spool: Spool, certificates: dict[str, x509.Certificate], book: AddressBook) -> None:
    """Report the depths of `spool`'s queues, the certificates' time left and the address
    book's age (in place of whatever was watched before: a reload may bring new
    certificates)."""
    while _watching:
        REGISTRY.unregister(_watching.pop())
    _watching.extend(
        (QueueCollector(spool), CertificateCollector(certificates), AddressBookCollector(book))
    )
    for collector in _watching:
        REGISTRY.register(collector)


def exposition() -> bytes:
    """The text a Prometheus scrape gets (reads the spool: run it off the event loop)."""
    return generate_latest(REGISTRY)
