"""The sandbox's SMP with CertPub: signed service metadata for every organisation.

Answers the OASIS SMP 1.0 REST binding, `GET /{participant}/services/{document}`, with a
`SignedServiceMetadata` signed by the sandbox's SMP key, carrying the access point
endpoint and Digg's CertPub extension. Fault switches let tests make it fail, go silent or
hand out a tampered document.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from lxml import etree

from ...registry.smp import (
    AS4_TRANSPORT,
    CERTPUB_EXTENSION,
    ENCRYPTION_CERT,
    SIGNING_CERT,
    SMB_NS,
    SMC_NS,
    SMP_NS,
    certificate_base64,
)
from ...sdk import xmldsig
from ...sdk.keys import KeyPair
from ...sdk.message import format_timestamp
from ...sdk.names import (
    DOCUMENT_ID_SCHEME,
    KVITTENS_DOCUMENT_ID,
    MESSAGE_DOCUMENT_ID,
    PARTY_SCHEME,
    PROCESS_ID,
    PROCESS_ID_SCHEME,
    q,
)
from .web import Faults, respond


@dataclass
class Registration:
    """One organisation in the SMP: its access point and its published certificates."""

    endpoint_url: str
    access_point_cert: x509.Certificate
    signing_certs: list[x509.Certificate]
    encryption_certs: list[x509.Certificate]
    document_ids: tuple[str, ...] = (MESSAGE_DOCUMENT_ID, KVITTENS_DOCUMENT_ID)
    activation: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(days=1))
    expiration: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(days=365))


class SMP:
    """A WSGI app; `registrations` maps "0203:<domain>" to what the SMP publishes."""

    def __init__(self, signer: KeyPair, registrations: dict[str, Registration]) -> None:
        self.signer = signer
        self.registrations = registrations
        self.lock = threading.Lock()
        self.faults = Faults()
        self.tamper = False  # a fault switch too: change the document after signing it
        self.requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.requests += 1
        if fault := self.faults.answer(start_response, "SMP"):
            return fault
        if environ["REQUEST_METHOD"] != "GET":
            return respond(start_response, 405)
        parts = environ.get("PATH_INFO", "").strip("/").split("/")
        if len(parts) != 3 or parts[1] != "services":
            return respond(start_response, 404)
        participant_scheme, _, participant = unquote(parts[0]).partition("::")
        document_scheme, _, document_id = unquote(parts[2]).partition("::")
        with self.lock:
            registration = self.find(participant)
            if (
                participant_scheme != PARTY_SCHEME
                or document_scheme != DOCUMENT_ID_SCHEME
                or registration is None
                or document_id not in registration.document_ids
            ):
                return respond(start_response, 404, b"not registered")
            document = self.signed_metadata(participant, document_id, registration)
        return respond(start_response, 200, document, "application/xml")

    def find(self, participant: str) -> Registration | None:
        for key, registration in self.registrations.items():
            if key.lower() == participant.lower():
                return registration
        return None

    def signed_metadata(
        self, participant: str, document_id: str, registration: Registration
    ) -> bytes:
        root = etree.Element(q(SMP_NS, "SignedServiceMetadata"), nsmap={None: SMP_NS})
        info = etree.SubElement(
            etree.SubElement(root, q(SMP_NS, "ServiceMetadata")), q(SMP_NS, "ServiceInformation")
        )

        def sub(parent: etree._Element, ns: str, name: str, text: str | None = None, **attrs: str):
            element = etree.SubElement(parent, q(ns, name), attrs)
            element.text = text
            return element

        sub(info, SMP_NS, "ParticipantIdentifier", participant, scheme=PARTY_SCHEME)
        sub(info, SMP_NS, "DocumentIdentifier", document_id, scheme=DOCUMENT_ID_SCHEME)
        process = sub(sub(info, SMP_NS, "ProcessList"), SMP_NS, "Process")
        sub(process, SMP_NS, "ProcessIdentifier", PROCESS_ID, scheme=PROCESS_ID_SCHEME)
        endpoint = sub(
            sub(process, SMP_NS, "ServiceEndpointList"),
            SMP_NS,
            "Endpoint",
            transportProfile=AS4_TRANSPORT,
        )
        sub(endpoint, SMP_NS, "EndpointURI", registration.endpoint_url)
        sub(endpoint, SMP_NS, "RequireBusinessLevelSignature", "true")
        sub(endpoint, SMP_NS, "ServiceActivationDate", format_timestamp(registration.activation))
        sub(endpoint, SMP_NS, "ServiceExpirationDate", format_timestamp(registration.expiration))
        sub(endpoint, SMP_NS, "Certificate", certificate_base64(registration.access_point_cert))
        sub(endpoint, SMP_NS, "ServiceDescription", "sdk-bridge sandbox access point")
        sub(endpoint, SMP_NS, "TechnicalContactUrl", "https://127.0.0.1/")
        for kind, certs in (
            (SIGNING_CERT, registration.signing_certs),
            (ENCRYPTION_CERT, registration.encryption_certs),
        ):
            for cert in certs:
                extension = sub(info, SMP_NS, "Extension")
                sub(extension, SMP_NS, "ExtensionID", CERTPUB_EXTENSION)
                published = sub(extension, SMC_NS, "Certificate")
                sub(published, SMB_NS, "TypeCode", kind)
                sub(
                    published,
                    SMB_NS,
                    "ContentBinaryObject",
                    certificate_base64(cert),
                    mimeCode="application/base64",
                )
        xmldsig.sign(root, self.signer.key, self.signer.cert)
        document = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        if self.tamper:
            document = document.replace(b"<EndpointURI>https://", b"<EndpointURI>http://", 1)
        return document
