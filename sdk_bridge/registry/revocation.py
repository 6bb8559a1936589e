"""Revocation checks by OCSP and CRL, cached in memory and in the registry cache.

Digg requires the sender's signing certificate and the SMP certificate to be checked
for revocation. OCSP (the responder named in the certificate's authority information
access) is asked first, then the CRL (its distribution point). Every answer must be
signed by the certificate's issuer (OCSP also by a responder the issuer delegated to)
and be current by its thisUpdate/nextUpdate. "Revoked" is final. When no source gives
a usable answer the check raises RevocationUnknown, which callers treat as a temporary
failure, never as "valid" -- unless the policy asks for soft-fail.

Answers are cached until nextUpdate, and refreshed sooner (policy TTLs) while the
sources answer; a cached answer still within its nextUpdate keeps serving when they
do not. The registry cache (files, or the shared spool's database) holds the signed DER
as fetched and it is verified again on load, so a restart does not refetch, and a
tampered cache entry is simply ignored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ..sdk.certs import CertificateProblem
from .cache import Cache
from .errors import RegistryUnavailable

# The keys a CRL issuer may sign with (DSA, deprecated, is not among them).
CRL_SIGNING_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)

log = structlog.get_logger(__name__)


class RevocationError(Exception):
    """A certificate failed its revocation check."""


class Revoked(RevocationError, CertificateProblem):
    """The issuer says the certificate is revoked: final, not worth retrying."""

    def __init__(self, reason: x509.ReasonFlags | None, when: datetime, subject: str = "") -> None:
        self.reason, self.when, self.subject = reason, when, subject
        why = f" ({reason.value})" if reason else ""
        who = f"{subject}: " if subject else ""
        super().__init__(f"{who}certificate revoked on {when:%Y-%m-%d %H:%M:%S} UTC{why}")


class RevocationUnknown(RevocationError, RegistryUnavailable):
    """No source gave a usable answer: a temporary failure, never a pass."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)


@dataclass(frozen=True)
class RevocationPolicy:
    """How strict to be, and how long answers may be reused."""

    soft_fail: bool = False  # no usable answer: accept (with a warning) instead of raising
    accept_without_pointers: bool = False  # accept certs naming neither OCSP nor a CRL
    timeout: float = 5.0  # seconds, per HTTP request phase (connect, each read)
    ocsp_ttl: timedelta = timedelta(hours=1)  # reuse an OCSP answer this long at most
    crl_refresh: timedelta = timedelta(hours=1)  # refetch a CRL after this, if it answers
    clock_skew: timedelta = timedelta(minutes=5)  # tolerance on thisUpdate/nextUpdate
    max_response_bytes: int = 32 * 1024 * 1024  # CRLs of large CAs run to megabytes


class _Unusable(Exception):
    """This source gave no answer we may rely on; try the next one."""


@dataclass(frozen=True)
class _Verdict:
    revoked: Revoked | None
    valid_until: datetime  # nextUpdate: after it the answer says nothing


@dataclass(frozen=True)
class _Cached:
    fetched: datetime
    verdict: _Verdict
    refresh_at: datetime  # reuse without asking until then


