"""Seal and open: the happy path, certificate rollover, and every way an envelope goes wrong.

Each failure must end as the verdict Digg prescribes — a kvittens REJECTED with the right
reason, or NO-KVITTENS (quarantine) — and never as an unhandled exception.
"""

import asyncio
import dataclasses
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from support.parties import ADDRESS_B, ORG_A, ORG_B, keypair, make_message, message_header

from sdk_bridge.lab.testpki import PASSPHRASE, Identity, TestPKI
from sdk_bridge.runtime.workers import CryptoWorkers
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import sealing, xhe, xmldsig, xmlenc
from sdk_bridge.sdk.keys import KeyPair, load_keypair
from sdk_bridge.sdk.names import MAX_MESSAGE_BYTES, XENC_NS
from sdk_bridge.sdk.sealing import Receiver, open_envelope, seal_message
from sdk_bridge.sdk.verdict import ACCEPTED, Outcome, Verdict


def seal(alice: Identity, bob: Identity | KeyPair, **changes: object) -> bytes:
    return seal_message(
        msg.to_xml(make_message(**changes)), signer=keypair(alice), recipient_cert=bob.cert
    )


def craft(
    signer: Identity,
    payload: etree._Element,
    *,
    message: msg.BusinessMessage | None = None,
    **header_changes: object,
) -> bytes:
    """An envelope built by hand, for cases our own sealing refuses to make."""
    header = message_header(message or make_message(), **header_changes)
    root = xhe.build(header, payload)
    xmldsig.sign(root, signer.key, signer.cert)
    return etree.tostring(root)


def encrypted(message: msg.BusinessMessage, bob: Identity) -> etree._Element:
    return xmlenc.encrypt(etree.tostring(msg.to_element(message)), bob.cert)


def expect(opened: sealing.Opened, line_start: str) -> None:
    assert opened.verdict.line().startswith(line_start), opened.verdict.line()


# --- the happy path ---------------------------------------------------------------------


