"""SDK business message to mail (bridge.inbound.mapping)."""

import email
import email.policy
from email.message import EmailMessage

from conftest import make_message

from bridge.inbound.mapping import render_markdown, to_email
from bridge.outbound.mapping import cut_label, references
from bridge.sdk import message as msg

SENDER = "registrator@a.example.se.sdk.kommun.se"


def mail_of(message: msg.BusinessMessage, **more: object) -> EmailMessage:
    data = to_email(
        message,
        sender=SENDER,
        sender_name="A kommun – Registrator",
        recipient="registrator@kommun.se",
        sdk_domain="sdk.kommun.se",
        **more,  # type: ignore[arg-type]
    )
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_every_field_is_mapped() -> None:
    message = make_message()
    mail = mail_of(message)
    assert mail["From"].addresses[0].display_name == "A kommun – Registrator (SDK)"
    assert mail["From"].addresses[0].addr_spec == SENDER
    assert mail["To"] == "registrator@kommun.se"
    assert mail["Subject"] == "[sekretess] Ansökan om bygglov"
    assert mail["Sensitivity"] == "Company-Confidential"
    assert mail["X-SDK-Confidentiality"] == "true"
    assert mail["Message-ID"] == f"<{message.message_id}@sdk.kommun.se>"
    assert mail["X-SDK-Conversation-ID"] == message.conversation_id
    assert mail["In-Reply-To"] is None
    assert mail.get_all("X-SDK-Reference") == ["diarienummer=KS 2026/123"]
    assert mail.get_all("X-SDK-Person") == ["1.2.752.129.2.1.3.1=191212121212"]
    text = mail.get_body(("plain",))
    assert text is not None
    assert text.get_content().splitlines()[:4] == [
        "Referens: KS 2026/123 (diarienummer)",
        "Person: 191212121212 (1.2.752.129.2.1.3.1)",
        "",
        "Hej!",
    ]
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_filename() == "underlag.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.7\n..."


def test_references_come_back_the_way_outbound_reads_them() -> None:
    """A reply that keeps the headers returns the sender's reference ids (B1.3.3)."""
    mail = mail_of(make_message())
    assert references(mail) == (msg.Reference(msg.Identifier("diarienummer", "KS 2026/123")),)


def test_reply_threads_under_the_mail_it_answers() -> None:
    message = make_message(ref_to_message_id="0b0c", confidential=False)
    assert mail_of(message)["In-Reply-To"] == "<0b0c@sdk.kommun.se>"
    mail = mail_of(message, replying_to="original@outlook.kommun.se")
    assert mail["In-Reply-To"] == mail["References"] == "<original@outlook.kommun.se>"
    assert mail["Subject"] == "Ansökan om bygglov"
    assert mail["Sensitivity"] is None and mail["X-SDK-Confidentiality"] == "false"


def test_a_cut_subject_is_made_whole_again() -> None:
    full = "Bygglov " * 40
    full = full.strip()
    text = f"Ämne: {full}\n\nTexten."
    document = msg.Document("SDK-Meddelande", texts=(text,))
    message = make_message(label=cut_label(full), documents=(document,), confidential=False)
    mail = mail_of(message)
    assert mail["Subject"] == full
    body = mail.get_body(("plain",))
    assert body is not None and "Ämne:" not in body.get_content()


def test_html_is_rendered_and_nothing_can_run_or_load() -> None:
    markdown = (
        "# Rubrik\n\n**fet** <script>alert(1)</script> [x](javascript:alert(1)) "
        "![bild](https://evil.example/x.png) [Digg](https://www.digg.se)\n\n<img src=x>"
    )
    rendered = render_markdown(markdown)
    assert "<h1>Rubrik</h1>" in rendered and "<strong>fet</strong>" in rendered
    assert '<a href="https://www.digg.se">Digg</a>' in rendered
    assert "<script" not in rendered and "<img" not in rendered
    assert 'href="javascript' not in rendered
    document = msg.Document("SDK-Meddelande", texts=(markdown,))
    mail = mail_of(make_message(documents=(document,)))
    html = mail.get_body(("html",))
    assert html is not None and "<script" not in html.get_content()


