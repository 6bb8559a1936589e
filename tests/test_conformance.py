"""Everything we build passes Digg's own XSDs and schematrons (XHE, message, kvittens)."""

import re

import pytest
from lxml import etree
from support.digg import schematron_failures, signed_vector, spec_file, xsd_errors
from support.parties import ADDRESS_B, ORG_A, ORG_B, keypair, make_message

from sdk_bridge.lab.testpki import Identity
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import sealing
from sdk_bridge.sdk.verdict import ACCEPTED, Detail, Outcome, Reason, Verdict
from sdk_bridge.sdk.xmlsafe import parse as parse_xml

KVITTENS_EXAMPLES = ("kvittens", "C3.2.4 Meddelandekvittens_exempel_v1.0")


def _payload(xhe: bytes) -> bytes:
    root = parse_xml(xhe, max_bytes=10**8)
    content = root.find(".//{*}PayloadContent")
    return etree.tostring(content[0])


def test_sealed_message_envelope_passes_xhe_xsd_and_schematron(
    alice: Identity, bob: Identity
) -> None:
    sealed = sealing.seal_message(
        msg.to_xml(make_message()), signer=keypair(alice), recipient_cert=bob.cert
    )
    assert xsd_errors("xhe", sealed) == []
    assert schematron_failures("xhe", sealed) == []


REJECTIONS = [
    Verdict(
        Outcome.REJECTED, reason, detail, "In /messagePayload/message, a rule", "/messagePayload"
    )
    for reason, detail in [
        (Reason.SV, Detail.STRUCTURE),
        (Reason.BV, Detail.INVARIANT),
        (Reason.BV, Detail.NOT_FOUND),
        (Reason.BV, Detail.NOT_SUPPORTED),
        (Reason.BV, Detail.TOO_LONG),
        (Reason.BV, Detail.DUPLICATE),
        (Reason.BV, Detail.MULTIPLE_MATCHES),
        (Reason.BV, Detail.FORBIDDEN),
        (Reason.BV, Detail.SECURITY),
        (Reason.SIG, Detail.SECURITY),
    ]
]


@pytest.mark.parametrize("verdict", [ACCEPTED, *REJECTIONS], ids=lambda v: v.line()[:30])
def test_kvittens_and_its_envelope_pass_digg_artefacts(verdict: Verdict, bob: Identity) -> None:
    kvittens = kv.Kvittens.answering(
        verdict, refers_to="2f6f3f0e-3a35-4f0c-9a8e-8d1c1f3e2b7a", sender=ORG_B, receiver=ORG_A
    )
    sealed = sealing.seal_kvittens(kvittens, signer=keypair(bob), handling_service_id=ADDRESS_B)
    assert xsd_errors("xhe", sealed) == []
    assert schematron_failures("xhe", sealed) == []
    application_response = _payload(sealed)
    assert xsd_errors("kvittens", application_response) == []
    assert schematron_failures("kvittens", application_response) == []
    assert kv.from_element(parse_xml(application_response, max_bytes=10**6)) == kvittens


def test_no_kvittens_verdict_cannot_be_answered() -> None:
    with pytest.raises(ValueError):
        kv.Kvittens.answering(
            Verdict(Outcome.NO_KVITTENS, text="x"), refers_to="x", sender=ORG_B, receiver=ORG_A
        )


