"""The SMP client against the sandbox's SMP over HTTPS, certificate verification on."""

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from lxml import etree
from support.parties import ORG_B, keypair

from sdk_bridge.lab.sandbox.smp import SMP, Registration
from sdk_bridge.lab.sandbox.web import Faults, Server
from sdk_bridge.lab.testpki import Identity, TestPKI, make_pki
from sdk_bridge.registry.errors import NotRegistered, RegistryUnavailable
from sdk_bridge.registry.smp import (
    SMB_NS,
    Locator,
    SMPClient,
    read_signed_metadata,
    service_path,
    sml_name,
)
from sdk_bridge.sdk import xmldsig
from sdk_bridge.sdk.names import KVITTENS_DOCUMENT_ID, MESSAGE_DOCUMENT_ID


@pytest.fixture(scope="module")
def smp_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """The SMP's own chain, apart from the O2O one, as in Digg's federation."""
    return make_pki(tmp_path_factory.mktemp("smp-pki"), key_size=2048)


@pytest.fixture(scope="module")
def smp(
    smp_pki: TestPKI, pki: TestPKI, alice: Identity, bob: Identity, bob_next: Identity
) -> Iterator[tuple[SMP, Server]]:
    signer = smp_pki.issue("smp.sandbox", key_usage="sign")
    tls = smp_pki.issue("tls.smp.sandbox", key_usage="sign", hosts=["127.0.0.1"])
    registrations = {
        ORG_B: Registration(
            endpoint_url="https://127.0.0.1:1/ap-b",
            access_point_cert=tls.cert,
            signing_certs=[bob.cert],
            encryption_certs=[bob.cert, bob_next.cert],
        )
    }
    app = SMP(keypair(signer), registrations)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_pem, tls.key_pem)
    server = Server(app, tls=context).start()
    yield app, server
    server.stop()


@pytest.fixture(autouse=True)
def _switches_off(smp: tuple[SMP, Server]) -> None:
    smp[0].faults, smp[0].tamper = Faults(), False


@pytest.fixture
def client(smp: tuple[SMP, Server], smp_pki: TestPKI) -> Iterator[SMPClient]:
    server = smp[1]
    verify = ssl.create_default_context(cafile=str(smp_pki.chain_pem))
    with httpx.Client(verify=verify, timeout=2) as http:
        yield SMPClient(http, Locator(base_url=server.url), [smp_pki.issuing_ca.cert])


def test_metadata_is_fetched_verified_and_read(
    client: SMPClient, bob: Identity, bob_next: Identity
) -> None:
    metadata = client.service_metadata(ORG_B, MESSAGE_DOCUMENT_ID)
    assert metadata.participant == ORG_B
    assert metadata.encryption_certificates == (bob.cert, bob_next.cert)
    assert metadata.signing_certificates == (bob.cert,)
    (endpoint,) = metadata.endpoints
    assert endpoint.url == "https://127.0.0.1:1/ap-b"
    assert endpoint.active_at(datetime.now(UTC))
    assert client.service_metadata(ORG_B, KVITTENS_DOCUMENT_ID).document_id == KVITTENS_DOCUMENT_ID


def test_tampered_metadata_is_refused(client: SMPClient, smp: tuple[SMP, Server]) -> None:
    smp[0].tamper = True
    with pytest.raises(RegistryUnavailable, match="not trustworthy: the signed content"):
        client.service_metadata(ORG_B, MESSAGE_DOCUMENT_ID)


def test_metadata_signed_outside_the_smp_trust_anchor_is_refused(
    smp: tuple[SMP, Server], smp_pki: TestPKI, pki: TestPKI
) -> None:
    verify = ssl.create_default_context(cafile=str(smp_pki.chain_pem))
    with httpx.Client(verify=verify, timeout=2) as http:
        o2o_trusting = SMPClient(http, Locator(base_url=smp[1].url), [pki.issuing_ca.cert])
        with pytest.raises(RegistryUnavailable, match="does not chain to a trusted CA"):
            o2o_trusting.service_metadata(ORG_B, MESSAGE_DOCUMENT_ID)


def test_unknown_participant_and_document_are_not_registered(client: SMPClient) -> None:
    with pytest.raises(NotRegistered):
        client.service_metadata("0203:nobody.example.se", MESSAGE_DOCUMENT_ID)
    with pytest.raises(NotRegistered):
        client.service_metadata(ORG_B, "urn:some:other:document")


def test_smp_down_is_a_temporary_failure(client: SMPClient, smp: tuple[SMP, Server]) -> None:
    smp[0].faults.fail_with = 503
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        client.service_metadata(ORG_B, MESSAGE_DOCUMENT_ID)
    smp[0].faults.fail_with = None
    smp[0].faults.silent_seconds = 3
    with pytest.raises(RegistryUnavailable, match="did not answer"):
        client.service_metadata(ORG_B, MESSAGE_DOCUMENT_ID)


def test_expired_registration_is_not_registered(client: SMPClient, smp: tuple[SMP, Server]) -> None:
    registration = smp[0].registrations[ORG_B]
    saved = registration.expiration
    registration.expiration = datetime.now(UTC) - timedelta(minutes=1)
    try:
        with pytest.raises(NotRegistered, match="no active endpoint"):
            client.service_metadata(ORG_B, MESSAGE_DOCUMENT_ID)
    finally:
        registration.expiration = saved


def test_rest_path_and_bdxl_name() -> None:
    assert service_path("0203:habo.se", MESSAGE_DOCUMENT_ID) == (
        "/iso6523-actorid-upis%3A%3A0203%3Ahabo.se/services/busdox-docid-qns%3A%3A"
        "urn%3Ariv%3Ainfrastructure%3Amessaging%3AMessageWithAttachments%3A3%3A%3A"
        "messagePayload%23%233.0%3A%3Atm-base-ext-sigenc"
    )
    name = sml_name("0203:Habo.se", "sml.example.se")
    assert name == sml_name("0203:habo.se", "sml.example.se.")
    label, scheme, zone = name.split(".", 2)
    assert len(label) == 52 and label.isupper() and scheme == "iso6523-actorid-upis"
    assert zone == "sml.example.se"
    assert sml_name("0203:habo.se", "z", "md5") == (
        "B-66637da07812e25b32e5aad2c2829f63.iso6523-actorid-upis.z"
    )
    with pytest.raises(ValueError, match="unknown SML name form"):
        sml_name("0203:habo.se", "z", "sha1")


def test_no_locator_configured() -> None:
    with pytest.raises(RegistryUnavailable, match="neither an SMP URL nor an SML zone"):
        Locator().smp_url(ORG_B)


def test_signed_metadata_missing_a_certificate_value_is_unavailable(
    smp: tuple[SMP, Server], smp_pki: TestPKI
) -> None:
    """Well signed but broken (a CertPub Certificate without its value): a temporary
    failure with a reason, not a crash."""
    app = smp[0]
    document = app.signed_metadata(ORG_B, MESSAGE_DOCUMENT_ID, app.registrations[ORG_B])
    root = etree.fromstring(document)
    root.remove(root[-1])  # the signature
    value = root.find(f".//{{{SMB_NS}}}ContentBinaryObject")
    value.getparent().remove(value)
    xmldsig.sign(root, app.signer.key, app.signer.cert)
    with pytest.raises(RegistryUnavailable, match="without ContentBinaryObject"):
        read_signed_metadata(
            etree.tostring(root),
            participant=ORG_B,
            document_id=MESSAGE_DOCUMENT_ID,
            trust_anchors=[smp_pki.issuing_ca.cert],
            at=datetime.now(UTC),
        )