def test_line_breaks_in_xml_text_never_break_headers() -> None:
    message = make_message(label="Rad ett\nBcc: x@evil.example")
    mail = mail_of(message)
    assert mail["Bcc"] is None
    assert mail["Subject"] == "[sekretess] Rad ett Bcc: x@evil.example"


def test_odd_content_type_and_only_files() -> None:
    files = (
        msg.ContentFile("data.bin", "nonsense", b"\x00\x01"),
        msg.ContentFile("bild.png", "image/png", b"\x89PNG"),
    )
    document = msg.Document("SDK-Meddelande", files=files)
    mail = mail_of(make_message(documents=(document,)))
    types = [(a.get_filename(), a.get_content_type()) for a in mail.iter_attachments()]
    assert types == [("data.bin", "application/octet-stream"), ("bild.png", "image/png")]
    assert [a.get_content() for a in mail.iter_attachments()] == [b"\x00\x01", b"\x89PNG"]


def test_seven_bit_and_long_thread_ids_stay_whole() -> None:
    parent = "AM0PR07MB1234567890ABCDEF1234567890ABCDEF1234@AM0PR07MB1234.eurprd07.prod.outlook.com"
    message = make_message(ref_to_message_id="0b0c")
    data = to_email(
        message,
        sender=SENDER,
        sender_name="Å kommun",
        recipient="registrator@kommun.se",
        sdk_domain="sdk.kommun.se",
        replying_to=parent,
    )
    assert data.isascii()  # no 8BITMIME needed anywhere on the way
    assert f"In-Reply-To: <{parent}>\r\n".encode() in data
    mail = email.message_from_bytes(data, policy=email.policy.default)
    body = mail.get_body(("plain",))  # type: ignore[attr-defined]
    assert body is not None and "Här kommer" in body.get_content()


def test_attachment_types_and_names_are_made_safe() -> None:
    files = (
        msg.ContentFile("a\r\nBcc: x@evil.example.pdf", "application/pdf", b"%PDF"),
        msg.ContentFile("b", "multipart/mixed", b"not multipart"),
        msg.ContentFile("c", "message/rfc822", b"Subject: x\r\n\r\nx"),
        msg.ContentFile("d", "text/plain; charset=utf-16", b"x"),
        msg.ContentFile("e", "text/html", b"<script>x</script>"),
        msg.ContentFile("\x00\x07", "text/plain", "Å".encode()),
    )
    document = msg.Document("SDK-Meddelande", files=files)
    mail = mail_of(make_message(documents=(document,)))
    assert mail["Bcc"] is None
    found = [(a.get_filename(), a.get_content_type()) for a in mail.iter_attachments()]
    octet = "application/octet-stream"
    assert found == [
        ("a Bcc: x@evil.example.pdf", "application/pdf"),
        ("b", octet),
        ("c", octet),
        ("d", octet),
        ("e", octet),
        ("bilaga-6", "text/plain"),
    ]
    assert [a.get_payload(decode=True) for a in mail.iter_attachments()] == [
        f.content for f in files
    ]


def test_encoded_lines_keep_to_76_characters() -> None:
    """RFC 2045: quoted-printable and base64 lines of at most 76 characters; the files
    (spliced in as base64 past the email package) come out byte for byte."""
    text = "Bänkprov av sdk-bridge: åäö ÅÄÖ. " * 300  # one long line of Swedish
    files = (
        msg.ContentFile("a.pdf", "application/pdf", b"%PDF" + bytes(range(256)) * 300),
        msg.ContentFile("kort.bin", "application/octet-stream", b"x" * 57),
        msg.ContentFile("tom.bin", "application/octet-stream", b""),
    )
    message = make_message(documents=(msg.Document("SDK-Meddelande", (text,), files),))
    data = to_email(
        message,
        sender=SENDER,
        sender_name="A kommun",
        recipient="registrator@kommun.se",
        sdk_domain="sdk.kommun.se",
    )
    body = data.split(b"\r\n\r\n", 1)[1]
    body_lines = [line for line in body.split(b"\r\n") if not line.startswith(b"Content-")]
    assert max(map(len, body_lines)) <= 76
    mail = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    found = [part.get_content() for part in mail.iter_attachments()]
    assert found == [file.content for file in files]
    assert mail.get_body(("plain",)).get_content().rstrip().endswith("ÅÄÖ.")  # type: ignore[union-attr]