@pytest.mark.parametrize(
    ("name", "summary"),
    [
        ("Kvittens_AP-Accepterat.xml", "ACCEPTED"),
        ("Kvittens_RE-SIG.xml", "REJECTED SIG"),
        ("Kvittens_RE-XSDFel.xml", "REJECTED SV"),
        ("Kvittens_RE-SCHFel.xml", "REJECTED BV"),
        ("Kvittens_RE-AnnatFel.xml", "REJECTED BV"),
    ],
)
def test_digg_kvittens_examples_are_read(name: str, summary: str) -> None:
    data = spec_file(*KVITTENS_EXAMPLES, name).read_bytes()
    kvittens = kv.from_element(parse_xml(data, max_bytes=10**6))
    assert kvittens.summary().startswith(summary)
    assert kvittens.refers_to == "ID-FROM-XHE-12354689"
    assert (kvittens.sender, kvittens.receiver) == ("0203:myndighetA.org", "0203:myndighetB.org")


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        (b"<cbc:ProfileID>bdx:noprocess", b"<cbc:ProfileID>annan", "R4-APP"),
        (b"ACCEPTED</cbc:ResponseCode>", b"KANSKE</cbc:ResponseCode>", "R5-APP"),
        (b"<cbc:ID>KVT-1</cbc:ID>", b"<cbc:ID> </cbc:ID>", "R2-APP"),
        (b"<cbc:IssueDate>2021-04-15", b"<cbc:IssueDate>15 april", "structure"),
        (b"<cbc:ProfileID>bdx:noprocess</cbc:ProfileID>", b"<cbc:Note>x</cbc:Note>", "structure"),
    ],
)
def test_broken_kvittens_are_refused_like_digg_refuses_them(
    old: bytes, new: bytes, rule: str
) -> None:
    data = spec_file(*KVITTENS_EXAMPLES, "Kvittens_AP-Accepterat.xml").read_bytes()
    broken = data.replace(old, new, 1)
    assert broken != data
    assert xsd_errors("kvittens", broken) or schematron_failures("kvittens", broken)
    with pytest.raises(sealing.Rejected) as error:
        kv.from_element(parse_xml(broken, max_bytes=10**6))
    assert rule in str(error.value)


def test_kvittens_texts_do_not_echo_the_message(alice: Identity, bob: Identity) -> None:
    """A kvittens travels unencrypted: B1.3.3 forbids echoing values from the message."""
    secret_label = "Utredning om Sven Svensson 19121212-1212"
    xml = msg.to_xml(make_message(label=secret_label)).replace(
        b"</sdk:conversationId>",
        b"</sdk:conversationId><sdk:refToMessageId>Svensson-19121212</sdk:refToMessageId>",
    )
    with pytest.raises(sealing.Rejected) as error:
        msg.parse(xml)
    verdict = Verdict.of(error.value)
    kvittens = kv.Kvittens.answering(verdict, refers_to="x", sender=ORG_B, receiver=ORG_A)
    sealed = sealing.seal_kvittens(kvittens, signer=keypair(bob), handling_service_id=ADDRESS_B)
    assert b"Svensson" not in sealed
    assert b"19121212" not in sealed
    assert re.search(rb"StatusReason>[^<]*refToMessageId", sealed)


def test_digg_vector_payload_types_are_what_we_build(alice: Identity, bob: Identity) -> None:
    """Our envelope uses the same codes as Digg's real test vector."""
    vector = signed_vector()
    ours = sealing.seal_message(
        msg.to_xml(make_message()), signer=keypair(alice), recipient_cert=bob.cert
    )
    for code in (b"DocumentTypeCode", b"ContentTypeCode", b"CustomizationID", b"XHEVersionID"):
        pattern = rb"<(?:\w+:)?" + code + rb">([^<]+)<"
        theirs, own = re.search(pattern, vector), re.search(pattern, ours)
        assert theirs is not None and own is not None
        assert theirs[1] == own[1]


@pytest.mark.parametrize(
    ("issue_time", "problem"),
    [("12:00:00", "IssueTime must include a time zone"), ("24:00:00Z", "not a valid xs:time")],
)
def test_kvittens_issue_time_needs_a_zone_and_a_real_hour(issue_time: str, problem: str) -> None:
    """C3.2.4 3.1 [c]: the time carries its zone (the XSD alone would accept it without)."""
    data = spec_file(*KVITTENS_EXAMPLES, "Kvittens_AP-Accepterat.xml").read_bytes()
    broken = data.replace(b"12:00:00Z", issue_time.encode(), 1)
    with pytest.raises(sealing.Rejected, match=problem):
        kv.from_element(parse_xml(broken, max_bytes=10**6))
