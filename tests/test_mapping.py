"""Mail to SDK business message v3 (sdk_bridge.mapping.to_sdk).

Every mapped mail is also serialised with the core's `to_xml` (its XSD and schematron
checks) and parsed back: the model must survive unchanged.
"""

import base64
import dataclasses
import email
import email.policy
import os
import quopri
import random
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta, timezone
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from support.digg import schematron_failures, xsd_errors
from support.parties import ADDRESS_A, ADDRESS_B, ORG_A, ORG_B

from sdk_bridge.mapping.htmltext import MAX_HTML_DEPTH
from sdk_bridge.mapping.signed import opaque_content
from sdk_bridge.mapping.to_sdk import (
    DOCUMENT_ID,
    EMPTY_BODY,
    MAX_MIME_DEPTH,
    SUBJECT_PREFIX,
    MappingError,
    cut_label,
    thread_ids,
    to_business_message,
)
from sdk_bridge.sdk import markdown
from sdk_bridge.sdk import message as msg

SENDER = msg.Party(ORG_A, msg.Attention(ADDRESS_A, "Registrator"), label="A kommun")
RECIPIENT = msg.Party(ORG_B, msg.Attention(ADDRESS_B, "Registrator"), label="B kommun")
NOW = datetime(2026, 3, 1, 12, 0, 5, 123000, tzinfo=UTC)

SWEDISH_SUBJECT = "Årsredovisning för Östra Ängby, ärende nr 5"
SWEDISH_BODY = (
    "Hej Åsa!\n\nHär är underlaget för år 2025: räkenskaper, löner och övrigt.\n\nMvh\nÖrjan"
)


def written_by(label: str) -> msg.Party:
    """SENDER with the mail's writer as its attention's person."""
    assert SENDER.attention is not None
    attention = dataclasses.replace(SENDER.attention, persons=(msg.Person(label=label),))
    return dataclasses.replace(SENDER, attention=attention)


def mapped(mail: Message, **changes: object) -> msg.BusinessMessage:
    """Map `mail`, then check the result is a valid SDK message that parses back equal."""
    message_id = str(uuid.uuid4())
    arguments: dict[str, object] = dict(
        message_id=message_id,
        conversation_id=message_id,
        ref_to_message_id=None,
        sender=SENDER,
        recipient=RECIPIENT,
        now=NOW,
    )
    arguments.update(changes)
    result = to_business_message(mail, **arguments)  # type: ignore[arg-type]
    assert msg.parse(msg.to_xml(result)) == result
    return result


