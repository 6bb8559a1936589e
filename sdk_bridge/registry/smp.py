"""SML and SMP: where an organisation's service metadata lives, and what it says.

The SMP answers, per organisation and document type, with a signed
`SignedServiceMetadata` (OASIS BDXR SMP 1.0, REST binding) that names the access point
endpoint and, in Digg's CertPub extension (C3.4.5), the organisation's signing and
encryption certificates. The document's signature must verify against the SMP trust
anchor before anything in it is used.
"""

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote

import dns.exception
import dns.resolver
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..sdk import xmldsig
from ..sdk.certs import CertificateProblem, check_signing_certificate, issuer_among
from ..sdk.names import C14N, C14N11, DOCUMENT_ID_SCHEME, PARTY_SCHEME, PROCESS_ID, q
from ..sdk.xmlsafe import UnsafeXML
from ..sdk.xmlsafe import parse as parse_xml
from .errors import NotRegistered, RegistryUnavailable

SMP_NS = "http://docs.oasis-open.org/bdxr/ns/SMP/2016/05"
SMC_NS = "http://docs.oasis-open.org/bdxr/ns/SMP/2/AggregateComponents"
SMB_NS = "http://docs.oasis-open.org/bdxr/ns/SMP/2/BasicComponents"
CERTPUB_EXTENSION = "urn:fdc:digg.se:edelivery:xml-extension:smp-certpub:1.0"
SIGNING_CERT = "urn:fdc:digg.se:edelivery:certpub:signing-cert"
ENCRYPTION_CERT = "urn:fdc:digg.se:edelivery:certpub:encryption-cert"
AS4_TRANSPORT = "bdxr-transport-ebms3-as4-v1p0"

MAX_METADATA_BYTES = 1_000_000
_NS = {"smp": SMP_NS, "smc": SMC_NS, "smb": SMB_NS}


@dataclass(frozen=True)
class Endpoint:
    transport_profile: str
    url: str
    certificate: x509.Certificate | None  # the access point's
    activation: datetime | None
    expiration: datetime | None

    def active_at(self, moment: datetime) -> bool:
        return (self.activation is None or self.activation <= moment) and (
            self.expiration is None or moment < self.expiration
        )


@dataclass(frozen=True)
class ServiceMetadata:
    participant: str  # "0203:<domain>"
    document_id: str
    endpoints: tuple[Endpoint, ...]
    signing_certificates: tuple[x509.Certificate, ...]
    encryption_certificates: tuple[x509.Certificate, ...]
    smp_signer: x509.Certificate


def service_path(participant: str, document_id: str) -> str:
    """The REST binding's path: `/{scheme}::{id}/services/{scheme}::{docid}`, URL-encoded."""
    return (
        f"/{quote(f'{PARTY_SCHEME}::{participant}', safe='')}"
        f"/services/{quote(f'{DOCUMENT_ID_SCHEME}::{document_id}', safe='')}"
    )


# --- locating the SMP ------------------------------------------------------------------


SML_NAME_FORMS = ("bdxl", "md5")


def sml_name(participant: str, zone: str, form: str = "bdxl", scheme: str = PARTY_SCHEME) -> str:
    """The DNS name under which the SML publishes a participant's SMP.

    Digg's texts only say "hash of the participant id + scheme + SML zone", so the form is
    configurable: "bdxl" (the eDelivery BDXL convention, the default) is base32 of SHA-256
    of the lower-cased id; "md5" is the older Peppol form, "B-" and the MD5 in hex.
    """
    identifier = participant.lower().encode()
    if form == "bdxl":
        label = base64.b32encode(hashlib.sha256(identifier).digest()).decode().rstrip("=")
    elif form == "md5":
        label = "B-" + hashlib.md5(identifier, usedforsecurity=False).hexdigest()
    else:
        raise ValueError(f"unknown SML name form {form!r} (expected one of {SML_NAME_FORMS})")
    return f"{label}.{scheme}.{zone.strip('.')}"


