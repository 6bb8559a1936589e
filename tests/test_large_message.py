"""The shortcuts that keep a 30 MB message from being copied over and over give exactly what
the plain ways give: serialisation, the size check, mail parsing, base64 decoding, sealing."""

import base64
import dataclasses
import email.policy
import random
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from conftest import make_message
from lxml import etree

from bridge.outbound import mapping
from bridge.outbound.mapping import parse_mail
from bridge.sdk import message as msg
from bridge.sdk.names import MAX_MESSAGE_BYTES
from bridge.sdk.xmlsafe import decode_base64


def _with_files(*contents: bytes) -> msg.BusinessMessage:
    message = make_message()
    files = tuple(
        msg.ContentFile(f"bilaga-{n}.pdf", "application/pdf", content)
        for n, content in enumerate(contents)
    )
    return dataclasses.replace(
        message, documents=(dataclasses.replace(message.documents[0], files=files),)
    )


def test_serialised_pieces_join_to_what_lxml_writes() -> None:
    message = _with_files(b"%PDF-1.7\n" + bytes(range(256)) * 50, b"x", b"yz")
    whole = etree.tostring(msg.to_element(message))
    assert b"".join(msg.serialize(message)) == whole
    utf8 = etree.tostring(msg.to_element(message), xml_declaration=True, encoding="UTF-8")
    assert msg.to_xml(message) == utf8


def test_size_check_refuses_exactly_what_lxml_would_make_too_long() -> None:
    base = len(msg.to_xml(_with_files(b"a"))) - 4  # base64 of b"a" is 4 characters
    limit = (MAX_MESSAGE_BYTES - base) // 4 * 3  # the largest file that still fits
    for size in (limit - 1, limit, limit + 1):
        message = _with_files(b"a" * size)
        element = msg.to_element(message)
        whole = etree.tostring(element, xml_declaration=True, encoding="UTF-8")
        if len(whole) > MAX_MESSAGE_BYTES:
            with pytest.raises(msg.InvalidMessage, match="too large"):
                msg.check(message)
        else:
            msg.check(message)
            assert msg.to_xml(message) == whole
        assert (len(whole) > MAX_MESSAGE_BYTES) == (size > limit)


def test_an_empty_file_is_refused_as_before() -> None:
    with pytest.raises(msg.InvalidMessage, match="empty"):
        msg.check(_with_files(b""))


def test_mail_parsed_in_pieces_is_what_parsebytes_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mapping, "_FEED_BYTES", 7)  # line ends split across pieces
    mail = EmailMessage()
    mail["Subject"] = "Underlag"
    mail.set_content("Hej\r\nåäö\n" * 40)
    mail.add_attachment(bytes(range(256)) * 20, maintype="application", subtype="pdf")
    mail.add_attachment(b"a\r\nb\rc\nd" * 20, maintype="text", subtype="csv", cte="7bit")
    raw = mail.as_bytes(policy=email.policy.SMTP)
    ours, theirs = parse_mail(raw), BytesParser(policy=email.policy.default).parsebytes(raw)
    assert ours.as_bytes() == theirs.as_bytes()
    decoded = [p.get_payload(decode=True) for p in ours.walk()]
    assert decoded == [p.get_payload(decode=True) for p in theirs.walk()]


def test_base64_attachments_decode_as_the_email_package_decodes() -> None:
    rng = random.Random(7)
    alphabet = "ABCDabcd0123+/=\r\n =-_!é"
    for _ in range(3000):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        raw = (
            "Content-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + body
        ).encode()
        part = BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(part, EmailMessage)
        assert mapping._payload_bytes(part) == part.get_payload(decode=True), body


@pytest.mark.parametrize(
    "text", ["QUJD", "QUJ\nD", " QUJD ", "QUJ", "QQ==QQ==", "QUJD\u00e9", "", "Q===", "=QUJ"]
)
def test_base64_text_decodes_as_before(text: str) -> None:
    def before() -> bytes:
        return base64.b64decode("".join(text.split()), validate=True)

    try:
        expected = before()
    except ValueError:
        with pytest.raises(ValueError):
            decode_base64(text)
    else:
        assert decode_base64(text) == expected