class RevocationChecker:
    """Checks certificates against their issuer's OCSP responder and CRL.

    `client` is used for every request (pass one with verify= for HTTPS sources, or
    with a transport for tests); the policy's timeout applies to each request. Answers
    are kept in `cache` under names starting with `prefix` (such as "revocation/").
    """

    def __init__(
        self,
        cache: Cache,
        prefix: str,
        policy: RevocationPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.policy = policy or RevocationPolicy()
        self._own_client = client is None
        self._client = client or httpx.Client(follow_redirects=True)
        self._cache = cache
        self._prefix = prefix
        self._ocsp: dict[str, tuple[datetime, bytes]] = {}  # key -> (fetched, DER)
        self._crls: dict[str, tuple[datetime, x509.CertificateRevocationList]] = {}

    def close(self) -> None:
        """Close the HTTP client, unless it was passed in."""
        if self._own_client:
            self._client.close()

    def check(self, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        """Return if `cert` is not revoked; raise Revoked or RevocationUnknown.

        `issuer` must be the certificate that issued `cert` (checked by name here; the
        caller validates the chain).
        """
        if cert.issuer != issuer.subject:
            raise ValueError("`issuer` is not the issuer of `cert`")
        subject = cert.subject.rfc4514_string()
        ocsp_urls, crl_urls = _ocsp_urls(cert), _crl_urls(cert)
        if not ocsp_urls and not crl_urls:
            if self.policy.accept_without_pointers:
                return
            raise RevocationUnknown(f"{subject}: names neither an OCSP responder nor a CRL")
        now = datetime.now(UTC)
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
        key = f"{request.issuer_key_hash.hex()}-{cert.serial_number:x}"

        # 1. A cached answer that is not yet due for refresh: no request at all.
        cached = [self._cached_ocsp(key, cert, issuer, now)]
        cached += [self._cached_crl(url, cert, issuer, now) for url in crl_urls]
        for entry in cached:
            if entry is not None and now < entry.refresh_at:
                return _conclude(entry.verdict, subject)

        # 2. Ask: OCSP first, then the CRLs.
        problems: list[str] = []
        der_request = request.public_bytes(serialization.Encoding.DER)
        for url in ocsp_urls:
            try:
                der = self._fetch(url, der_request)
                verdict = self._ocsp_verdict(der, cert, issuer, now)
            except _Unusable as e:
                problems.append(f"OCSP {url}: {e}")
                continue
            self._store_ocsp(key, now, der)
            return _conclude(verdict, subject)
        for url in crl_urls:
            try:
                der = self._fetch(url, None)
                crl = _load_crl(der)
                verdict = self._crl_verdict(crl, cert, issuer, now)
                previous = self._crls.get(url)
                if previous and crl.last_update_utc < previous[1].last_update_utc:
                    raise _Unusable("older than the CRL already cached")
            except _Unusable as e:
                problems.append(f"CRL {url}: {e}")
                continue
            self._store_crl(url, now, der, crl)
            return _conclude(verdict, subject)

        # 3. Sources down or unusable: a cached answer still within nextUpdate will do.
        for entry in cached:
            if entry is not None:
                log.warning("revocation.cached_answer", subject=subject, problems=problems)
                return _conclude(entry.verdict, subject)
        text = f"{subject}: revocation status unknown: " + "; ".join(problems)
        if self.policy.soft_fail:
            log.warning("revocation.soft_fail", subject=subject, problems=problems)
            return
        raise RevocationUnknown(text)

    # -- OCSP

    def _cached_ocsp(
        self, key: str, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
    ) -> _Cached | None:
        entry = self._ocsp.get(key) or self._read(self._ocsp_name(key))
        if entry is None:
            return None
        fetched, der = entry
        try:
            verdict = self._ocsp_verdict(der, cert, issuer, now)
        except _Unusable:  # expired, or a damaged cache entry: the next answer replaces it
            self._ocsp.pop(key, None)
            return None
        self._ocsp[key] = entry
        refresh_at = min(verdict.valid_until, fetched + self.policy.ocsp_ttl)
        return _Cached(fetched, verdict, refresh_at)

    def _store_ocsp(self, key: str, fetched: datetime, der: bytes) -> None:
        self._ocsp[key] = (fetched, der)
        self._write(self._ocsp_name(key), der)

    def _ocsp_name(self, key: str) -> str:
        return f"{self._prefix}ocsp/{key}.der"

    def _ocsp_verdict(
        self, der: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
    ) -> _Verdict:
        """What a DER OCSP response says about `cert`, once its signature is checked."""
        try:
            response = ocsp.load_der_ocsp_response(der)
        except ValueError as e:
            raise _Unusable(f"not an OCSP response: {e}") from None
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise _Unusable(f"responder answered {response.response_status.name}")
        signer = _ocsp_signer(response, issuer, now)
        try:
            _verify(signer.public_key(), response)
        except InvalidSignature:
            raise _Unusable("response signature does not verify") from None
        expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
        single = next(
            (
                r
                for r in response.responses
                if r.serial_number == cert.serial_number
                and isinstance(r.hash_algorithm, hashes.SHA1)
                and r.issuer_key_hash == expected.issuer_key_hash
                and r.issuer_name_hash == expected.issuer_name_hash
            ),
            None,
        )
        if single is None:
            raise _Unusable("response does not cover this certificate")
        skew = self.policy.clock_skew
        if single.this_update_utc > now + skew:
            raise _Unusable(f"response is from the future (thisUpdate {single.this_update_utc})")
        if single.next_update_utc is not None:
            valid_until = single.next_update_utc
        else:  # "newer information is always available": bound the reuse ourselves
            valid_until = single.this_update_utc + self.policy.ocsp_ttl
        if valid_until + skew < now:
            raise _Unusable(f"response expired (nextUpdate {valid_until})")
        if single.certificate_status == ocsp.OCSPCertStatus.UNKNOWN:
            raise _Unusable("responder does not know the certificate")
        revoked = None
        if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            revoked = Revoked(
                single.revocation_reason,
                single.revocation_time_utc or single.this_update_utc,
                cert.subject.rfc4514_string(),
            )
        return _Verdict(revoked, valid_until)

    # -- CRL

    def _cached_crl(
        self, url: str, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
    ) -> _Cached | None:
        entry = self._crls.get(url)
        if entry is None:
            raw = self._read(self._crl_name(url))
            if raw is None:
                return None
            try:
                entry = (raw[0], _load_crl(raw[1]))
            except _Unusable:
                return None
        fetched, crl = entry
        try:
            verdict = self._crl_verdict(crl, cert, issuer, now)
        except _Unusable:
            return None  # expired, or another issuer's CRL: not for this certificate
        self._crls[url] = entry
        refresh_at = min(verdict.valid_until, fetched + self.policy.crl_refresh)
        return _Cached(fetched, verdict, refresh_at)

    def _store_crl(
        self, url: str, fetched: datetime, der: bytes, crl: x509.CertificateRevocationList
    ) -> None:
        self._crls[url] = (fetched, crl)
        self._write(self._crl_name(url), der)

    def _crl_name(self, url: str) -> str:
        return f"{self._prefix}crl/{hashlib.sha256(url.encode()).hexdigest()[:32]}.crl"

    def _crl_verdict(
        self,
        crl: x509.CertificateRevocationList,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime,
    ) -> _Verdict:
        """What a CRL says about `cert`, once its issuer, signature and dates are checked."""
        if crl.issuer != issuer.subject:
            raise _Unusable(f"CRL is issued by {crl.issuer.rfc4514_string()}")
        try:
            usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.crl_sign:
                raise _Unusable("the issuer's key usage does not allow signing CRLs")
        except x509.ExtensionNotFound:
            pass
        key = issuer.public_key()
        if not isinstance(key, CRL_SIGNING_KEYS) or not crl.is_signature_valid(key):
            raise _Unusable("CRL signature does not verify with the issuer's key")
        skew = self.policy.clock_skew
        if crl.last_update_utc > now + skew:
            raise _Unusable(f"CRL is from the future (thisUpdate {crl.last_update_utc})")
        if crl.next_update_utc is None:
            raise _Unusable("CRL has no nextUpdate")
        if crl.next_update_utc + skew < now:
            raise _Unusable(f"CRL expired (nextUpdate {crl.next_update_utc})")
        revoked = None
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            try:
                reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            except x509.ExtensionNotFound:
                reason = None
            if reason != x509.ReasonFlags.remove_from_crl:
                when = entry.revocation_date_utc
                revoked = Revoked(reason, when, cert.subject.rfc4514_string())
        return _Verdict(revoked, crl.next_update_utc)

    # -- HTTP

    def _fetch(self, url: str, ocsp_request: bytes | None) -> bytes:
        """GET a CRL, or POST an OCSP request; any failure is _Unusable."""
        if not url.startswith(("http://", "https://")):
            raise _Unusable("only http and https sources are supported")
        method, headers = "GET", {}
        if ocsp_request is not None:
            method, headers = "POST", {"Content-Type": "application/ocsp-request"}
        limit = self.policy.max_response_bytes
        try:
            with self._client.stream(
                method, url, content=ocsp_request, headers=headers, timeout=self.policy.timeout
            ) as response:
                if response.status_code != 200:
                    raise _Unusable(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise _Unusable(f"response larger than {limit} bytes")
        except httpx.HTTPError as e:
            raise _Unusable(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
        return bytes(body)

    # -- the persistent cache

    def _read(self, name: str) -> tuple[datetime, bytes] | None:
        """A cached answer and when it was fetched (stored), or None."""
        try:
            stored = self._cache.get(name)
        except OSError as e:  # as if never cached: the sources are asked instead
            log.warning("revocation cache unreadable", name=name, error=str(e))
            return None
        if stored is None:
            return None
        data, fetched = stored
        return fetched, data

    def _write(self, name: str, data: bytes) -> None:
        """Keep a fetched answer; losing it only costs a refetch, so errors are logged."""
        try:
            self._cache.put(name, data)
        except OSError as e:
            log.warning("revocation cache not written", name=name, error=str(e))


def _conclude(verdict: _Verdict, subject: str) -> None:
    if verdict.revoked is not None:
        raise verdict.revoked
    log.debug("revocation.good", subject=subject)


def _ocsp_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def _crl_urls(cert: x509.Certificate) -> list[str]:
    """Full-name URIs of distribution points for the whole CRL of the issuer itself."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [
        name.value
        for point in points
        if point.crl_issuer is None and point.reasons is None and point.full_name
        for name in point.full_name
        if isinstance(name, x509.UniformResourceIdentifier)
    ]


def _ocsp_signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime
) -> x509.Certificate:
    """The issuer, or a responder certificate in the response that the issuer delegated
    OCSP signing to (RFC 6960 4.2.2.2); anything else may not speak for the issuer."""
    if _is_responder(response, issuer):
        return issuer
    for candidate in response.certificates:
        if not _is_responder(response, candidate):
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
            eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            raise _Unusable("responder certificate is not issued by the issuer") from None
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise _Unusable("responder certificate is not for OCSP signing")
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            raise _Unusable("responder certificate is outside its validity")
        return candidate
    raise _Unusable("response is signed by neither the issuer nor a delegated responder")


def _is_responder(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    key_id = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return response.responder_key_hash == key_id  # SHA-1 of the key, as in RFC 6960


def _verify(key: object, response: ocsp.OCSPResponse) -> None:
    algorithm = response.signature_hash_algorithm
    if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
        key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    else:
        raise _Unusable(
            f"unsupported OCSP signature {response.signature_algorithm_oid.dotted_string}"
        )


def _load_crl(der: bytes) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(der)
    except ValueError:
        try:  # some CAs publish PEM
            return x509.load_pem_x509_crl(der)
        except ValueError as e:
            raise _Unusable(f"not a CRL: {e}") from None