def parsed(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def markdown_of(result: msg.BusinessMessage) -> str:
    """The SDK message's text, B1.3.3 Markdown as it travels."""
    (document,) = result.documents
    (text,) = document.texts
    return text


def text_of(result: msg.BusinessMessage) -> str:
    """The text as a reader sees it: the Markdown read back (escapes and breaks undone)."""
    return markdown.plain(markdown_of(result))


def files_of(result: msg.BusinessMessage) -> tuple[msg.ContentFile, ...]:
    (document,) = result.documents
    return document.files


def plain_mail(subject: str = "Hej", body: str = "Hej!", **headers: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "anna@a.example.se"
    mail["To"] = "registrator.b@b.example.se"
    mail["Subject"] = subject
    mail["Message-ID"] = "<1@a.example.se>"
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(body)
    return mail


def raw_mail(subject: str, body: str, charset: str, encoding: str) -> bytes:
    """A single-part mail as its bytes, body and subject encoded exactly as asked."""
    data = body.replace("\n", "\r\n").encode(charset)
    if encoding == "quoted-printable":
        encoded = quopri.encodestring(data)
    elif encoding == "base64":
        encoded = base64.encodebytes(data)
    else:
        encoded = data
    encoded_subject = Header(subject, charset).encode()  # RFC 2047 in the same charset
    head = (
        "From: anna@a.example.se\r\n"
        "To: registrator.b@b.example.se\r\n"
        f"Subject: {encoded_subject}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: text/plain; charset="{charset}"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    return head.encode("ascii") + encoded


# ---------------------------------------------------------------------------------------
# Header fields


def test_header_fields_come_from_the_caller_and_the_mail() -> None:
    system = msg.Identifier("urn:sdk-bridge", "sdk-bridge")
    parent = str(uuid.uuid4())
    result = mapped(
        plain_mail("Ansökan", "Se bifogat."),
        message_id="0b8c0a5e-5b7e-4a0e-9a57-3f1d2a9c6e11",
        conversation_id="5d6a64a4-0c3e-4b2b-9d70-0d8f3f6f0b43",
        ref_to_message_id=parent,
        generating_system=system,
    )
    assert result.message_id == "0b8c0a5e-5b7e-4a0e-9a57-3f1d2a9c6e11"
    assert result.conversation_id == "5d6a64a4-0c3e-4b2b-9d70-0d8f3f6f0b43"
    assert result.ref_to_message_id == parent
    assert result.generating_system == system
    assert (result.sender, result.recipient) == (written_by("anna@a.example.se"), RECIPIENT)
    assert result.created == NOW
    assert result.label == "Ansökan"
    assert result.confidential is False
    (document,) = result.documents
    assert (document.document_id, document.name, document.index) == (DOCUMENT_ID, DOCUMENT_ID, "1")
    assert document.texts == ("Se bifogat.",)


def test_creation_time_is_utc_milliseconds_and_must_be_aware() -> None:
    moment = datetime(2026, 3, 1, 13, 0, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert mapped(plain_mail(), now=moment).created == NOW
    with pytest.raises(ValueError, match="timezone-aware"):
        mapped(plain_mail(), now=datetime(2026, 3, 1, 12, 0))


def test_created_defaults_to_now() -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert mapped(plain_mail(), now=None).created >= before


# ---------------------------------------------------------------------------------------
# Swedish characters


@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-1"])
@pytest.mark.parametrize("encoding", ["quoted-printable", "base64", "8bit"])
def test_swedish_subject_and_body_in_every_charset_and_encoding(
    charset: str, encoding: str
) -> None:
    mail = parsed(raw_mail(SWEDISH_SUBJECT, SWEDISH_BODY, charset, encoding))
    result = mapped(mail)
    assert result.label == SWEDISH_SUBJECT
    assert text_of(result) == SWEDISH_BODY  # CRLF became LF


def test_windows_1252_quotes_in_a_latin_1_mail() -> None:
    body = "Citat: “så här” – klart"
    data = raw_mail("Citat", "", "iso-8859-1", "8bit") + body.encode("cp1252")
    assert text_of(mapped(parsed(data))) == body


def test_undeclared_8bit_utf8_and_unknown_charset_fall_back() -> None:
    data = raw_mail("Hej", SWEDISH_BODY, "utf-8", "8bit")
    undeclared = data.replace(b'; charset="utf-8"', b"")
    assert text_of(mapped(parsed(undeclared))) == SWEDISH_BODY
    unknown = data.replace(b'charset="utf-8"', b'charset="x-no-such-charset"')
    assert text_of(mapped(parsed(unknown))) == SWEDISH_BODY


def test_mime_classes_and_compat32_are_read_like_policy_default() -> None:
    mail = MIMEText(SWEDISH_BODY, "plain", "iso-8859-1")
    mail["Subject"] = Header(SWEDISH_SUBJECT, "utf-8")  # type: ignore[assignment]
    result = mapped(mail)
    assert (result.label, text_of(result)) == (SWEDISH_SUBJECT, SWEDISH_BODY)


def test_utf8_quoted_printable_through_mime_text() -> None:
    charset = Charset("utf-8")
    charset.body_encoding = QP
    mail = MIMEText(SWEDISH_BODY, "plain", charset)  # type: ignore[arg-type]
    mail["Subject"] = Header(SWEDISH_SUBJECT, charset)  # type: ignore[assignment]
    assert b"=C3=A5" in mail.as_bytes()
    result = mapped(mail)
    assert (result.label, text_of(result)) == (SWEDISH_SUBJECT, SWEDISH_BODY)


def test_characters_xml_cannot_carry_are_removed() -> None:
    result = mapped(plain_mail("Hej\x07 där", "Rad ett\x0c\nRad\x00 två\tmed tabb"))
    assert result.label == "Hej där"
    assert text_of(result) == "Rad ett\nRad två\tmed tabb"


# ---------------------------------------------------------------------------------------
# HTML and alternatives

HTML = """<!DOCTYPE html><html><head><title>Dold titel</title>
<style>p { color: red }</style><script>alert("hemligt")</script></head>
<body>
<h1>Kallelse</h1>
<h2>Möte om år 2026</h2>
<p>Hej! Det här är <b>viktigt</b> och <i>brådskande</i>.
Läs <a href="https://www.example.se/kallelse?id=1">kallelsen</a> eller
<a href="javascript:alert(1)">klicka här</a>.</p>
<ul><li>Punkt ett</li><li>Punkt två</li></ul>
<ol><li>Först</li><li>Sedan</li></ol>
<p><img src="cid:logga@a" alt="Kommunens logga"><img src="cid:spacer@a"></p>
<p>rad ett<br>rad två</p>
<!-- en kommentar -->
<script>document.write("mer")</script>
</body></html>"""


def html_mail(html: str = HTML, charset: str = "utf-8") -> MIMEText:
    mail = MIMEText(html, "html", charset)
    mail["Subject"] = "Kallelse"
    return mail


def test_html_only_mail_becomes_markdown() -> None:
    text = markdown_of(mapped(html_mail()))
    assert text == (
        "# Kallelse\n\n"
        "## Möte om år 2026\n\n"
        "Hej! Det här är **viktigt** och *brådskande*.\n"
        "Läs kallelsen (https://www.example.se/kallelse?id=1) eller\n"
        "klicka här.\n\n"
        "* Punkt ett\n"
        "* Punkt två\n\n"
        "1. Först\n"
        "2. Sedan\n\n"
        "\\[bild: logga@a\\]\\[bild: spacer@a\\]\n\n"
        "rad ett  \n"
        "rad två"
    )
    for hidden in ("alert", "hemligt", "document.write", "Dold titel", "color", "kommentar"):
        assert hidden not in text


def test_html_in_latin_1_and_markdown_characters_in_text_are_escaped() -> None:
    text = markdown_of(mapped(html_mail("<p>Åsa skriver *inte* snake_case</p>", "iso-8859-1")))
    assert text == r"Åsa skriver \*inte\* snake\_case"


def test_outlook_empty_paragraphs_collapse() -> None:
    html = (
        "<p class=MsoNormal>Hej<o:p></o:p></p><p class=MsoNormal>&nbsp;</p><p>&nbsp;</p><p>Då</p>"
    )
    assert text_of(mapped(html_mail(html))) == "Hej\n\nDå"


def test_html_nested_deeper_than_the_stack_keeps_its_words() -> None:
    """A long chain of quoted replies (or a hostile mail) must not crash the converter."""
    depth = 5000
    html = (
        "<div><blockquote>" * depth + "<p>Innerst <b>inne</b></p>" + "</blockquote></div>" * depth
    )
    text = text_of(mapped(html_mail("<p>Överst</p>" + html)))
    assert text.startswith("Överst")
    assert "Innerst" in text
    assert text.endswith("inne")
    # quoting beyond the depth limit is flattened
    assert max(line.count(">") for line in text.splitlines()) < MAX_HTML_DEPTH


def test_multipart_alternative_prefers_text_plain() -> None:
    mail = MIMEMultipart("alternative")
    mail["Subject"] = "Båda"
    mail.attach(MIMEText(SWEDISH_BODY, "plain", "utf-8"))
    mail.attach(MIMEText("<p><b>HTML-versionen</b></p>", "html", "utf-8"))
    result = mapped(mail)
    assert text_of(result) == SWEDISH_BODY
    assert files_of(result) == ()


def test_html_with_inline_image_keeps_the_image_as_a_file() -> None:
    """Thunderbird's shape: alternative(plain, related(html, image))."""
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(64)
    related = MIMEMultipart("related")
    related.attach(MIMEText('<p>Se bild</p><img src="cid:bild@a">', "html", "utf-8"))
    image = MIMEImage(png, "png")
    image["Content-ID"] = "<bild@a>"
    related.attach(image)
    mail = MIMEMultipart("alternative")
    mail.attach(MIMEText("Se bild", "plain", "utf-8"))
    mail.attach(related)
    result = mapped(mail)
    assert text_of(result) == "Se bild"
    assert files_of(result) == (msg.ContentFile("bilaga-1.png", "image/png", png),)


def test_outlook_calendar_alternative_becomes_a_file() -> None:
    mail = MIMEMultipart("alternative")
    mail.attach(MIMEText("Möte", "plain", "utf-8"))
    mail.attach(MIMEText("<p>Möte</p>", "html", "utf-8"))
    mail.attach(MIMEText("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "calendar", "utf-8"))
    result = mapped(mail)
    assert text_of(result) == "Möte"
    ((file),) = files_of(result)
    assert (file.file_name, file.content_type) == ("inbjudan.ics", "text/calendar; charset=utf-8")
    assert file.content == b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"


def test_plain_text_full_of_markdown_characters_renders_as_written() -> None:
    """Issue 15: plain text is not read as Markdown by the receiving client."""
    body = (
        "Hej,\n\nse KS_2024_0123 och C:\\Users\\x *nu*.\n1. ett\n2) två\n# 1 Inledning\n"
        "> citat [x](y) <b>\n\n\n--\nAnna Andersson\nRegistrator\n+46 70 123 45 67"
    )
    result = mapped(plain_mail("Ärende_1 *viktigt*", body))
    assert text_of(result) == body
    rendered = markdown.render(markdown_of(result))
    for construct in ("<li", "<h1", "<em", "<strong", "<blockquote", "<a ", "<hr"):
        assert construct not in rendered
    paragraphs = rendered.count("<p>")  # a blank line (or more) ends one
    assert paragraphs == 3 and rendered.count("<br />") == body.count("\n") - 5


def test_format_flowed_is_unwrapped() -> None:
    data = (
        b"Subject: Flowed\r\n"
        b'Content-Type: text/plain; charset="utf-8"; format=flowed; delsp=no\r\n\r\n'
        b"Det h\xc3\xa4r \xc3\xa4r en l\xc3\xa5ng rad som \r\n"
        b"har brutits mjukt.\r\n"
        b"> citat som \r\n"
        b"> forts\xc3\xa4tter\r\n"
        b" From b\xc3\xb6rjan\r\n"
        b"-- \r\n"
        b"Signatur\r\n"
    )
    assert text_of(mapped(parsed(data))) == (
        "Det här är en lång rad som har brutits mjukt.\n"
        "> citat som fortsätter\n"
        "From början\n"
        "--\n"  # trailing whitespace is not kept
        "Signatur"
    )


# ---------------------------------------------------------------------------------------
# Attachments


def with_attachments(*parts: Message, body: str = "Se bilagor.") -> MIMEMultipart:
    mail = MIMEMultipart()
    mail["Subject"] = "Bilagor"
    mail.attach(MIMEText(body, "plain", "utf-8"))
    for part in parts:
        mail.attach(part)
    return mail


def attachment(data: bytes, subtype: str, name: str | None) -> MIMEApplication:
    part = MIMEApplication(data, subtype)
    if name is not None:
        part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", name))
    return part


def test_a_5_mb_pdf_arrives_byte_for_byte() -> None:
    pdf = b"%PDF-1.7\n" + os.urandom(5 * 1024 * 1024)
    result = mapped(with_attachments(attachment(pdf, "pdf", "Beslut.pdf")))
    assert text_of(result) == "Se bilagor."
    assert files_of(result) == (msg.ContentFile("Beslut.pdf", "application/pdf", pdf),)


def test_several_attachments_with_unicode_rfc2231_names() -> None:
    names = ["Beslut i ärende 2026-123.pdf", "Överklagande – bilaga 1.docx", "日本語.txt"]
    contents = [b"%PDF-1.4 a", b"PK\x03\x04 docx", "テキスト".encode()]
    types = [
        "application/pdf",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "text/plain; charset=utf-8",
    ]
    parts: list[Message] = []
    for name, content, type_ in zip(names, contents, types, strict=True):
        main, sub = type_.partition(";")[0].split("/")
        if main == "text":
            part: Message = MIMEText(content.decode(), sub, "utf-8")
        else:
            part = MIMEApplication(content, sub)
        part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", name))
        parts.append(part)
    mail = with_attachments(*parts)
    assert b"filename*=utf-8''" in mail.as_bytes()
    files = files_of(mapped(mail))
    assert [f.file_name for f in files] == names
    assert [f.content_type for f in files] == types
    assert [f.content for f in files] == contents


def test_rfc2047_names_octet_stream_parameters_paths_and_clashes() -> None:
    pdf = MIMEApplication(b"%PDF-1.4 x", "octet-stream")
    pdf["Content-Disposition"] = 'attachment; filename="=?utf-8?q?=C3=A5rsrapport.PDF?="'
    typed = MIMEApplication(b"%PDF-1.4 y")
    typed.replace_header("Content-Type", 'Application/PDF; name="a.pdf"')
    typed.add_header("Content-Disposition", "attachment", filename="C:\\Temp\\årsrapport.pdf")
    nameless = MIMEApplication(b"\x00\x01", "x-custom")
    result = mapped(with_attachments(pdf, typed, nameless))
    assert [(f.file_name, f.content_type) for f in files_of(result)] == [
        ("årsrapport.PDF", "application/pdf"),
        ("årsrapport (2).pdf", "application/pdf"),
        ("bilaga-3.bin", "application/x-custom"),
    ]


def test_macos_decomposed_names_become_nfc() -> None:
    decomposed = "O\u0308versikt.pdf"
    result = mapped(with_attachments(attachment(b"%PDF", "pdf", decomposed)))
    assert files_of(result)[0].file_name == "Översikt.pdf"


def test_inline_parts_with_a_file_name_are_files() -> None:
    text = MIMEText("anteckningar", "plain", "utf-8")
    text.add_header("Content-Disposition", "inline", filename="anteckningar.txt")
    image = MIMEImage(b"\x89PNG\r\n\x1a\n", "png")
    image.add_header("Content-Disposition", "inline", filename="skärmbild.png")
    result = mapped(with_attachments(text, image))
    assert text_of(result) == "Se bilagor."
    assert [(f.file_name, f.content_type) for f in files_of(result)] == [
        ("anteckningar.txt", "text/plain; charset=utf-8"),
        ("skärmbild.png", "image/png"),
    ]


def test_attachments_without_text_leave_out_the_text() -> None:
    mail = MIMEMultipart()
    mail["Subject"] = "Bara bilaga"
    mail.attach(attachment(b"%PDF-1.4", "pdf", "a.pdf"))
    result = mapped(mail)
    (document,) = result.documents
    assert document.texts == ()
    assert b"ContentText" not in msg.to_xml(result)


def test_empty_attachment_is_named_in_the_text_instead() -> None:
    result = mapped(with_attachments(attachment(b"", "pdf", "tom.pdf")))
    assert text_of(result) == "Se bilagor.\n\n(Tom bilaga utelämnad: tom.pdf)"
    assert files_of(result) == ()


def test_attached_message_becomes_an_eml_file() -> None:
    inner = EmailMessage()
    inner["From"] = "kalle@c.example.se"
    inner["Subject"] = "Ursprungligt ärende: ansökan"
    inner.set_content("Hej, här är ansökan.")
    mail = with_attachments(MIMEMessage(inner))
    (file,) = files_of(mapped(mail))
    assert file.file_name == "Ursprungligt ärende_ ansökan.eml"
    assert file.content_type == "message/rfc822"
    assert b"\r\n" in file.content and b"\n" not in file.content.replace(b"\r\n", b"")
    opened = parsed(file.content)
    assert opened["Subject"] == "Ursprungligt ärende: ansökan"
    assert opened.get_content().replace("\r\n", "\n") == "Hej, här är ansökan.\n"


def test_attached_message_keeps_its_file_name() -> None:
    inner = EmailMessage()
    inner["Subject"] = "x"
    inner.set_content("y")
    part = MIMEMessage(inner)
    part.add_header("Content-Disposition", "attachment", filename="Vidarebefordrat")
    (file,) = files_of(mapped(with_attachments(part)))
    assert file.file_name == "Vidarebefordrat.eml"


# ---------------------------------------------------------------------------------------
# Secrecy


@pytest.mark.parametrize(
    ("sensitivity", "confidential"),
    [
        ("Private", True),
        ("Company-Confidential", True),
        ("company-confidential", True),
        ("PRIVATE", True),
        ("Personal", False),
        ("Normal", False),
        (None, False),
    ],
)
def test_sensitivity_header(sensitivity: str | None, confidential: bool) -> None:
    mail = (
        plain_mail("Utredning")
        if sensitivity is None
        else plain_mail("Utredning", Sensitivity=sensitivity)
    )
    result = mapped(mail)
    assert result.confidential is confidential
    assert result.label == "Utredning"


@pytest.mark.parametrize(
    "subject",
    [
        "[sekretess] Utredning",
        "[Sekretess] Utredning",
        "Utredning [SEKRETESS]",
        "SV: [sekretess]Utredning",
    ],
)
def test_subject_tag_marks_secrecy_and_is_removed(subject: str) -> None:
    result = mapped(plain_mail(subject))
    assert result.confidential is True
    assert result.label in ("Utredning", "SV: Utredning")
    assert "sekretess" not in (result.label or "").lower()


def test_configured_tags() -> None:
    tags = ("[sekretess]", "(Konfidentiellt)")
    result = mapped(plain_mail("(konfidentiellt) Rapport"), secrecy_tags=tags)
    assert (result.confidential, result.label) == (True, "Rapport")
    result = mapped(plain_mail("[sekretess] Rapport"), secrecy_tags=("(konfidentiellt)",))
    assert (result.confidential, result.label) == (False, "[sekretess] Rapport")


def test_a_subject_that_is_only_the_tag_has_no_label() -> None:
    result = mapped(plain_mail("[sekretess]"))
    assert (result.confidential, result.label) == (True, None)


# ---------------------------------------------------------------------------------------
# Label


def long_subject(length: int = 300) -> str:
    words = "Begäran om komplettering av ansökan gällande bygglov för fastigheten Ängby 1:23"
    subject = ""
    while len(subject) < length:
        subject += ("" if not subject else " ") + words
    return subject[:length].rstrip()


def test_a_300_character_subject_is_cut_and_given_in_full_in_the_text() -> None:
    subject = long_subject()
    assert len(subject) == 300
    result = mapped(plain_mail(subject, SWEDISH_BODY))
    label = result.label or ""
    assert len(label) <= 256
    assert label.endswith("…")
    kept = label.removesuffix("…")
    assert subject.startswith(kept)
    assert subject[len(kept)] == " "  # cut at a word boundary
    assert text_of(result) == f"{SUBJECT_PREFIX}{subject}\n\n{SWEDISH_BODY}"


def test_the_full_subject_in_the_text_is_without_the_secrecy_tag() -> None:
    subject = long_subject()
    result = mapped(plain_mail(f"[Sekretess] {subject}", "Text"))
    assert result.confidential is True
    assert text_of(result) == f"{SUBJECT_PREFIX}{subject}\n\nText"


def test_a_long_subject_with_an_empty_body_is_just_the_subject_line() -> None:
    subject = long_subject(400)
    result = mapped(plain_mail(subject, ""))
    assert text_of(result) == SUBJECT_PREFIX + subject


def test_cut_label() -> None:
    assert cut_label("a" * 256) == "a" * 256
    assert cut_label("ord " * 100, 20) == "ord ord ord ord ord…"
    assert cut_label("ab cd ef", 6) == "ab cd…"  # boundary right after the kept text
    assert cut_label("ab, cd", 5) == "ab…"  # no dangling punctuation before the ellipsis
    assert cut_label("x " + "y" * 300) == "x " + "y" * 253 + "…"  # one huge word
    assert len(cut_label("x " + "y" * 300)) == 256
    with pytest.raises(ValueError):
        cut_label("abc", 1)


@pytest.mark.parametrize("subject", ["", "   ", None])
def test_empty_subject_gives_no_label(subject: str | None) -> None:
    mail = plain_mail(body="Text")
    if subject is None:
        del mail["Subject"]
    else:
        mail.replace_header("Subject", subject)
    result = mapped(mail)
    assert result.label is None
    assert b"label>" not in msg.to_xml(result).split(b"<sdk:recipient>")[0]


def test_folded_subject_becomes_one_line() -> None:
    data = b"Subject: Ett l\xc3\xa5ngt\r\n \xc3\xa4mne\r\n\twith tab\r\n\r\nx"
    assert mapped(parsed(data)).label == "Ett långt ämne with tab"


# ---------------------------------------------------------------------------------------
# Empty body


def test_no_text_and_no_files_gives_the_placeholder() -> None:
    assert text_of(mapped(plain_mail("Tomt", ""))) == EMPTY_BODY
    assert text_of(mapped(plain_mail("Tomt", " \n\n  \n"))) == EMPTY_BODY
    assert text_of(mapped(html_mail("<html><body><p>&nbsp;</p></body></html>"))) == EMPTY_BODY


# ---------------------------------------------------------------------------------------
# Threading


def test_thread_ids_newest_first_without_brackets() -> None:
    mail = parsed(
        "Subject: SV: Ansökan\r\n"
        "In-Reply-To: <c@b.example.se>\r\n"
        "References: <a@a.example.se> <b@b.example.se>\r\n <c@b.example.se>\r\n"
        "\r\n"
        "Svar\r\n".encode()
    )
    assert thread_ids(mail) == ["c@b.example.se", "b@b.example.se", "a@a.example.se"]
    parent = str(uuid.uuid4())
    result = mapped(mail, ref_to_message_id=parent, conversation_id=parent)
    assert (result.ref_to_message_id, result.conversation_id, result.label) == (
        parent,
        parent,
        "SV: Ansökan",
    )


def test_thread_ids_of_compat32_mail_and_without_brackets() -> None:
    mail = MIMEText("x")
    mail["In-Reply-To"] = "b@b.example.se"
    mail["References"] = "<a@a.example.se>"
    assert thread_ids(mail) == ["b@b.example.se", "a@a.example.se"]
    assert thread_ids(plain_mail()) == []


# ---------------------------------------------------------------------------------------
# References


def test_reference_headers_go_to_the_recipients_attention() -> None:
    mail = plain_mail()
    mail["X-SDK-Reference"] = "KS 2026/123"
    mail["X-SDK-Reference"] = "1.2.752.129.2.1.3.1=191212121212"
    mail["X-SDK-Reference"] = "KS 2026/123"  # a repeat is kept once
    existing = msg.Reference(msg.Identifier("dnr", "B 2025/9"), "Mottagarens dnr")
    recipient = msg.Party(ORG_B, msg.Attention(ADDRESS_B, references=(existing,)))
    result = mapped(mail, recipient=recipient)
    assert result.recipient.attention is not None
    assert result.recipient.attention.references == (
        existing,
        msg.Reference(msg.Identifier("dnr", "KS 2026/123")),
        msg.Reference(msg.Identifier("1.2.752.129.2.1.3.1", "191212121212")),
    )
    assert result.sender == written_by("anna@a.example.se")


def test_reference_root_is_configurable() -> None:
    mail = plain_mail(X_SDK_Reference="2026-45")
    result = mapped(mail, reference_root="diarienummer")
    assert result.recipient.attention is not None
    assert result.recipient.attention.references == (
        msg.Reference(msg.Identifier("diarienummer", "2026-45")),
    )


@pytest.mark.parametrize("value", ["dnr=", "x" * 257])
def test_unusable_references_are_refused(value: str) -> None:
    with pytest.raises(MappingError):
        mapped(plain_mail(X_SDK_Reference=value))


def test_references_need_an_attention() -> None:
    with pytest.raises(MappingError):
        mapped(plain_mail(X_SDK_Reference="1"), recipient=msg.Party(ORG_B))


# ---------------------------------------------------------------------------------------
# Digg's own XSD and schematron


def _digg_cases() -> list[Message]:
    secret = plain_mail("[sekretess] " + long_subject(), SWEDISH_BODY, Sensitivity="Private")
    secret["X-SDK-Reference"] = "KS 2026/1"
    return [
        secret,
        html_mail(),
        with_attachments(attachment(b"%PDF-1.4", "pdf", "Beslut ärende.pdf"), body=""),
        plain_mail("", ""),
    ]


@pytest.mark.parametrize("mail", _digg_cases(), ids=["secret", "html", "files", "empty"])
def test_mapped_messages_pass_diggs_xsd_and_schematron(mail: Message) -> None:
    xml = msg.to_xml(mapped(mail))
    assert xsd_errors("message", xml) == []
    assert schematron_failures("message", xml) == []


# ---------------------------------------------------------------------------------------
# Issue 15: every part kept, inline images named, who wrote it and who else got it


def test_outlook_cid_markers_name_the_file_that_carries_the_image() -> None:
    """Outlook's plain alternative says "[cid:…]" where an image stood; B reads its name."""
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(32)
    alternative = MIMEMultipart("alternative")
    alternative.attach(
        MIMEText("Se [cid:image001.png@01DA0000.12345670] och [cid:borta@x] här.", "plain")
    )
    alternative.attach(MIMEText('<img src="cid:image001.png@01DA0000.12345670">', "html"))
    image = MIMEImage(png, "png")
    image["Content-ID"] = "<image001.png@01DA0000.12345670>"
    mail = MIMEMultipart("related")
    mail.attach(alternative)
    mail.attach(image)
    result = mapped(mail)
    assert text_of(result) == "Se [bild: bilaga-1.png] och [bild: borta@x] här."
    assert files_of(result) == (msg.ContentFile("bilaga-1.png", "image/png", png),)


def test_html_links_tables_and_images_become_readable_text() -> None:
    html = (
        '<p>Läs <a href="https://example.se/a_b">beslutet</a>, skriv till '
        '<a href="mailto:reg@example.se">reg@example.se</a> eller '
        '<a href="javascript:x()">här</a>.</p>'
        "<table><tr><th>Datum</th><th>Belopp</th></tr>"
        "<tr><td>2024-05-01</td><td>100 kr</td></tr><tr><td>2024-06-01</td><td>*5*</td></tr>"
        "</table><table><tr><td>utan</td><td>rubrik</td></tr></table>"
        '<p><img src="https://example.se/logga.png" alt="Logga"><img src="data:x"></p>'
    )
    text = text_of(mapped(html_mail(html)))
    assert text == (
        "Läs beslutet (https://example.se/a_b), skriv till reg@example.se eller här.\n\n"
        "* Datum: 2024-05-01, Belopp: 100 kr\n"
        "* Datum: 2024-06-01, Belopp: *5*\n\n"
        "* utan · rubrik\n\n"
        "[bild: Logga (https://example.se/logga.png)][bild]"
    )
    rendered = markdown.render(markdown_of(mapped(html_mail(html))))
    assert "<em>" not in rendered and "<a" not in rendered


def test_the_writer_is_the_senders_person_and_cc_and_reply_to_open_the_text() -> None:
    mail = plain_mail("Hej", "Texten.")
    mail.replace_header("From", "Anna Andersson <anna.andersson@a.example.se>")
    mail["Cc"] = "Bo Ek <bo@a.example.se>, cecilia@a.example.se"
    mail["Reply-To"] = "handlaggare@a.example.se"
    result = mapped(mail)
    assert result.sender == written_by("Anna Andersson (anna.andersson@a.example.se)")
    assert text_of(result) == (
        "Kopia: Bo Ek <bo@a.example.se>, cecilia@a.example.se\n"
        "Svara till: handlaggare@a.example.se\n\nTexten."
    )
    # From the functional address's own mailbox: no person; one To: no "Till" line.
    shared = mapped(plain_mail(), shared_mailboxes=frozenset({"anna@a.example.se"}))
    assert shared.sender == SENDER
    assert text_of(shared) == "Hej!"


def test_text_files_keep_their_charset_and_invites_their_method() -> None:
    note = MIMEText("Ärende", "plain", "iso-8859-1")
    note.add_header("Content-Disposition", "attachment", filename="anteckning.txt")
    invite = MIMEText("BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n", "calendar")
    invite.set_param("method", "request")
    files = files_of(mapped(with_attachments(note, invite)))
    assert [(f.file_name, f.content_type) for f in files] == [
        ("anteckning.txt", "text/plain; charset=iso-8859-1"),
        ("inbjudan.ics", "text/calendar; charset=us-ascii; method=REQUEST"),
    ]
    assert files[0].content == "Ärende".encode("latin-1")


def test_a_delivery_report_keeps_its_status_and_the_original() -> None:
    report = email.message_from_bytes(
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n"
        b"--r\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.se\r\n\r\n"
        b"Final-Recipient: rfc822; x@example.se\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--r\r\nContent-Type: message/rfc822\r\n\r\nSubject: Original\r\n\r\nText\r\n"
        b"--r--\r\n",
        policy=email.policy.default,
    )
    result = mapped(report)
    assert text_of(result) == "Delivery failed."
    status, original = files_of(result)
    assert (status.file_name, status.content_type) == ("bilaga-1.txt", "message/delivery-status")
    assert status.content == (
        b"Reporting-MTA: dns; mx.example.se\r\n\r\n"
        b"Final-Recipient: rfc822; x@example.se\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    )
    assert (original.file_name, original.content_type) == ("Original.eml", "message/rfc822")


def test_an_external_body_becomes_a_readable_reference() -> None:
    mail = email.message_from_bytes(
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n"
        b"\r\nSe filen.\r\n--b\r\nContent-Type: message/external-body; access-type=URL;\r\n"
        b' URL="https://example.se/stor.zip"\r\n\r\nContent-Type: application/zip\r\n\r\n'
        b"--b--\r\n",
        policy=email.policy.default,
    )
    ((reference),) = files_of(mapped(mail))
    assert (reference.file_name, reference.content_type) == ("extern-referens.txt", "text/plain")
    assert b"https://example.se/stor.zip" in reference.content


def test_a_multipart_without_its_boundary_keeps_its_text() -> None:
    mail = email.message_from_bytes(
        b"Subject: Trasig\r\nContent-Type: multipart/mixed; boundary=saknas\r\n\r\n"
        b"Texten finns kvar.\r\n",
        policy=email.policy.default,
    )
    result = mapped(mail)
    assert text_of(result) == "Texten finns kvar."
    assert files_of(result) == ()


def signing_key(directory: Path) -> tuple[str, Path, Path]:
    """openssl, and a throw-away key and self-signed certificate to sign S/MIME with."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-subj", "/CN=Anna", "-days", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    return openssl, key, cert


def test_signed_mail_travels_whole_and_its_text_is_read(tmp_path: Path) -> None:
    """S/MIME (detached and opaque) made by openssl, checked by openssl after mapping."""
    openssl, key, cert = signing_key(tmp_path)
    content = tmp_path / "content.eml"
    content.write_bytes(
        b"Content-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nSignerad text.\r\n--in\r\n"
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--in--\r\n"
    )
    for extra in ([], ["-nodetach"]):
        signed = subprocess.run(
            [openssl, "smime", "-sign", "-in", content, "-signer", cert, "-inkey", key, *extra],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        signed = signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        private = b"Received: from intern.a.se (10.0.0.1)\r\n\tby mx\r\nBcc: hemlig@a.se\r\n"
        raw = private + b"Subject: Signerat\r\n" + signed
        result = mapped(parsed(raw), raw=raw)
        assert text_of(result) == "Signerad text."
        whole, pdf = files_of(result)
        assert (pdf.file_name, pdf.content) == ("a.pdf", b"%PDF-1.4\n")
        if extra:
            assert (whole.file_name, whole.content_type) == (
                "smime.p7m",
                "application/x-pkcs7-mime; smime-type=signed-data",
            )
            verify = ["-inform", "DER"]
        else:
            # Received lines and Bcc stay home; the signature does not cover them.
            assert (whole.file_name, whole.content) == (
                "signerat-meddelande.eml",
                raw[len(private) :],
            )
            verify = []
        (tmp_path / "got").write_bytes(whole.content)
        checked = subprocess.run(
            [openssl, "smime", "-verify", "-noverify", "-in", tmp_path / "got", *verify],
            capture_output=True,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr


def test_opaque_signed_content_is_read_from_der_and_ber_and_garbage_is_left_alone(
    tmp_path: Path,
) -> None:
    openssl, key, cert = signing_key(tmp_path)
    content = b"Content-Type: text/plain\r\n\r\nSignerat.\r\n"
    (tmp_path / "content").write_bytes(content)
    for streamed in ([], ["-stream"]):  # -stream: BER, indefinite lengths, chunked octets
        der = subprocess.run(
            [openssl, "smime", "-sign", "-nodetach", "-binary", "-outform", "DER",
             "-in", tmp_path / "content", "-signer", cert, "-inkey", key, *streamed],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        assert opaque_content(der) == content
        for cut in (1, 20, len(der) // 2):
            assert opaque_content(der[:cut]) is None
    assert opaque_content(b"0\x80" * 5000) is None  # nested past the stack
    assert opaque_content(b"") is None


# ---------------------------------------------------------------------------------------
# Issue 15, after an independent review: hostile shapes, and what real mail does


def test_html_text_is_escaped_and_pre_code_and_quotes_stay_text() -> None:
    html = (
        "<p>Klicka [här](https://evil.example/x) ![x](https://track.example/p.gif) "
        "&lt;script&gt; KS_1 *a*</p><p># rubrik</p><p>1. punkt</p>"
        "<pre>  kod *x*\n  rad två</pre><p>Se <code>a_b</code></p>"
        "<blockquote><p>citerat</p><p>mer</p></blockquote>"
    )
    text = markdown_of(mapped(html_mail(html)))
    rendered = markdown.render(text)
    assert "<a" not in rendered and "<img" not in rendered and "<script" not in rendered
    assert "<h1>" not in rendered and "<ol>" not in rendered and "<code>" not in rendered
    assert markdown.plain(text) == (
        "Klicka [här](https://evil.example/x) ![x](https://track.example/p.gif) "
        "<script> KS_1 *a*\n\n# rubrik\n\n1. punkt\n\n  kod *x*\n  rad två\n\n"
        "Se a_b\n\n> citerat\n>\n> mer"
    )


def test_nested_tables_give_each_cell_once() -> None:
    html = (
        "<table><tr><td>Avsändare<table><tr><td>Kalle</td><td>Anka</td></tr></table></td>"
        '<td><a href="https://example.se/d">Datum</a></td></tr></table>'
    )
    assert text_of(mapped(html_mail(html))) == (
        "* Avsändare · Datum (https://example.se/d)\n* Kalle · Anka"
    )


def test_an_empty_plain_alternative_leaves_the_text_to_the_html() -> None:
    mail = MIMEMultipart("alternative")
    mail.attach(MIMEText(" \n", "plain", "utf-8"))
    mail.attach(MIMEText("<p>Viktig text</p>", "html", "utf-8"))
    assert text_of(mapped(mail)) == "Viktig text"


def test_inline_images_are_named_by_their_own_part() -> None:
    png = b"\x89PNG\r\n\x1a\n"
    mail = MIMEMultipart("related")
    mail.attach(MIMEText("[cid:image_001.png@01DA*X] och [cid:i2]", "plain", "utf-8"))
    for cid, name in (("image_001.png@01DA*X", "a.png"), ("i2", "b.png")):  # the same bytes
        image = MIMEImage(png, "png")
        image["Content-ID"] = f"<{cid}>"
        image.add_header("Content-Disposition", "inline", filename=name)
        mail.attach(image)
    assert text_of(mapped(mail)) == "[bild: a.png] och [bild: b.png]"


def test_raw_utf8_and_unreadable_addresses_keep_their_letters() -> None:
    raw = (
        "From: Åsa Öberg <åsa@a.example.se>\r\nCc: Örjan Ek <orjan@a.example.se>\r\n"
        "Reply-To: Chef <chef@a.example.se>, =?utf-8?q?=0D=0AX=3A_y?= <z@a.example.se>\r\n"
        "Subject: Hej\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nText\r\n"
    ).encode()
    result = mapped(parsed(raw), raw=raw)
    assert result.sender == written_by("Åsa Öberg (åsa@a.example.se)")
    lines = text_of(result).split("\n")
    assert lines[0] == "Kopia: Örjan Ek <orjan@a.example.se>"
    assert lines[1].startswith("Svara till: Chef <chef@a.example.se>")


def test_hostile_nesting_is_refused_not_followed() -> None:
    deep = b"Content-Type: text/plain\r\n\r\nInnerst\r\n"
    for level in range(MAX_MIME_DEPTH + 2):
        deep = (
            f"Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n".encode()
            + deep
            + f"\r\n--b{level}--\r\n".encode()
        )
    with pytest.raises(MappingError, match="nested more than"):
        mapped(parsed(deep), raw=deep)


def test_escaped_text_renders_directly_exactly_as_the_renderer_would() -> None:
    """Issue 18: text that `escape` wrote (mail from another bridge) is rendered without
    markdown-it, to the very same HTML; anything else still goes through it."""
    chosen = random.Random(18)
    pieces = [
        *("a", "Hej", " ", "  ", "    ", "\t", "\n", "\n\n", "\n \n", "*", "_", "#", "-"),
        *("+", "=", "1.", "2)", "&", "&amp;", "&#32;", "&#9;", "<", ">", '"', "'", "\\"),
        *("`", "[", "]", "|", "~", "å", "\u00a0", "\u2028", "\x0b", "x" * 12, "  \n"),
        *("***", "> q", "    code", "1. a\n2. b", "# h\n", "a\n===\n", "<b>x</b>", "**b**"),
    ]
    for number in range(4000):
        text = "".join(chosen.choice(pieces) for _ in range(chosen.randint(0, 30)))
        written = markdown.escape(text) if number % 3 else text  # raw Markdown too
        assert markdown.render(written) == markdown._RENDERER.render(written), repr(written)
