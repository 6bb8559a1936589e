"""The SDK business message v3: model, builder, parser and Digg's rules."""

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from lxml import etree
from support.digg import schematron_failures, spec_file, xsd_errors
from support.parties import ORG_A, make_message

from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk.names import MAX_MESSAGE_BYTES, MSG_NS
from sdk_bridge.sdk.verdict import Detail, Reason, Rejected

EXAMPLE = ("message-v3", "sdk-meddelande-v3.1", "example", "messageWithAttachments3.xml")
FELHANTERING = ("message-v3", "sdk-meddelande-testdata-v3.1", "felhantering")


def test_built_message_passes_digg_xsd_and_schematron() -> None:
    xml = msg.to_xml(make_message())
    assert xsd_errors("message", xml) == []
    assert schematron_failures("message", xml) == []


def test_round_trip_keeps_every_field() -> None:
    original = make_message(ref_to_message_id="0b8c0a5e-5b7e-4a0e-9a57-3f1d2a9c6e11")
    parsed = msg.parse(msg.to_xml(original))
    # The timestamp is carried with millisecond precision.
    assert parsed.created == original.created.replace(
        microsecond=original.created.microsecond // 1000 * 1000
    )
    assert dataclasses.replace(parsed, created=original.created) == original


def test_creation_time_is_utc_with_milliseconds() -> None:
    created = datetime(2026, 3, 1, 12, 0, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    xml = msg.to_xml(make_message(created=created))
    assert b"<sdk:creationDateTime>2026-03-01T11:00:05.123Z</sdk:creationDateTime>" in xml


def test_unicode_and_markdown_survive() -> None:
    text = "Åsa Öberg skriver: *viktigt* — 50 % klart ✓\n\n- punkt ett\n- punkt två"
    document = msg.Document("SDK-Meddelande", texts=(text,))
    parsed = msg.parse(msg.to_xml(make_message(documents=(document,), label="Årsredovisning")))
    assert parsed.documents[0].texts == (text,)
    assert parsed.label == "Årsredovisning"


def test_attachments_are_base64_and_come_back_byte_for_byte() -> None:
    payload = bytes(range(256)) * 100
    files = (
        msg.ContentFile("beslut.pdf", "application/pdf", payload),
        msg.ContentFile("bild.png", "image/png", b"\x89PNG\r\n"),
    )
    document = msg.Document("SDK-Meddelande", texts=("Se bilagor",), files=files)
    parsed = msg.parse(msg.to_xml(make_message(documents=(document,))))
    assert parsed.documents[0].files == files


def test_a_consumed_tree_gives_its_files_base64_up() -> None:
    """`consume` (opening, parse): each file's text leaves the tree as it is decoded; by
    default (sealing a given XML, which serialises the tree after) the tree stays whole."""
    files = (
        msg.ContentFile("beslut.pdf", "application/pdf", bytes(range(256)) * 100),
        msg.ContentFile("bild.png", "image/png", b"\x89PNG\r\n"),
    )
    message = make_message(documents=(msg.Document("SDK-Meddelande", files=files),))
    root = msg.to_element(message)
    whole = etree.tostring(root)
    assert msg.from_element(root).documents == message.documents
    assert etree.tostring(root) == whole
    assert msg.from_element(root, consume=True).documents == message.documents
    assert [c.text for c in root.iter(f"{{{MSG_NS}}}content")] == [None, None]


@pytest.mark.parametrize(
    ("changes", "detail", "where"),
    [
        ({"label": "x" * 257}, Detail.INVARIANT, "label"),
        ({"label": "   "}, Detail.INVARIANT, "label"),
        ({"message_id": "not-a-uuid"}, Detail.INVARIANT, "messageId"),
        ({"conversation_id": "1234"}, Detail.INVARIANT, "conversationId"),
        ({"ref_to_message_id": "x"}, Detail.INVARIANT, "refToMessageId"),
        ({"sender": msg.Party("a.example.se", msg.Attention("x"))}, Detail.INVARIANT, "senderID"),
        ({"recipient": msg.Party(ORG_A, msg.Attention(""))}, Detail.INVARIANT, "extension"),
        ({"documents": ()}, Detail.STRUCTURE, "documents"),
        ({"recipient": msg.Party(ORG_A)}, Detail.STRUCTURE, "attention"),
    ],
)
def test_builder_refuses_what_sdk_forbids(changes: dict, detail: Detail, where: str) -> None:
    with pytest.raises(msg.InvalidMessage) as error:
        msg.to_xml(make_message(**changes))
    assert error.value.problem.detail is detail
    assert where in error.value.problem.path


def test_label_of_exactly_256_characters_is_allowed() -> None:
    assert msg.parse(msg.to_xml(make_message(label="å" * 256))).label == "å" * 256


def test_whole_message_limit_is_30_mb() -> None:
    big = msg.ContentFile("stor.pdf", "application/pdf", b"\0" * (MAX_MESSAGE_BYTES * 3 // 4))
    document = msg.Document("SDK-Meddelande", files=(big,))
    with pytest.raises(msg.InvalidMessage) as error:
        msg.to_xml(make_message(documents=(document,)))
    assert error.value.problem.detail is Detail.TOO_LONG
    with pytest.raises(Rejected) as rejected:
        msg.parse(b" " * (MAX_MESSAGE_BYTES + 1))
    assert rejected.value.detail is Detail.TOO_LONG


def test_digg_examples_parse() -> None:
    example = msg.parse(spec_file(*EXAMPLE).read_bytes())
    assert example.message_id == "7bc5576a-3f87-4cf5-a0c5-277da06fcacb"
    assert example.functional_address == "sdk.testbed.0203:testa.testbed.inera.se"
    baseline = msg.parse(spec_file(*FELHANTERING, "min.xml").read_bytes())
    assert baseline.confidential is True
    attention = baseline.recipient.attention
    assert attention is not None and attention.persons[0].id is not None
    assert attention.persons[0].id.extension == "19121212-1212"


@pytest.mark.parametrize(
    ("name", "reason", "detail"),
    [
        ("TF2.4.1.xml", Reason.SV, Detail.STRUCTURE),  # creationDateTime is not a dateTime
        ("TF2.4.2.xml", Reason.BV, Detail.INVARIANT),  # senderID root is not iso6523-actorid-upis
    ],
)
def test_digg_error_cases_are_rejected_with_the_right_reason(
    name: str, reason: Reason, detail: Detail
) -> None:
    with pytest.raises(Rejected) as error:
        msg.parse(spec_file(*FELHANTERING, name).read_bytes())
    assert (error.value.reason, error.value.detail) == (reason, detail)


def test_our_verdicts_agree_with_digg_on_mutated_messages() -> None:
    """Each mutation of the valid baseline: we reject exactly when Digg's artefacts do."""
    baseline = spec_file(*FELHANTERING, "min.xml").read_bytes()
    mutations = {
        b"<ns2:label>Printerpapper</ns2:label>": b"<ns2:label></ns2:label>",
        b"2019-08-22T07:27:15.433Z": b"2019-08-22T07:27:15Z",
        b"<ns2:confidentiality>true": b"<ns2:confidentiality>kanske",
        b"<ns2:index>1</ns2:index>": b"",
        b"functionalAddress</ns2:root>\n\t\t\t\t\t\t\t<ns2:extension>test.function": (
            b"urn:fel</ns2:root>\n\t\t\t\t\t\t\t<ns2:extension>test.function"
        ),
        b"<ns2:documentID>SDK-Meddelande</ns2:documentID>": b"",
        b"<ns2:messageBody>": b"<ns2:messageBody><ns2:extra>x</ns2:extra>",
    }
    for old, new in mutations.items():
        assert old in baseline, old
        mutated = baseline.replace(old, new, 1)
        digg_rejects = bool(
            xsd_errors("message", mutated) or schematron_failures("message", mutated)
        )
        try:
            msg.parse(mutated)
            we_reject = False
        except Rejected:
            we_reject = True
        assert we_reject == digg_rejects, (old, new)


def test_foreign_extension_elements_are_allowed_where_the_xsd_allows_them() -> None:
    xml = msg.to_xml(make_message()).replace(
        b"</sdk:messageHeader>", b'<x:trace xmlns:x="urn:example">1</x:trace></sdk:messageHeader>'
    )
    assert xsd_errors("message", xml) == []
    assert msg.parse(xml).message_id


def test_problem_texts_do_not_echo_values() -> None:
    secret = "Sekretessbelagt-ärende-4711"
    with pytest.raises(msg.InvalidMessage) as error:
        msg.to_xml(make_message(message_id=secret))
    assert secret not in str(error.value)
    xml = msg.to_xml(make_message(label=secret)).replace(
        b"confidentiality>true", b"confidentiality>x"
    )
    with pytest.raises(Rejected) as rejected:
        msg.parse(xml)
    assert secret not in rejected.value.text


def test_sender_without_attention_is_allowed() -> None:
    parsed = msg.parse(msg.to_xml(make_message(sender=msg.Party(ORG_A))))
    assert parsed.sender.attention is None


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert (
        msg.format_timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        == "2026-01-02T03:04:05.000Z"
    )
