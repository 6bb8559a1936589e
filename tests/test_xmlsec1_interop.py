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
from typing import Any

import pytest
from lxml import etree
from support import xmlsec1
from support.parties import ADDRESS_B, ORG_A, ORG_B, keypair, make_message, message_header

from sdk_bridge.lab.testpki import Identity, TestPKI
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import sealing, xhe, xmldsig
from sdk_bridge.sdk.names import APP_NS, DS_NS, MSG_NS, XENC_NS, XHB_NS, q
from sdk_bridge.sdk.verdict import ACCEPTED, Detail, Outcome, Reason, Verdict
from sdk_bridge.sdk.xmlsafe import parse, parse_apart

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
def encrypted(bob: Identity) -> Sealed:
    """The same kind of envelope, encrypted by xmlsec1 and not yet signed."""
    xmlsec1.require_xmlsec1()
    message = make_message(created=CREATED)
    unsigned = etree.tostring(
        xhe.build(message_header(message), msg.to_element(message)),
        xml_declaration=True,
        encoding="UTF-8",
    )
    return Sealed(message, xmlsec1.encrypt_element(unsigned, PAYLOAD, bob.cert_pem))


@pytest.fixture(scope="module")
def theirs(encrypted: Sealed, alice: Identity) -> Sealed:
    """The same kind of envelope, but encrypted and signed by xmlsec1 alone."""
    signed = xmlsec1.sign_enveloped(encrypted.xml, alice.key_pem, alice.cert_pem)
    return Sealed(encrypted.message, signed)


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


@pytest.mark.parametrize("how", ["c14n 1.0", "exc-c14n with PrefixList", "c14n 1.1"])
def test_we_open_a_kvittens_signed_by_xmlsec1(
    pki: TestPKI, alice: Identity, bob: Identity, how: str
) -> None:
    """A kvittens travels in the clear: its UBL namespaces are canonicalised too."""
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
    template = xmlsec1.signature_template(**SIGNED_WITH.get(how, {}))
    signed = xmlsec1.sign_enveloped(unsigned, bob.key_pem, bob.cert_pem, template)
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


# --- the canonicalizations XHE allows besides c14n 1.0 ------------------------------------
# C3.2.2 §3.5.2.1: any XMLDSig 1.1 makes REQUIRED, as CanonicalizationMethod and as the
# Reference's transform after enveloped-signature (see sdk_bridge/sdk/xmldsig.py).

EXC, C14N11 = xmlsec1.EXC_C14N, xmlsec1.C14N11
# Prefixes the envelope declares on its root (its default namespace is XHB's) that
# SignedInfo and most of the document do not use: exclusive c14n leaves them out unless
# the PrefixList names them.
PREFIXES = "#default xha xhe"


def then(c14n: str | None, prefix_list: str | None = None) -> tuple[str, ...]:
    """The Reference's transforms: enveloped-signature, then `c14n` (None: none, so 1.0)."""
    enveloped = xmlsec1.transform(xmlsec1.ENVELOPED)
    return (enveloped,) if c14n is None else (enveloped, xmlsec1.transform(c14n, prefix_list))


# name: signature_template arguments
SIGNED_WITH: dict[str, dict[str, Any]] = {
    "exc-c14n": {"canonicalization": EXC, "transforms": then(EXC)},
    "exc-c14n with PrefixList": {
        "canonicalization": EXC,
        "prefix_list": PREFIXES,
        "transforms": then(EXC, PREFIXES),
    },
    "exc-c14n with PrefixList as CanonicalizationMethod only": {
        "canonicalization": EXC,
        "prefix_list": PREFIXES,
        "transforms": then(xmlsec1.C14N),
    },
    "exc-c14n as CanonicalizationMethod, no c14n transform": {
        "canonicalization": EXC,
        "transforms": then(None),
    },
    "exc-c14n with PrefixList as Reference transform only": {"transforms": then(EXC, PREFIXES)},
    "exc-c14n with PrefixList without #default": {
        "canonicalization": EXC,
        "prefix_list": "xhe",
        "transforms": then(EXC, "xha"),
    },
    "c14n 1.1": {"canonicalization": C14N11, "transforms": then(C14N11)},
    "c14n 1.1 as CanonicalizationMethod only": {
        "canonicalization": C14N11,
        "transforms": then(xmlsec1.C14N),
    },
    "c14n 1.1 as Reference transform, exc-c14n as CanonicalizationMethod": {
        "canonicalization": EXC,
        "transforms": then(C14N11),
    },
}


