"""CertPub: the certificates an organisation publishes in SMP, checked and cached.

Senders look up the recipient's encryption certificates under the message document id;
receivers look up the sender's signing certificates under the kvittens document id
(C3.4.5). Only certificates that chain to the O2O trust anchors, are valid now, carry the
right key usage and are not revoked are handed out. Several may be published at once
during a rollover; `refresh=True` bypasses the cache, for a caller about to conclude that a
signature does not match.
"""

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from cryptography import x509

from ..sdk.certs import (
    CertificateProblem,
    check_encryption_certificate,
    check_signing_certificate,
    issuer_among,
)
from ..sdk.names import KVITTENS_DOCUMENT_ID, MESSAGE_DOCUMENT_ID
from .errors import NoValidCertificate, RegistryUnavailable
from .smp import RevocationCheck, SMPClient

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Cached:
    certificates: tuple[x509.Certificate, ...]
    expires: datetime


class CertPub:
    def __init__(
        self,
        smp: SMPClient,
        trust_anchors: list[x509.Certificate],
        revocation: RevocationCheck | None,
        ttl: timedelta = timedelta(hours=1),
    ) -> None:
        self._smp = smp
        self._trust_anchors = trust_anchors
        self._revocation = revocation
        self._ttl = ttl
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._lock = threading.Lock()

    def encryption_certificates(
        self, participant: str, *, refresh: bool = False
    ) -> tuple[x509.Certificate, ...]:
        return self._usable(participant, MESSAGE_DOCUMENT_ID, refresh)

    def signing_certificates(
        self, participant: str, *, refresh: bool = False
    ) -> tuple[x509.Certificate, ...]:
        return self._usable(participant, KVITTENS_DOCUMENT_ID, refresh)

    def cached_signing_certificates(self, participant: str) -> tuple[x509.Certificate, ...] | None:
        """The signing certificates the cache holds for `participant`, or None where it holds
        none unexpired: never asks SMP, so a caller on the event loop needs no thread while
        they are known."""
        return self._cached((participant.lower(), KVITTENS_DOCUMENT_ID), datetime.now(UTC))

    def cached_encryption_certificates(
        self, participant: str
    ) -> tuple[x509.Certificate, ...] | None:
        """As `cached_signing_certificates`, for the certificates to encrypt to."""
        return self._cached((participant.lower(), MESSAGE_DOCUMENT_ID), datetime.now(UTC))

    def _cached(self, key: tuple[str, str], now: datetime) -> tuple[x509.Certificate, ...] | None:
        with self._lock:
            cached = self._cache.get(key)
        return cached.certificates if cached and now < cached.expires else None

    def _usable(
        self, participant: str, document_id: str, refresh: bool
    ) -> tuple[x509.Certificate, ...]:
        key = (participant.lower(), document_id)
        now = datetime.now(UTC)
        cached = None if refresh else self._cached(key, now)
        if cached is not None:
            return cached
        metadata = self._smp.service_metadata(participant, document_id)
        signing = document_id == KVITTENS_DOCUMENT_ID
        published = metadata.signing_certificates if signing else metadata.encryption_certificates
        usable, unknown = [], []
        for cert in published:
            try:
                self._check(cert, signing, now)
            except CertificateProblem as e:
                log.warning(
                    "published certificate not usable",
                    participant=participant,
                    subject=cert.subject.rfc4514_string(),
                    problem=str(e),
                )
                continue
            except RegistryUnavailable as e:
                unknown.append(str(e))
                continue
            usable.append(cert)
        if not usable:
            role = "signing" if signing else "encryption"
            if unknown:
                raise RegistryUnavailable(
                    f"revocation status of {participant}'s {role} certificates is unknown: "
                    + unknown[0]
                )
            raise NoValidCertificate(
                f"{participant} publishes no valid, trusted and unrevoked {role} certificate "
                "in CertPub"
            )
        certificates = tuple(usable)
        expires = min([now + self._ttl, *(c.not_valid_after_utc for c in certificates)])
        with self._lock:
            self._cache[key] = _Cached(certificates, expires)
        return certificates

    def _check(self, cert: x509.Certificate, signing: bool, now: datetime) -> None:
        check = check_signing_certificate if signing else check_encryption_certificate
        check(cert, now, self._trust_anchors)
        if self._revocation is not None:
            issuer = issuer_among(cert, self._trust_anchors)
            assert issuer is not None
            self._revocation.check(cert, issuer)