@dataclass(frozen=True)
class Locator:
    """Finds the SMP: a fixed base URL, or the SML's U-NAPTR `Meta:SMP` record in DNS."""

    base_url: str | None = None
    sml_zone: str | None = None
    name_form: str = "bdxl"  # see sml_name()
    nameservers: tuple[str, ...] = ()  # empty: the system's resolver
    port: int = 53
    timeout: float = 5.0

    def smp_url(self, participant: str) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if not self.sml_zone:
            raise RegistryUnavailable("neither an SMP URL nor an SML zone is configured")
        name = sml_name(participant, self.sml_zone, self.name_form)
        resolver = dns.resolver.Resolver(configure=not self.nameservers)
        if self.nameservers:
            try:
                resolver.nameservers = list(self.nameservers)
            except ValueError as e:
                raise RegistryUnavailable(f"SML name servers: {e}") from None
            resolver.port = self.port
        resolver.lifetime = self.timeout
        try:
            answer = resolver.resolve(name, "NAPTR")
        except dns.resolver.NXDOMAIN:
            raise NotRegistered(f"{participant} is not registered in the SML ({name})") from None
        except (dns.exception.DNSException, OSError) as e:
            raise RegistryUnavailable(f"SML lookup of {name} failed: {e}") from None
        for record in sorted(answer, key=lambda r: (r.order, r.preference)):
            if (
                record.service.decode().lower() == "meta:smp"
                and record.flags.decode().upper() == "U"
            ):
                url = _naptr_url(record.regexp.decode())
                if url:
                    return url.rstrip("/")
        raise NotRegistered(f"the SML has no Meta:SMP record for {participant}")


def _naptr_url(regexp: str) -> str | None:
    """The replacement of a U-NAPTR regexp `!^.*$!https://smp.example/!` (RFC 4848)."""
    if len(regexp) < 4:
        return None
    delimiter = regexp[0]
    parts = regexp[1:].split(delimiter)
    return parts[1] if len(parts) >= 2 and parts[0] == "^.*$" else None


# --- reading and checking SignedServiceMetadata ------------------------------------------


def _datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _certificate(text: str) -> x509.Certificate:
    """CertPub says "PEM (base64)": accept a PEM block, base64 of PEM, or base64 of DER."""
    data = text.strip().encode()
    if not data.startswith(b"-----BEGIN"):
        data = base64.b64decode(b"".join(data.split()), validate=True)
    if data.startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def read_signed_metadata(
    data: bytes,
    *,
    participant: str,
    document_id: str,
    trust_anchors: list[x509.Certificate],
    at: datetime,
) -> ServiceMetadata:
    """Verify and read one SignedServiceMetadata; raise RegistryUnavailable if untrustworthy."""
    try:
        root = parse_xml(data, max_bytes=MAX_METADATA_BYTES)
        if root.tag != q(SMP_NS, "SignedServiceMetadata"):
            raise RegistryUnavailable("the SMP answer is not a SignedServiceMetadata")
        signer = xmldsig.verify(root, canonicalizations=(C14N, C14N11))
        check_signing_certificate(signer, at, trust_anchors)
    except (UnsafeXML, xmldsig.SignatureInvalid, CertificateProblem) as e:
        raise RegistryUnavailable(
            f"SMP metadata for {participant} is not trustworthy: {e}"
        ) from None
    info = root.find("smp:ServiceMetadata/smp:ServiceInformation", _NS)
    if info is None:
        raise RegistryUnavailable(f"SMP metadata for {participant} has no ServiceInformation")
    found_participant = (info.findtext("smp:ParticipantIdentifier", "", _NS) or "").strip()
    found_document = (info.findtext("smp:DocumentIdentifier", "", _NS) or "").strip()
    if found_participant.lower() != participant.lower() or found_document != document_id:
        raise RegistryUnavailable(f"SMP metadata for {participant} describes something else")
    try:
        endpoints = tuple(
            Endpoint(
                transport_profile=e.get("transportProfile", ""),
                url=(e.findtext("smp:EndpointURI", "", _NS) or "").strip(),
                certificate=_certificate(e.findtext("smp:Certificate", "", _NS))
                if e.findtext("smp:Certificate", None, _NS)
                else None,
                activation=_datetime(e.findtext("smp:ServiceActivationDate", None, _NS)),
                expiration=_datetime(e.findtext("smp:ServiceExpirationDate", None, _NS)),
            )
            for process in info.findall("smp:ProcessList/smp:Process", _NS)
            if (process.findtext("smp:ProcessIdentifier", "", _NS) or "").strip() == PROCESS_ID
            for e in process.findall("smp:ServiceEndpointList/smp:Endpoint", _NS)
        )
        certificates: dict[str, list[x509.Certificate]] = {SIGNING_CERT: [], ENCRYPTION_CERT: []}
        for extension in info.findall("smp:Extension", _NS):
            if (extension.findtext("smp:ExtensionID", "", _NS) or "").strip() != CERTPUB_EXTENSION:
                continue
            for cert in extension.findall("smc:Certificate", _NS):
                kind = (cert.findtext("smb:TypeCode", "", _NS) or "").strip()
                if kind in certificates:
                    value = cert.findtext("smb:ContentBinaryObject", None, _NS)
                    if value is None:
                        raise ValueError("a CertPub Certificate without ContentBinaryObject")
                    certificates[kind].append(_certificate(value))
    except ValueError as e:
        raise RegistryUnavailable(f"SMP metadata for {participant} cannot be read: {e}") from None
    return ServiceMetadata(
        participant=found_participant,
        document_id=found_document,
        endpoints=endpoints,
        signing_certificates=tuple(certificates[SIGNING_CERT]),
        encryption_certificates=tuple(certificates[ENCRYPTION_CERT]),
        smp_signer=signer,
    )


