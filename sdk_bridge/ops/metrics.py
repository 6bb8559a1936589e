"""What /metrics shows, in Prometheus's format: the counters the stages bump
(`runtime.counters`), and what is read when it is scraped, so it is right even just after
a restart: the depth of each queue in the spool, certificate lifetimes, the address book's
age."""

from collections.abc import Iterator
from datetime import UTC, datetime

from cryptography import x509
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..registry.addressbook import AddressBook
from ..runtime.counters import REGISTRY
from ..spool import Spool


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