def signed_with(encrypted: Sealed, alice: Identity, **template: Any) -> bytes:
    return xmlsec1.sign_enveloped(
        encrypted.xml, alice.key_pem, alice.cert_pem, xmlsec1.signature_template(**template)
    )


@pytest.mark.parametrize("how", list(SIGNED_WITH))
def test_we_open_what_xmlsec1_signed_with_another_canonicalization(
    pki: TestPKI, encrypted: Sealed, receiver_b: sealing.Receiver, alice: Identity, how: str
) -> None:
    signed = signed_with(encrypted, alice, **SIGNED_WITH[how])
    ok, out = xmlsec1.verify(signed, trusted_pems=trusted(pki))
    assert ok, out
    opened = sealing.open_envelope(signed, receiver_b)
    assert opened.verdict == ACCEPTED, opened.verdict.line()
    assert opened.signer == alice.cert
    assert opened.message == encrypted.message

    # The digest in parts, as for a 30 MB message: the CipherValue stands apart.
    root, apart = parse_apart(signed, max_bytes=len(signed), min_text=100)
    assert apart is not None
    assert xmldsig.verify(root, replacing=(apart.placeholder.encode(), apart.text)) == alice.cert


def test_the_prefix_list_changes_what_is_signed(encrypted: Sealed, alice: Identity) -> None:
    """Ignoring the PrefixList would give other bytes: the test above means it is honoured."""
    digests = {
        prefix_list: etree.fromstring(
            signed_with(encrypted, alice, transforms=then(EXC, prefix_list))
        ).findtext(f".//{{{DS_NS}}}DigestValue")
        for prefix_list in (None, "#default", "xha xhe", PREFIXES)
    }
    assert len(set(digests.values())) == len(digests), digests

    root = parse(
        signed_with(encrypted, alice, **SIGNED_WITH["exc-c14n with PrefixList"]), max_bytes=10**6
    )
    signed_info = only(root, q(DS_NS, "SignedInfo"))
    as_signed = xmldsig._signed_info_bytes(
        signed_info, xmldsig._Canonicalization(EXC, tuple(PREFIXES.split()))
    )
    assert as_signed.startswith(
        f'<ds:SignedInfo xmlns="{XHB_NS}" xmlns:ds="{DS_NS}" xmlns:xha="'.encode()
    )
    assert as_signed != xmldsig._signed_info_bytes(signed_info, xmldsig._Canonicalization(EXC))


@pytest.mark.parametrize("where", sorted(TAMPERINGS))
def test_we_reject_tampered_copy_of_an_exc_c14n_envelope(
    pki: TestPKI, encrypted: Sealed, receiver_b: sealing.Receiver, alice: Identity, where: str
) -> None:
    signed = signed_with(encrypted, alice, **SIGNED_WITH["exc-c14n with PrefixList"])
    assert sealing.open_envelope(reserialized(signed), receiver_b).verdict == ACCEPTED
    tampered = reserialized(signed, TAMPERINGS[where])
    assert not xmlsec1.verify(tampered, trusted_pems=trusted(pki))[0]
    verdict = sealing.open_envelope(tampered, receiver_b).verdict
    assert verdict.line() == (
        "REJECTED SIG security: signature: the signed content has been changed (digest mismatch)"
    )


XPATH = "http://www.w3.org/TR/1999/REC-xpath-19991116"
NOT_SIGNATURE = "<ds:XPath>not(ancestor-or-self::ds:Signature)</ds:XPath>"
TRANSFORMS_REFUSED = "only the enveloped-signature transform, then one c14n transform, is allowed"
C14N_REFUSED = "must be one of " + ", ".join(xmldsig.CANONICALIZATIONS)