def test_sealed_message_opens_accepted(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    original = make_message()
    opened = open_envelope(
        seal_message(msg.to_xml(original), signer=keypair(alice), recipient_cert=bob.cert),
        receiver_b,
    )
    assert opened.verdict == ACCEPTED
    assert opened.message is not None and opened.header is not None
    assert opened.message == dataclasses.replace(original, created=opened.message.created)
    assert opened.header.id == original.message_id
    assert opened.header.handling_service_id == ADDRESS_B
    assert (opened.header.from_party, opened.header.to_party) == (ORG_A, ORG_B)
    assert opened.signer == alice.cert


def test_model_and_bytes_seal_alike(alice: Identity, bob: Identity, receiver_b: Receiver) -> None:
    message = make_message()
    opened = open_envelope(
        seal_message(message, signer=keypair(alice), recipient_cert=bob.cert), receiver_b
    )
    assert opened.verdict == ACCEPTED
    assert opened.message is not None
    assert opened.message.message_id == message.message_id


def test_rollover_second_decryption_key(
    alice: Identity, bob: Identity, bob_next: Identity, receiver_b: Receiver
) -> None:
    both = dataclasses.replace(receiver_b, decryption_keys=[keypair(bob_next), keypair(bob)])
    assert open_envelope(seal(alice, bob), both).verdict == ACCEPTED
    assert open_envelope(seal(alice, bob_next), both).verdict == ACCEPTED


def test_rollover_several_published_signing_certs(
    alice: Identity, mallory: Identity, receiver_b: Receiver
) -> None:
    """CertPub may publish more than one signing certificate during a rollover."""
    assert receiver_b.sender_signing_certs is not None
    receiver = dataclasses.replace(
        receiver_b, sender_signing_certs=[mallory.cert, receiver_b.sender_signing_certs[0]]
    )
    assert open_envelope(seal(alice, receiver_b.decryption_keys[0]), receiver).verdict == ACCEPTED


def test_keys_from_pkcs12_and_encrypted_pem(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    signer = load_keypair(alice.p12, passphrase=PASSPHRASE)
    sealed = seal_message(msg.to_xml(make_message()), signer=signer, recipient_cert=bob.cert)
    decrypter = load_keypair(bob.key_pem_encrypted, bob.cert_pem, PASSPHRASE)
    assert (
        open_envelope(sealed, dataclasses.replace(receiver_b, decryption_keys=[decrypter])).verdict
        == ACCEPTED
    )


def test_crypto_runs_in_the_crypto_workers(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    """Keys and receivers pickle, so RSA work can leave the event loop's process; a
    message that breaks SDK's rules comes back as the InvalidMessage it is, as the
    outbound worker bounces it by its type (5.6.0)."""
    xml = msg.to_xml(make_message())
    invalid = xml.replace(b"<sdk:confidentiality>true", b"<sdk:confidentiality>ja")

    async def go() -> None:
        workers = CryptoWorkers(1)
        try:
            sealed = await workers.run(_seal, xml, keypair(alice), bob.cert)
            opened = await workers.run(open_envelope, sealed, receiver_b)
            assert opened.verdict == ACCEPTED
            with pytest.raises(msg.InvalidMessage) as error:
                await workers.run(_seal, invalid, keypair(alice), bob.cert)
            assert error.value.problem.detail == "structure"
        finally:
            await workers.close()

    asyncio.run(go())
    assert pickle.loads(pickle.dumps(keypair(bob))).cert == bob.cert


def _seal(xml: bytes, signer: KeyPair, recipient: x509.Certificate) -> bytes:
    return seal_message(xml, signer=signer, recipient_cert=recipient)


# --- signature and sender identity ------------------------------------------------------


def test_wrong_decryption_key_is_quarantined(
    alice: Identity, bob: Identity, mallory: Identity, receiver_b: Receiver
) -> None:
    wrong = dataclasses.replace(receiver_b, decryption_keys=[keypair(mallory)])
    expect(
        open_envelope(seal(alice, bob), wrong),
        "NO-KVITTENS quarantine: payload cannot be decrypted",
    )


def test_encrypted_to_someone_else_is_quarantined(
    alice: Identity, mallory: Identity, receiver_b: Receiver
) -> None:
    expect(
        open_envelope(seal(alice, mallory), receiver_b),
        "NO-KVITTENS quarantine: payload cannot be decrypted",
    )


def test_signer_not_published_by_sender(
    bob: Identity, mallory: Identity, receiver_b: Receiver
) -> None:
    expect(
        open_envelope(seal(mallory, bob), receiver_b),
        "REJECTED SIG security: the signing certificate is not one",
    )


def test_signer_outside_trust_anchors(
    tmp_path_factory: pytest.TempPathFactory, alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    from sdk_bridge.lab.testpki import make_pki

    other = make_pki(tmp_path_factory.mktemp("other-pki"), key_size=2048).issue("a.example.se")
    receiver = dataclasses.replace(receiver_b, sender_signing_certs=None)
    expect(
        open_envelope(seal(other, bob), receiver),
        "REJECTED SIG security: the signing certificate does not chain",
    )


def test_expired_and_not_yet_valid_signer(
    pki: TestPKI, bob: Identity, receiver_b: Receiver
) -> None:
    now = datetime.now(UTC)
    for name, start, end in [
        ("expired.a.example.se", now - timedelta(days=1), now - timedelta(hours=2)),
        ("future.a.example.se", now + timedelta(hours=2), now + timedelta(days=400)),
    ]:
        signer = pki.issue(name, key_size=2048, not_before=start, not_after=end)
        receiver = dataclasses.replace(receiver_b, sender_signing_certs=[signer.cert])
        expect(
            open_envelope(seal(signer, bob), receiver),
            "REJECTED SIG security: the signing certificate is not valid",
        )
        at_valid_time = dataclasses.replace(receiver, at=start + timedelta(hours=1))
        assert open_envelope(seal(signer, bob), at_valid_time).verdict == ACCEPTED


def test_encryption_only_certificate_cannot_sign(
    pki: TestPKI, bob: Identity, receiver_b: Receiver
) -> None:
    signer = pki.issue("encrypt-only.a.example.se", key_size=2048, key_usage="encrypt")
    receiver = dataclasses.replace(receiver_b, sender_signing_certs=[signer.cert])
    expect(
        open_envelope(seal(signer, bob), receiver),
        "REJECTED SIG security: the signing certificate is not for",
    )


def test_stripped_signature(alice: Identity, bob: Identity, receiver_b: Receiver) -> None:
    root = etree.fromstring(seal(alice, bob))
    root.remove(root[-1])
    expect(
        open_envelope(etree.tostring(root), receiver_b),
        "REJECTED SIG security: signature: the envelope is not signed",
    )


def test_tampered_ciphertext(alice: Identity, bob: Identity, receiver_b: Receiver) -> None:
    root = etree.fromstring(seal(alice, bob))
    value = root.find(f".//{{{XENC_NS}}}CipherData/{{{XENC_NS}}}CipherValue")
    value.text = ("B" if value.text[0] != "B" else "C") + value.text[1:]
    expect(
        open_envelope(etree.tostring(root), receiver_b),
        "REJECTED SIG security: signature: the signed content has been changed",
    )


def test_tampered_header_and_signature_value(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    sealed = seal(alice, bob)
    expect(
        open_envelope(sealed.replace(ADDRESS_B.encode(), b"registrator.c"), receiver_b),
        "REJECTED SIG security",
    )
    root = etree.fromstring(sealed)
    value = root.find(".//{http://www.w3.org/2000/09/xmldsig#}SignatureValue")
    value.text = value.text[::-1]
    expect(
        open_envelope(etree.tostring(root), receiver_b),
        "REJECTED SIG security: signature: the signature value",
    )


def test_garbage_ciphertext_signed_by_the_sender_is_quarantined(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    payload = encrypted(make_message(), bob)
    payload.find(f"{{{XENC_NS}}}CipherData/{{{XENC_NS}}}CipherValue").text = "AAAA" * 8
    expect(
        open_envelope(craft(alice, payload), receiver_b),
        "NO-KVITTENS quarantine: payload cannot be decrypted",
    )


def test_signature_wrapping_is_refused(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    """Classic wrapping: keep the signed original inside, show a forged payload outside."""
    original = etree.fromstring(seal(alice, bob))
    forged = etree.fromstring(seal(alice, bob, label="Förfalskad"))
    forged.remove(forged[-1])  # drop the forged envelope's own signature
    forged.append(original[-1])  # reuse the original's valid signature
    expect(
        open_envelope(etree.tostring(forged), receiver_b),
        "REJECTED SIG security: signature: the signed content",
    )
    # Two signatures, or a signature referencing an element by ID, are not SDK's profile.
    doubled = etree.fromstring(seal(alice, bob))
    doubled.append(etree.fromstring(seal(alice, bob))[-1])
    expect(
        open_envelope(etree.tostring(doubled), receiver_b),
        "REJECTED SIG security: signature: exactly one signature",
    )
    by_id = seal(alice, bob).replace(b'URI=""', b'URI="#payload"')
    expect(
        open_envelope(by_id, receiver_b),
        "REJECTED SIG security: signature: the Reference must cover",
    )
    nested = etree.fromstring(seal(alice, bob))
    signature = nested[-1]
    nested.find(".//{*}PayloadContent").append(signature)  # same ID-less signature, moved inside
    expect(
        open_envelope(etree.tostring(nested), receiver_b),
        "REJECTED SIG security: signature: exactly one signature",
    )


def test_unencrypted_message_is_rejected(alice: Identity, receiver_b: Receiver) -> None:
    plain = msg.to_element(make_message())
    expect(
        open_envelope(craft(alice, plain, encrypted=False), receiver_b),
        "REJECTED SIG security: the message payload is not encrypted",
    )


# --- the envelope and the message -------------------------------------------------------


def test_inconsistent_parties_and_ids(alice: Identity, bob: Identity, receiver_b: Receiver) -> None:
    message = make_message()
    cases: list[tuple[dict[str, object], msg.BusinessMessage, str]] = [
        (
            {"id": "5d2c9a53-0e8b-4bd5-8d8c-4f7bb8f3f2a1"},
            message,
            "REJECTED BV invariant: the XHE Header ID differs",
        ),
        (
            {"handling_service_id": "registrator.c"},
            message,
            "REJECTED BV security: subOrganization/organizationId must equal xha:HandlingServiceID",
        ),
        ({"from_party": "0203:c.example.se"}, message, "REJECTED BV security: senderID differs"),
        (
            {"to_party": ORG_B},
            dataclasses.replace(
                message, recipient=msg.Party("0203:c.example.se", msg.Attention(ADDRESS_B))
            ),
            "REJECTED BV security: recipientId is not identical to value in XHE envelope",
        ),
    ]
    for header_changes, content, line in cases:
        header_changes.setdefault("id", content.message_id)
        expect(
            open_envelope(
                craft(alice, encrypted(content, bob), message=content, **header_changes), receiver_b
            ),
            line,
        )


def test_unknown_functional_address_is_not_found(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    message = make_message(recipient=msg.Party(ORG_B, msg.Attention("ekonomi.b")))
    sealed = seal_message(message, signer=keypair(alice), recipient_cert=bob.cert)
    opened = open_envelope(sealed, receiver_b)
    expect(opened, "REJECTED BV not-found")
    assert opened.verdict.path.endswith("/subOrganization/organizationId/extension")


def test_envelope_for_another_organisation_gets_no_kvittens(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    receiver = dataclasses.replace(receiver_b, our_parties={"0203:c.example.se"})
    expect(
        open_envelope(seal(alice, bob), receiver),
        "NO-KVITTENS quarantine: the envelope is addressed to an organisation we do not serve",
    )


def test_duplicate_message_id(alice: Identity, bob: Identity, receiver_b: Receiver) -> None:
    message = make_message()
    sealed = seal_message(message, signer=keypair(alice), recipient_cert=bob.cert)
    seen = dataclasses.replace(receiver_b, seen_message_ids={message.message_id})
    expect(open_envelope(sealed, seen), "REJECTED BV duplicate")
    assert open_envelope(sealed, receiver_b).verdict == ACCEPTED


def test_invalid_business_message_inside(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    message = make_message()
    element = msg.to_element(message)
    element.find(".//{*}label").text = " "
    expect(
        open_envelope(
            craft(alice, xmlenc.encrypt(etree.tostring(element), bob.cert), message=message),
            receiver_b,
        ),
        "REJECTED BV invariant: In /messagePayload/message/messageHeader/label",
    )
    element.find(".//{*}confidentiality").text = "kanske"
    opened = open_envelope(
        craft(alice, xmlenc.encrypt(etree.tostring(element), bob.cert), message=message), receiver_b
    )
    expect(opened, "REJECTED SV structure")
    assert opened.envelope_id == message.message_id and opened.from_party == ORG_A


def test_not_well_formed_payload_is_quarantined(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    payload = xmlenc.encrypt(b"<sdk:messagePayload xmlns:sdk='x'><unclosed>", bob.cert)
    expect(
        open_envelope(craft(alice, payload), receiver_b),
        "NO-KVITTENS quarantine: decrypted payload: not well-formed",
    )


def test_payload_over_30_mb_is_too_long(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    message = make_message()
    element = msg.to_element(message)
    element.find(".//{*}characterSequence").text = "x" * MAX_MESSAGE_BYTES
    opened = open_envelope(
        craft(alice, xmlenc.encrypt(etree.tostring(element), bob.cert), message=message), receiver_b
    )
    expect(opened, "REJECTED BV too-long")


def test_seal_refuses_invalid_messages(alice: Identity, bob: Identity) -> None:
    xml = msg.to_xml(make_message()).replace(
        b"<sdk:confidentiality>true", b"<sdk:confidentiality>ja"
    )
    with pytest.raises(msg.InvalidMessage) as error:
        seal_message(xml, signer=keypair(alice), recipient_cert=bob.cert)
    assert error.value.problem.detail == "structure"


@pytest.mark.parametrize(
    ("mutate", "line"),
    [
        (
            lambda r: r.find("{*}CustomizationID").__setattr__("text", "urn:annan"),
            "REJECTED BV invariant: R3-XHE",
        ),
        (
            lambda r: r.find("{*}XHEVersionID").__setattr__("text", "2.0"),
            "REJECTED BV invariant: R9-XHE",
        ),
        (
            lambda r: r.find(".//{*}BusinessScope").remove(r.find(".//{*}BusinessScopeCriterion")),
            "REJECTED BV invariant: R",
        ),
        (
            lambda r: r.find(".//{*}FromParty/{*}PartyIdentification/{*}ID").set("schemeID", "x"),
            "REJECTED BV invariant: R10-XHE",
        ),
        (
            lambda r: r.find(".//{*}HandlingServiceID").__setattr__("text", " "),
            "REJECTED BV invariant: R2-XHE",
        ),
        (
            lambda r: r.find(".//{*}Payload").insert(
                0,
                etree.Element(
                    "{http://docs.oasis-open.org/bdxr/ns/XHE/1/BasicComponents}Description"
                ),
            ),
            "REJECTED SV structure",
        ),
        (
            lambda r: r.find(".//{*}Header/{*}ID").__setattr__("text", "ID-1"),
            "REJECTED BV invariant: Header ID must be a UUID",
        ),
        (
            lambda r: r.find(".//{*}BusinessScopeCriterionValue").__setattr__(
                "text", "urn:annat:dokument"
            ),
            "REJECTED BV not-supported",
        ),
    ],
)
def test_envelope_rules(
    mutate: Callable[[etree._Element], None],
    line: str,
    alice: Identity,
    bob: Identity,
    receiver_b: Receiver,
) -> None:
    """Digg's XHE profile, checked after the signature: the sender signed these mistakes."""
    message = make_message()
    root = xhe.build(message_header(message), encrypted(message, bob))
    mutate(root)
    xmldsig.sign(root, alice.key, alice.cert)
    expect(open_envelope(etree.tostring(root), receiver_b), line)


# --- hostile XML ------------------------------------------------------------------------

HOSTILE = {
    "xxe": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    "billion-laughs": b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>',
    "external-dtd": b'<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><x/>',
    "not-well-formed": b"<XHE><Header></XHE>",
    "utf-16": "<?xml version='1.0' encoding='UTF-16'?><x/>".encode("utf-16"),
    "deep": b"<a>" * 200 + b"</a>" * 200,
    "empty": b"",
    "not-xhe": b"<html><body>hello</body></html>",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_envelopes_are_quarantined(name: str, receiver_b: Receiver) -> None:
    expect(open_envelope(HOSTILE[name], receiver_b), "NO-KVITTENS quarantine:")


def test_hostile_payload_inside_a_signed_envelope(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    payload = xmlenc.encrypt(HOSTILE["xxe"].split(b"?>", 1)[1], bob.cert)
    expect(
        open_envelope(craft(alice, payload), receiver_b),
        "NO-KVITTENS quarantine: decrypted payload: document type declarations",
    )


def test_oversized_envelope_is_not_parsed(receiver_b: Receiver) -> None:
    small = dataclasses.replace(receiver_b, max_envelope_bytes=1000)
    expect(
        open_envelope(b"<x>" + b"a" * 2000 + b"</x>", small),
        "NO-KVITTENS quarantine: envelope: document is larger",
    )


def test_internal_errors_become_quarantine_not_kvittens(
    alice: Identity, bob: Identity, receiver_b: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(xmlenc, "decrypt", broken)
    expect(
        open_envelope(seal(alice, bob), receiver_b),
        "NO-KVITTENS quarantine: internal error while opening (RuntimeError)",
    )


# --- kvittens ---------------------------------------------------------------------------


def _kvittens(verdict: Verdict = ACCEPTED) -> kv.Kvittens:
    return kv.Kvittens.answering(
        verdict, refers_to="2f6f3f0e-3a35-4f0c-9a8e-8d1c1f3e2b7a", sender=ORG_B, receiver=ORG_A
    )


def test_kvittens_round_trip(alice: Identity, bob: Identity, pki: TestPKI) -> None:
    receiver_a = Receiver(
        sender_signing_certs=[bob.cert], trust_anchors=[pki.issuing_ca.cert], our_parties={ORG_A}
    )
    for verdict in (
        ACCEPTED,
        Verdict(
            Outcome.REJECTED,
            sealing.Reason.BV,
            sealing.Detail.DUPLICATE,
            "messageId has been received before",
            "/messagePayload",
        ),
    ):
        kvittens = _kvittens(verdict)
        opened = open_envelope(
            sealing.seal_kvittens(kvittens, signer=keypair(bob), handling_service_id=ADDRESS_B),
            receiver_a,
        )
        assert opened.verdict == ACCEPTED
        assert opened.is_kvittens
        assert opened.kvittens == kvittens
        assert opened.header is not None
        assert opened.header.handling_service_id == ADDRESS_B
        assert not opened.header.encrypted


def test_bad_kvittens_is_never_answered(
    alice: Identity, bob: Identity, mallory: Identity, pki: TestPKI
) -> None:
    """Never a kvittens for a kvittens: every failure is NO-KVITTENS."""
    receiver_a = Receiver(
        sender_signing_certs=[bob.cert], trust_anchors=[pki.issuing_ca.cert], our_parties={ORG_A}
    )
    forged = sealing.seal_kvittens(
        _kvittens(), signer=keypair(mallory), handling_service_id=ADDRESS_B
    )
    expect(
        open_envelope(forged, receiver_a),
        "NO-KVITTENS quarantine: invalid kvittens: REJECTED SIG security",
    )
    tampered = sealing.seal_kvittens(
        _kvittens(), signer=keypair(bob), handling_service_id=ADDRESS_B
    ).replace(b"ACCEPTED", b"REJECTED")
    expect(
        open_envelope(tampered, receiver_a),
        "NO-KVITTENS quarantine: invalid kvittens: REJECTED SIG",
    )
    other = dataclasses.replace(_kvittens(), sender="0203:c.example.se")
    header = xhe.Header(other.id, other.issued, xhe.PayloadKind.KVITTENS, ORG_B, ORG_A, None, False)
    root = xhe.build(header, kv.to_element(other))
    xmldsig.sign(root, bob.key, bob.cert)
    expect(
        open_envelope(etree.tostring(root), receiver_a),
        "NO-KVITTENS quarantine: the kvittens parties differ",
    )
    # A business message where a kvittens was expected is no reason to answer either.
    plain = dataclasses.replace(header, encrypted=True)
    root = xhe.build(plain, kv.to_element(_kvittens()))
    xmldsig.sign(root, bob.key, bob.cert)
    expect(open_envelope(etree.tostring(root), receiver_a), "NO-KVITTENS quarantine:")


def test_trust_anchors_issuing_ca_and_root(
    pki: TestPKI, alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    """The signer's issuer must be trusted; a root alone cannot vouch for an unseen CA."""
    sealed = seal(alice, bob)
    for anchors, line in [
        ([pki.issuing_ca.cert, pki.root.cert], "ACCEPTED"),
        ([pki.issuing_ca.cert], "ACCEPTED"),
        ([pki.root.cert], "REJECTED SIG security: the signing certificate does not chain"),
        ([alice.cert], "REJECTED SIG security: the signing certificate does not chain"),
    ]:
        expect(open_envelope(sealed, dataclasses.replace(receiver_b, trust_anchors=anchors)), line)


def test_signer_issued_by_a_non_ca_is_refused(
    pki: TestPKI, alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    """A leaf certificate listed as a trust anchor cannot issue signing certificates."""
    from sdk_bridge.lab.testpki import Identity as Leaf
    from sdk_bridge.lab.testpki import TestPKI as PKI

    rogue_pki = PKI(pki.root, alice, pki.root_pem, pki.chain_pem, pki.directory, 2048)
    rogue: Leaf = rogue_pki.issue("rogue.a.example.se")
    receiver = dataclasses.replace(
        receiver_b, sender_signing_certs=None, trust_anchors=[alice.cert, pki.root.cert]
    )
    expect(
        open_envelope(seal(rogue, bob), receiver),
        "REJECTED SIG security: the signing certificate's issuer is not a CA",
    )


def test_decrypted_payload_that_is_not_a_message_gets_no_kvittens(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    """Answering well-formed-but-foreign plaintext would hand a sender a CBC oracle."""
    payload = xmlenc.encrypt(b"<anything>else</anything>", bob.cert)
    expect(
        open_envelope(craft(alice, payload), receiver_b),
        "NO-KVITTENS quarantine: decrypted payload: not an SDK business message",
    )


def test_envelope_from_another_federation_gets_no_kvittens(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    ours = dataclasses.replace(receiver_b, federation="urn:fdc:digg.se:edelivery:federation:sdk")
    assert open_envelope(seal(alice, bob), ours).verdict == ACCEPTED
    other = dataclasses.replace(ours, federation="urn:fdc:digg.se:edelivery:federation:test")
    expect(open_envelope(seal(alice, bob), other), "NO-KVITTENS quarantine: the envelope belongs")


@pytest.mark.parametrize(
    ("mutate", "line"),
    [
        (
            lambda r: r.find(".//{*}CreationDateTime").__setattr__("text", "2026-01-01T10:00:00"),
            "REJECTED BV invariant: CreationDateTime must include a time zone",
        ),
        (
            lambda r: r.find(".//{*}CreationDateTime").__setattr__("text", "2026-01-01T24:00:00Z"),
            "REJECTED SV structure",
        ),
        (
            lambda r: r.find(".//{*}BusinessScope").append(
                etree.fromstring(etree.tostring(r.find(".//{*}BusinessScopeCriterion")))
            ),
            "REJECTED SV structure: BusinessScope must hold exactly one criterion of each",
        ),
        (
            lambda r: r.find(".//{*}ContentTypeCode").__setattr__("text", "text/plain"),
            "REJECTED BV invariant: ContentTypeCode must be application/xml",
        ),
    ],
)
def test_more_envelope_rules(
    mutate: Callable[[etree._Element], None],
    line: str,
    alice: Identity,
    bob: Identity,
    receiver_b: Receiver,
) -> None:
    message = make_message()
    root = xhe.build(message_header(message), encrypted(message, bob))
    mutate(root)
    xmldsig.sign(root, alice.key, alice.cert)
    expect(open_envelope(etree.tostring(root), receiver_b), line)


def test_comments_in_values_are_ignored(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    """XML comments are not content: the XSD allows them anywhere."""
    message = make_message()
    element = msg.to_element(message)
    element.find(".//{*}label").append(etree.Comment("a note"))
    payload = xmlenc.encrypt(etree.tostring(element), bob.cert)
    opened = open_envelope(craft(alice, payload, message=message), receiver_b)
    assert opened.verdict == ACCEPTED
    assert opened.message is not None
    assert opened.message.label == message.label


def test_malformed_signer_certificate_is_rejected_sig(
    alice: Identity, bob: Identity, receiver_b: Receiver
) -> None:
    """A certificate whose extensions cannot be read is a SIG problem, not an internal error."""
    from cryptography import x509

    der = bytearray(alice.cert.public_bytes(serialization.Encoding.DER))
    key_usage_oid = bytes.fromhex("0603551d0f")  # 2.5.29.15
    at = der.index(key_usage_oid) + len(key_usage_oid)
    # critical BOOLEAN, then OCTET STRING holding the BIT STRING: break the bit string's tag
    inner = der.index(b"\x03", at)
    der[inner] = 0x05
    broken = x509.load_der_x509_certificate(bytes(der))
    root = xhe.build(message_header(make_message()), encrypted(make_message(), bob))
    xmldsig.sign(root, alice.key, broken)
    receiver = dataclasses.replace(receiver_b, sender_signing_certs=[broken])
    expect(
        open_envelope(etree.tostring(root), receiver),
        "REJECTED SIG security: the signing certificate cannot be read",
    )


def test_sealing_to_an_unusable_certificate_is_refused(
    pki: TestPKI, alice: Identity, bob: Identity
) -> None:
    from sdk_bridge.sdk.certs import CertificateProblem

    sign_only = pki.issue("sign-only.b.example.se", key_size=2048, key_usage="sign")
    with pytest.raises(CertificateProblem, match="not for key encipherment"):
        seal_message(make_message(), signer=keypair(alice), recipient_cert=sign_only.cert)
    now = datetime.now(UTC)
    expired = pki.issue(
        "expired.b.example.se",
        key_size=2048,
        not_before=now - timedelta(days=1),
        not_after=now - timedelta(hours=1),
    )
    with pytest.raises(CertificateProblem, match="not valid"):
        seal_message(make_message(), signer=keypair(alice), recipient_cert=expired.cert)