class RevocationCheck(Protocol):
    def check(self, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        """Return if not revoked; raise a CertificateProblem if revoked, RegistryUnavailable
        if it cannot be told."""


class SMPClient:
    """Fetches and verifies service metadata; the caller caches (see CertPub).

    Digg requires the SMP's signing certificate to be checked for revocation too.
    """

    def __init__(
        self,
        http: httpx.Client,
        locator: Locator,
        trust_anchors: list[x509.Certificate],
        revocation: RevocationCheck | None = None,
    ) -> None:
        self._http = http
        self._locator = locator
        self._trust_anchors = trust_anchors
        self._revocation = revocation

    def service_metadata(self, participant: str, document_id: str) -> ServiceMetadata:
        url = self._locator.smp_url(participant) + service_path(participant, document_id)
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code == 404:
                    raise NotRegistered(f"{participant} is not registered in SMP for {document_id}")
                if response.status_code != 200:
                    raise RegistryUnavailable(f"SMP at {url} answered HTTP {response.status_code}")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_METADATA_BYTES:
                        raise RegistryUnavailable(f"SMP at {url} answered more than we read")
        except httpx.HTTPError as e:
            raise RegistryUnavailable(f"SMP at {url} did not answer: {e}") from None
        metadata = read_signed_metadata(
            body,
            participant=participant,
            document_id=document_id,
            trust_anchors=self._trust_anchors,
            at=datetime.now(UTC),
        )
        if self._revocation is not None:
            issuer = issuer_among(metadata.smp_signer, self._trust_anchors)
            assert issuer is not None  # read_signed_metadata checked the chain
            try:
                self._revocation.check(metadata.smp_signer, issuer)
            except CertificateProblem as e:
                raise RegistryUnavailable(f"the SMP's signing certificate: {e}") from None
        if not any(e.active_at(datetime.now(UTC)) for e in metadata.endpoints):
            raise NotRegistered(f"{participant} has no active endpoint in SMP for {document_id}")
        return metadata


def certificate_base64(cert: x509.Certificate) -> str:
    """The form CertPub and SMP carry certificates in (base64 of DER)."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