# name: (signature_template arguments, the reason we give); xmlsec1 verifies each.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "an XPath filter in place of enveloped-signature": (
        {"transforms": (xmlsec1.transform(XPATH, content=NOT_SIGNATURE),)},
        TRANSFORMS_REFUSED,
    ),
    "an XPath filter after enveloped-signature": (
        {"transforms": (*then(None), xmlsec1.transform(XPATH, content="<ds:XPath>1</ds:XPath>"))},
        f"the transform after enveloped-signature {C14N_REFUSED}",
    ),
    "rsa-sha1": (
        {"signature_method": f"{xmlsec1.DS}rsa-sha1"},
        f"SignatureMethod must be {xmlsec1.RSA_SHA256}",
    ),
    "a SHA-1 digest": ({"digest_method": f"{xmlsec1.DS}sha1"}, "the digest must be SHA-256"),
    "an InclusiveNamespaces PrefixList under c14n 1.0": (
        {"prefix_list": "xhe"},
        "CanonicalizationMethod takes no parameters but exclusive c14n's InclusiveNamespaces"
        " PrefixList",
    ),
    "a PrefixList that names no prefix": (
        {"canonicalization": EXC, "prefix_list": "xhe:x"},
        "InclusiveNamespaces PrefixList must name namespace prefixes",
    ),
    **{
        f"{name} with comments as CanonicalizationMethod": (
            {"canonicalization": f"{uri}#WithComments"},
            f"CanonicalizationMethod {C14N_REFUSED}",
        )
        for name, uri in [("c14n 1.0", xmlsec1.C14N), ("c14n 1.1", C14N11)]
    },
    "exc-c14n with comments as CanonicalizationMethod": (
        {"canonicalization": f"{EXC}WithComments"},
        f"CanonicalizationMethod {C14N_REFUSED}",
    ),
    "exc-c14n with comments as Reference transform": (
        {"transforms": then(f"{EXC}WithComments")},
        f"the transform after enveloped-signature {C14N_REFUSED}",
    ),
}


@pytest.mark.parametrize("how", list(REFUSED))
def test_we_refuse_what_xmlsec1_signed_outside_the_profile(
    pki: TestPKI, encrypted: Sealed, receiver_b: sealing.Receiver, alice: Identity, how: str
) -> None:
    template, reason = REFUSED[how]
    signed = signed_with(encrypted, alice, **template)
    ok, out = xmlsec1.verify(signed, trusted_pems=trusted(pki))
    assert ok, out  # a good signature, but not in a form the XHE profile allows
    opened = sealing.open_envelope(signed, receiver_b)
    assert opened.verdict.line() == f"REJECTED SIG security: signature: {reason}"
    assert opened.message is None and opened.plaintext is None


# --- xml:* attributes above SignedInfo, which inclusive c14n carries down to it ------------


@pytest.mark.parametrize(
    "attributes",
    ['xml:lang="sv" xml:space="preserve"', 'xml:id="e1"', 'xml:base="https://b.example.se/a/"'],
)
@pytest.mark.parametrize(
    "canonicalization, c14n_transform",
    [(xmlsec1.C14N, xmlsec1.C14N), (C14N11, C14N11), (EXC, EXC), (EXC, C14N11)],
    ids=["c14n 1.0", "c14n 1.1", "exc-c14n", "exc-c14n, c14n 1.1 transform"],
)
def test_xml_attributes_on_the_root(
    pki: TestPKI, alice: Identity, attributes: str, canonicalization: str, c14n_transform: str
) -> None:
    """C14N 1.0 carries every xml:* of the root down to SignedInfo, 1.1 all but xml:id
    (xml:base it joins, which we do not: refused), exclusive c14n none. The Reference's
    c14n 1.1 is 1.0 whatever the document holds (its node-set leaves out no parent)."""
    document = f'<r xmlns="urn:x" {attributes}><e xml:base="b/" xml:id="e2">t</e></r>'.encode()
    template = xmlsec1.signature_template(
        canonicalization=canonicalization, transforms=then(c14n_transform)
    )
    signed = xmlsec1.sign_enveloped(document, alice.key_pem, alice.cert_pem, template)
    ok, out = xmlsec1.verify(signed, trusted_pems=trusted(pki))
    assert ok, out
    root = parse(signed, max_bytes=len(signed))
    signed_info = only(root, q(DS_NS, "SignedInfo"))
    # lxml alone carries none down: what verify accepts below, it accepts by carrying them.
    assert b"xml:" not in etree.tostring(signed_info, method="c14n")
    if canonicalization == C14N11 and "xml:base" in attributes:
        with pytest.raises(xmldsig.SignatureInvalid, match="xml:base"):
            xmldsig.verify(root)
    else:
        assert xmldsig.verify(root) == alice.cert
