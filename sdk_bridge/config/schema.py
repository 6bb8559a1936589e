"""What a configuration file says, once checked: the sections and their defaults."""

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from ..registry.addresses import encoded, is_local_part
from ..registry.settings import RegistryConfig
from ..sdk.keys import KeyPair
from ..spool import Retention


@dataclass(frozen=True)
class AccessPointConfig:
    url: str  # the Domibus WS plugin endpoint
    username: str
    password: str
    tls_trust: Path | None
    party_id: str  # the access point's own PartyId (the ebMS From party)
    plugin: str = "domibus-ws"  # the connector plugin (entry point sdk_bridge.access_points)
    client_cert: Path | None = None  # for mutual TLS
    client_key: Path | None = None
    # Which WS plugin interface the url serves: wsplugin (Domibus 5.x) or backend (4.x).
    interface: str = "wsplugin"

    def plugin_settings(self) -> dict[str, Any]:
        """The connector plugin's settings."""
        settings: dict[str, Any] = {
            "url": self.url,
            "username": self.username,
            "password": self.password,
            "party_id": self.party_id,
            "interface": self.interface,
        }
        for name in ("tls_trust", "client_cert", "client_key"):
            if getattr(self, name) is not None:
                settings[name] = str(getattr(self, name))
        return settings


@dataclass(frozen=True)
class SMTPConfig:
    hostname: str
    listen: tuple[tuple[str, int], ...]  # plain SMTP, with STARTTLS when a certificate is set
    listen_tls: tuple[tuple[str, int], ...]  # implicit TLS
    tls_cert: Path | None
    tls_key: Path | None
    allowed_networks: tuple[str, ...]  # CIDR; others must authenticate
    users: dict[str, str]  # SMTP AUTH user -> password
    forbidden_types: frozenset[str]  # attachment MIME types refused (PDF always allowed)
    secrecy_tags: tuple[str, ...]
    scanner: tuple[str, dict[str, Any]] | None  # plugin name and its settings
    max_recipients: int = 100  # per message; more get 452 4.5.3
    idle_timeout: float = 300.0  # seconds a silent client keeps its connection
    max_connections: int = 500  # at once, all clients (and below the descriptor limit)
    max_connections_per_client: int = 50  # at once, one address (IPv6: one /64)


@dataclass(frozen=True)
class OutboundConfig:
    lifetime: timedelta = timedelta(days=5)  # retried this long, then the sender is told
    delay_warning: timedelta = timedelta(hours=4)  # no kvittens by then: a delay report
    smart_host: tuple[str, int] | None = None  # where DSNs go (the organisation's Exchange)
    smart_host_cafile: Path | None = None  # its TLS certificate's CA, else the system's CAs
    postmaster: str | None = None  # the From of DSNs
    # Domains DSNs may go to (and their subdomains); empty: those of the senders patterns.
    report_domains: tuple[str, ...] = ()
    poll_seconds: float = 10.0  # how often the access point is asked for kvittens
    # A submitted message without a kvittens is first asked about (getStatus) after this.
    status_after: timedelta = timedelta(seconds=60)


@dataclass(frozen=True)
class AdminConfig:
    listen: tuple[str, int] = ("127.0.0.1", 9025)  # /metrics, /healthz, /readyz
    certificate_warning: timedelta = timedelta(days=14)  # /readyz fails this long before


@dataclass(frozen=True)
class FunctionalAddressConfig:
    id: str  # the address-book identifier of one of our functional addresses
    senders: tuple[str, ...]  # envelope senders that may send as it ("*@kommun.se")
    auth_users: tuple[str, ...]  # SMTP AUTH users that may send as it
    # The mailbox plugin (entry point sdk_bridge.mailboxes) for its incoming mail, and
    # the plugin's settings.
    deliver_to: tuple[str, dict[str, Any]] | None = None
    address: str | None = None  # the To of its incoming mail

    def mailbox_address(self, sdk_domain: str) -> str:
        """`address`, else the first sender without a wildcard, else one under our SDK
        domain: the To its incoming mail shows."""
        plain = [s for s in self.senders if "*" not in s]
        local = self.id if is_local_part(self.id) else encoded(self.id)
        return self.address or (plain[0] if plain else f"{local}@{sdk_domain}")


@dataclass(frozen=True)
class Config:
    organisation_id: str
    federation: str
    sdk_domain: str | None  # the mail domain SDK recipients live under
    signing: KeyPair
    decryption: list[KeyPair]  # more than one during a certificate rollover
    trust_anchors: list[x509.Certificate]
    registry: RegistryConfig | None
    access_point: AccessPointConfig | None
    smtp: SMTPConfig | None = None
    functional_addresses: tuple[FunctionalAddressConfig, ...] = ()
    # The spool directory: all of the SQLite spool; with a database back end, this
    # machine's own files (mail still arriving, Maildirs of addresses without deliver_to).
    spool: Path | None = None
    # The back end (entry point sdk_bridge.spools) and its settings but the directory.
    spool_backend: tuple[str, dict[str, Any]] = field(default_factory=lambda: ("sqlite", {}))
    outbound: OutboundConfig = OutboundConfig()
    admin: AdminConfig | None = None  # no admin port unless configured
    retention: Retention = field(default_factory=Retention)

    def spool_plugin(self) -> tuple[str, dict[str, Any]]:
        """The spool back end's name and its settings, the directory among them."""
        name, settings = self.spool_backend
        return name, {**settings, "directory": str(self.spool)}


def describe(config: Config) -> list[str]:
    """What an administrator wants to see after a successful check."""

    def cert(c: x509.Certificate) -> str:
        return f"{c.subject.rfc4514_string()} (valid until {c.not_valid_after_utc:%Y-%m-%d})"

    lines = [f"organisation {config.organisation_id} in {config.federation}"]
    lines.append(f"signing: {cert(config.signing.cert)}")
    lines += [f"decryption: {cert(k.cert)}" for k in config.decryption]
    lines += [f"trust anchor: {cert(c)}" for c in config.trust_anchors]
    return lines
