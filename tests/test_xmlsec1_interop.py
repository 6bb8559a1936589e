"""Interoperability with xmlsec1, an XML-DSig/XML-Enc implementation independent of ours.

Both directions: xmlsec1 verifies and decrypts what we seal, and we open what xmlsec1
encrypts and signs. Each side must also refuse a tampered copy of the other's envelope.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import xmlsec1
from conftest import ADDRESS_B, ORG_A, ORG_B, keypair, make_message, message_header
from lxml import etree

from bridge.sdk import kvittens as kv
from bridge.sdk import message as msg
from bridge.sdk import sealing, xhe
from bridge.sdk.names import APP_NS, DS_NS, MSG_NS, XENC_NS, XHB_NS, q
from bridge.sdk.verdict import ACCEPTED, Detail, Outcome, Reason, Verdict
from bridge.testpki import Identity, TestPKI

PAYLOAD = q(MSG_NS, "messagePayload")
# The message format keeps milliseconds only: a whole-millisecond time survives a round trip.
CREATED = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)


@dataclass(frozen=True)
class Sealed:
    message: msg.BusinessMessage
    xml: bytes


def trusted(pki: TestPKI) -> list[Path]:
    return [pki.root_pem, pki.issuing_ca.cert_pem]


def exc14n(element: etree._Element) -> bytes:
    """Exclusive c14n: the element alone, without namespaces inherited from the envelope."""
    return etree.tostring(element, method="c14n", exclusive=True)


def only(root: etree._Element, tag: str) -> etree._Element:
    (found,) = root.iter(tag)
    return found


def reserialized(xml: bytes, change: Callable[[etree._Element], None] | None = None) -> bytes:
    """`xml` parsed and written again by lxml, after `change` (if any) edits the tree."""
    root = etree.fromstring(xml)
    if change is not None:
        change(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _change_handling_service_id(root: etree._Element) -> None:
    only(root, q(XHB_NS, "HandlingServiceID")).text = "registrator.x"


def _change_payload_ciphertext(root: etree._Element) -> None:
    data = only(root, q(XENC_NS, "EncryptedData"))
    value = data.find(f"{{{XENC_NS}}}CipherData/{{{XENC_NS}}}CipherValue")
    assert value is not None and value.text
    text = value.text
    i = next(i for i, c in enumerate(text) if i >= 20 and c.isalpha())
    value.text = text[:i] + ("B" if text[i] == "A" else "A") + text[i + 1 :]


TAMPERINGS = {
    "header": _change_handling_service_id,
    "ciphertext": _change_payload_ciphertext,
}


@pytest.fixture(scope="module")
def ours(alice: Identity, bob: Identity) -> Sealed:
    """A business message A sends B, sealed by our code."""
    message = make_message(created=CREATED)
    xml = sealing.seal_message(msg.to_xml(message), signer=keypair(alice), recipient_cert=bob.cert)
    return Sealed(message, xml)


@pytest.fixture(scope="module")
def theirs(alice: Identity, bob: Identity) -> Sealed:
    """The same kind of envelope, but encrypted and signed by xmlsec1 alone."""
    xmlsec1.require_xmlsec1()
    message = make_message(created=CREATED)
    unsigned = etree.tostring(
        xhe.build(message_header(message), msg.to_element(message)),
        xml_declaration=True,
        encoding="UTF-8",
    )
    encrypted = xmlsec1.encrypt_element(unsigned, PAYLOAD, bob.cert_pem)
    return Sealed(message, xmlsec1.sign_enveloped(encrypted, alice.key_pem, alice.cert_pem))


# --- what we seal, xmlsec1 verifies and decrypts ---------------------------------------


def test_xmlsec1_verifies_our_sealed_message(pki: TestPKI, ours: Sealed) -> None:
    xmlsec1.require_xmlsec1()
    root = etree.fromstring(ours.xml)
    assert root[-1].tag == q(DS_NS, "Signature")
    assert next(root.iter(PAYLOAD), None) is None  # the message travels encrypted
    assert "Ansökan om bygglov".encode() not in ours.xml
    ok, out = xmlsec1.verify(ours.xml, trusted_pems=trusted(pki))
    assert ok, out
    # The chain check is real: without trust anchors xmlsec1 refuses our signer.
    assert not xmlsec1.verify(ours.xml)[0]


def test_xmlsec1_decrypts_our_sealed_message(bob: Identity, alice: Identity, ours: Sealed) -> None:
    xmlsec1.require_xmlsec1()
    with pytest.raises(xmlsec1.Xmlsec1Error):
        xmlsec1.decrypt(ours.xml, alice.key_pem)  # encrypted to B, not to A
    decrypted = etree.fromstring(xmlsec1.decrypt(ours.xml, bob.key_pem))
    assert next(decrypted.iter(q(XENC_NS, "EncryptedData")), None) is None
    payload = only(decrypted, PAYLOAD)
    assert payload.getparent().tag == q(xhe.XHA_NS, "PayloadContent")

    expected = msg.to_xml(ours.message)
    assert exc14n(payload) == exc14n(etree.fromstring(expected))
    assert msg.parse(etree.tostring(payload)) == msg.parse(expected) == ours.message


@pytest.mark.parametrize("accepted", [True, False], ids=["accepted", "rejected"])
def test_xmlsec1_verifies_our_sealed_kvittens(pki: TestPKI, bob: Identity, accepted: bool) -> None:
    xmlsec1.require_xmlsec1()
    verdict = (
        ACCEPTED
        if accepted
        else Verdict(
            Outcome.REJECTED, Reason.BV, Detail.INVARIANT, "Fältet är tomt – åtgärda", "NA"
        )
    )
    kvittens = kv.Kvittens.answering(
        verdict, refers_to=str(uuid.uuid4()), sender=ORG_B, receiver=ORG_A
    )
    sealed = sealing.seal_kvittens(kvittens, signer=keypair(bob), handling_service_id=ADDRESS_B)
    assert next(etree.fromstring(sealed).iter(q(APP_NS, "ApplicationResponse")), None) is not None
    ok, out = xmlsec1.verify(sealed, trusted_pems=trusted(pki))
    assert ok, out
    tampered = sealed.replace(kvittens.refers_to.encode(), str(uuid.uuid4()).encode())
    assert tampered != sealed
    assert not xmlsec1.verify(tampered, trusted_pems=trusted(pki))[0]


# --- what xmlsec1 builds, we open ------------------------------------------------------


def test_we_open_what_xmlsec1_encrypted_and_signed(
    theirs: Sealed, receiver_b: sealing.Receiver, alice: Identity
) -> None:
    root = etree.fromstring(theirs.xml)
    assert only(root, q(DS_NS, "Signature")).getparent() is root
    assert next(root.iter(PAYLOAD), None) is None  # xmlsec1 really encrypted it
    opened = sealing.open_envelope(theirs.xml, receiver_b)
    assert opened.verdict == ACCEPTED, opened.verdict.line()
    assert opened.signer == alice.cert
    assert opened.header is not None and opened.header.encrypted
    assert opened.message == theirs.message
    assert opened.plaintext is not None
    assert exc14n(etree.fromstring(opened.plaintext)) == exc14n(
        etree.fromstring(msg.to_xml(theirs.message))
    )


def test_we_open_a_kvittens_signed_by_xmlsec1(pki: TestPKI, alice: Identity, bob: Identity) -> None:
    xmlsec1.require_xmlsec1()
    kvittens = kv.Kvittens.answering(
        ACCEPTED, refers_to=str(uuid.uuid4()), sender=ORG_B, receiver=ORG_A
    )
    # IssueTime carries whole seconds.
    kvittens = replace(kvittens, issued=kvittens.issued.replace(microsecond=0))
    header = xhe.Header(
        id=kvittens.id,
        created=kvittens.issued,
        kind=xhe.PayloadKind.KVITTENS,
        from_party=ORG_B,
        to_party=ORG_A,
        handling_service_id=ADDRESS_B,
        encrypted=False,
    )
    unsigned = etree.tostring(
        xhe.build(header, kv.to_element(kvittens)), xml_declaration=True, encoding="UTF-8"
    )
    signed = xmlsec1.sign_enveloped(unsigned, bob.key_pem, bob.cert_pem)
    receiver_a = sealing.Receiver(
        sender_signing_certs=[bob.cert],
        trust_anchors=[pki.issuing_ca.cert, pki.root.cert],
        our_parties={ORG_A},
    )
    opened = sealing.open_envelope(signed, receiver_a)
    assert opened.verdict == ACCEPTED, opened.verdict.line()
    assert opened.is_kvittens
    assert opened.signer == bob.cert
    assert opened.kvittens == kvittens
    assert opened.message is None

    # Signed by xmlsec1 with a key B does not publish: refused.
    receiver_a = replace(receiver_a, sender_signing_certs=[alice.cert])
    refused = sealing.open_envelope(signed, receiver_a)
    assert refused.verdict.outcome is Outcome.NO_KVITTENS  # never a kvittens for a kvittens
    assert "SIG security" in refused.verdict.text


# --- tampering -------------------------------------------------------------------------


@pytest.mark.parametrize("where", sorted(TAMPERINGS))
def test_xmlsec1_rejects_tampered_copy_of_ours(pki: TestPKI, ours: Sealed, where: str) -> None:
    xmlsec1.require_xmlsec1()
    # Re-serializing alone keeps the signature valid, so the failure below is the change.
    same = reserialized(ours.xml)
    ok, out = xmlsec1.verify(same, trusted_pems=trusted(pki))
    assert ok, out
    tampered = reserialized(ours.xml, TAMPERINGS[where])
    assert tampered != same
    ok, out = xmlsec1.verify(tampered, trusted_pems=trusted(pki))
    assert not ok, out


@pytest.mark.parametrize("where", sorted(TAMPERINGS))
def test_we_reject_tampered_copy_of_xmlsec1s(
    theirs: Sealed, receiver_b: sealing.Receiver, where: str
) -> None:
    same = reserialized(theirs.xml)
    assert sealing.open_envelope(same, receiver_b).verdict == ACCEPTED
    tampered = reserialized(theirs.xml, TAMPERINGS[where])
    assert tampered != same
    opened = sealing.open_envelope(tampered, receiver_b)
    verdict = opened.verdict
    assert (verdict.outcome, verdict.reason, verdict.detail) == (
        Outcome.REJECTED,
        Reason.SIG,
        Detail.SECURITY,
    ), verdict.line()
    assert "digest" in verdict.text
    assert verdict.line().startswith("REJECTED SIG security:")
    assert opened.message is None and opened.plaintext is None
