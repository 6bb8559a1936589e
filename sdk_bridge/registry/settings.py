"""The registry's settings (the configuration's `registry` section)."""

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


@dataclass(frozen=True)
class RegistryConfig:
    address_book_url: str
    smp_url: str | None  # a fixed SMP, or
    sml_zone: str | None  # the SML zone to find each organisation's SMP in (DNS)
    sml_name_form: str  # how the SML hashes participant ids (see registry.smp.sml_name)
    sml_nameservers: tuple[str, ...]  # IP addresses; empty: the system's resolver
    sml_port: int
    smp_trust_anchors: list[x509.Certificate]
    tls_trust: Path | None  # CA bundle for HTTPS to the registry; None: the system's
    cache_dir: Path
    revocation_soft_fail: bool  # accept a certificate whose revocation status is unknown
