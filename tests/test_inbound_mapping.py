"""SDK business message to mail (sdk_bridge.mapping.to_mail)."""

import email
import email.policy
import re
from email.message import EmailMessage

import lxml.html
import pytest
from support.parties import make_message

from sdk_bridge.mapping.to_mail import MAX_FILE_NAME_BYTES, safe_file_name, to_email
from sdk_bridge.mapping.to_sdk import cut_label, references
from sdk_bridge.sdk import markdown
from sdk_bridge.sdk import message as msg

SENDER = "registrator@a.example.se.sdk.kommun.se"


ADDRESSES: dict[str, str] = dict(
    sender=SENDER,
    sender_name="A kommun – Registrator",
    recipient="registrator@kommun.se",
    sdk_domain="sdk.kommun.se",
)


def mail_of(message: msg.BusinessMessage, **more: object) -> EmailMessage:
    data = to_email(message, **ADDRESSES, **more)  # type: ignore[arg-type]
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


# B1.3.3 §4.3.3.2's subset, as HTML elements; nothing else may appear in the rendered text.
SUBSET = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "ul", "ol", "li", "br", "hr"}


def test_html_is_the_subset_and_nothing_can_run_or_load() -> None:
    """Checked by parsing: only the subset's elements, no attribute that loads or links,
    and what the subset lacks (links, images, raw HTML, code) still there as text."""
    source = (
        "# Rubrik\n\n**fet** och _kursiv_ <script>alert(1)</script> [x](javascript:alert(1)) "
        "![bild](https://evil.example/x.png) [Digg](https://www.digg.se)\n\n<img src=x>\n\n"
        "* ett\n* två\n\n1. första\n2. andra\n\n---\n\n    kod\n\n> citat  \nrad"
    )
    rendered = lxml.html.fragment_fromstring(markdown.render(source), create_parent="div")
    elements = {e.tag for e in rendered.iter() if isinstance(e.tag, str)} - {"div"}
    assert elements <= SUBSET, elements - SUBSET
    assert {"h1", "strong", "em", "ul", "ol", "hr", "br"} <= elements
    assert all(not e.attrib for e in rendered.iter() if e.tag != "div")  # no src, no href
    text = rendered.text_content()
    for shown in ("<script>alert(1)</script>", "[Digg](https://www.digg.se)", "<img src=x>"):
        assert shown in text
    document = msg.Document("SDK-Meddelande", texts=(source,))
    mail = mail_of(make_message(documents=(document,)))
    html = mail.get_body(("html",))
    assert html is not None
    body = lxml.html.document_fromstring(html.get_content()).body
    assert {e.tag for e in body.iter()} - {"body"} <= SUBSET
    assert not body.xpath("//script | //img | //a | //iframe | //@src | //@href | //@style")


PLAIN = """Hej!

Se ärende KS_2024_0123 i C:\\Users\\x och *viktigt* (**inte** fetstil).
1. första
2) andra
# 1 Inledning
> citat, [x](y) och <b>html</b> & annat | rör ~ tilde
Länk: https://www.digg.se/a_b_c

--
Anna Andersson
Registrator, Habo kommun
+46 70 123 45 67
=====
---"""


def test_plain_text_survives_the_round_trip_line_for_line() -> None:
    """Written as Markdown by the outbound side, read back by ours: the same lines; and
    rendered, it shows the same characters with every line break."""
    escaped = markdown.escape(PLAIN)
    assert markdown.plain(escaped) == PLAIN
    document = msg.Document("SDK-Meddelande", texts=(escaped,))
    mail = mail_of(make_message(documents=(document,)))
    body = mail.get_body(("plain",))
    assert body is not None
    lines = body.get_content().replace("\r\n", "\n").rstrip("\n").split("\n")
    assert lines[-len(PLAIN.split("\n")) :] == PLAIN.split("\n")
    html = lxml.html.fragment_fromstring(markdown.render(escaped), create_parent="div")
    assert {e.tag for e in html.iter()} <= {"div", "p", "br"}  # no list, heading, emphasis
    paragraphs = PLAIN.count("\n\n")  # each blank line ends a paragraph instead
    assert len(html.findall(".//br")) == PLAIN.count("\n") - 2 * paragraphs
    shown = html.text_content()
    for line in PLAIN.split("\n"):
        assert line in shown


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
    body = mail.get_body(("plain",))
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
    data = to_email(make_message(documents=(document,)), **ADDRESSES)
    mail = email.message_from_bytes(data, policy=email.policy.default)
    assert mail["Bcc"] is None
    found = [(a.get_filename(), a.get_content_type()) for a in mail.iter_attachments()]
    octet = "application/octet-stream"
    assert found == [
        ("a Bcc: x@evil.example.pdf", "application/pdf"),
        ("b", octet),
        ("c", "message/rfc822"),  # carried as itself: 7-bit lines (RFC 2046)
        ("d", "text/plain"),
        ("e", octet),
        ("bilaga-6", "text/plain"),
    ]
    assert [p.get_content_charset() for p in mail.iter_attachments()][3] == "utf-16"
    decoded = [a.get_payload(decode=True) for a in mail.iter_attachments()]
    assert decoded[:2] + decoded[3:] == [f.content for f in files[:2] + files[3:]]
    assert b"\r\n\r\nSubject: x\r\n\r\nx\r\n--" in data


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


# ---------------------------------------------------------------------------------------
# Issue 15: who wrote it, who else got it, invites, forwarded mail, folded headers


def test_the_writer_and_the_context_open_the_text_and_replies_go_through_the_bridge() -> None:
    sender = msg.Party(
        "0203:a.example.se",
        msg.Attention("registrator.a", persons=(msg.Person(label="Anna Ek (anna@a.example.se)"),)),
    )
    text = "Kopia: Bo Ek \\<bo@a.example.se\\>  \nSvara till: hl@a.example.se\n\nHej\\!"
    document = msg.Document("SDK-Meddelande", texts=(text,))
    mail = mail_of(
        make_message(sender=sender, documents=(document,), recipient=make_message().recipient)
    )
    assert mail["From"].addresses[0].display_name == "A kommun – Registrator (SDK), Anna Ek"
    assert mail["From"].addresses[0].addr_spec == SENDER  # a reply goes back through the bridge
    assert mail["Cc"] is None and mail["Reply-To"] is None
    body = mail.get_body(("plain",))
    assert body is not None
    assert body.get_content().splitlines()[:5] == [
        "Från: Anna Ek (anna@a.example.se)",
        "Kopia: Bo Ek <bo@a.example.se>",
        "Svara till: hl@a.example.se",
        "Referens: KS 2026/123 (diarienummer)",
        "Person: 191212121212 (1.2.752.129.2.1.3.1)",
    ]
    assert body.get_content().endswith("\r\n\r\nHej!\r\n")


def test_an_invite_is_an_alternative_too_and_files_keep_their_parameters() -> None:
    ics = b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    files = (
        msg.ContentFile("inbjudan.ics", "text/calendar; charset=utf-8", ics),
        msg.ContentFile("a.txt", "text/plain; charset=iso-8859-1; x-evil=1", "Å".encode("latin-1")),
        msg.ContentFile("p.p7m", "application/pkcs7-mime; smime-type=signed-data", b"0\x80"),
    )
    document = msg.Document("SDK-Meddelande", texts=("Möte",), files=files)
    mail = mail_of(make_message(documents=(document,)))
    alternative = next(mail.iter_parts())
    alternatives = [p.get_content_type() for p in alternative.iter_parts()]
    assert alternatives == ["text/plain", "text/html", "text/calendar"]
    invite = list(alternative.iter_parts())[2]
    assert (invite.get_param("method"), invite.get_content_charset()) == ("REQUEST", "utf-8")
    assert invite.get_payload(decode=True) == ics
    attached = list(mail.iter_attachments())
    assert [(a.get_filename(), a.get_content_type()) for a in attached] == [
        ("inbjudan.ics", "text/calendar"),
        ("a.txt", "text/plain"),
        ("p.p7m", "application/pkcs7-mime"),
    ]
    assert attached[0].get_param("method") == "REQUEST"
    assert attached[1].get_content_charset() == "iso-8859-1"
    assert attached[1].get_param("x-evil") is None
    assert attached[2].get_param("smime-type") == "signed-data"


def test_forwarded_mail_stays_a_message_where_its_bytes_allow() -> None:
    seven_bit = b"Subject: Vidare\r\nFrom: a@b\r\n\r\nText\r\n"
    eight_bit = "Subject: Åter\r\n\r\nÅ\r\n".encode()
    files = (
        msg.ContentFile("vidare.eml", "message/rfc822", seven_bit),
        msg.ContentFile("åter.eml", "message/rfc822", eight_bit),
        msg.ContentFile("status.txt", "message/delivery-status", b"Action: failed\r\n"),
    )
    document = msg.Document("SDK-Meddelande", texts=("Se",), files=files)
    data = to_email(make_message(documents=(document,)), **ADDRESSES)
    assert b"\r\n\r\n" + seven_bit + b"\r\n--" in data
    mail = email.message_from_bytes(data, policy=email.policy.default)
    attached = list(mail.iter_attachments())
    assert [a.get_content_type() for a in attached] == [
        "message/rfc822",
        "application/octet-stream",  # base64: RFC 2046 forbids it for message/rfc822
        "message/delivery-status",
    ]
    assert attached[1].get_payload(decode=True) == eight_bit


def test_headers_are_folded_and_message_ids_are_not_encoded() -> None:
    parent = "x" * 120
    message = make_message(label="Ärende " * 36, ref_to_message_id=parent)
    data = to_email(message, **ADDRESSES)
    head = data.split(b"\r\n\r\n", 1)[0]
    long_lines = [line for line in head.split(b"\r\n") if len(line) > 78]
    assert all(line.startswith((b"In-Reply-To:", b"References:")) for line in long_lines)
    assert f"In-Reply-To: <{parent}@sdk.kommun.se>\r\n".encode() in data
    mail = email.message_from_bytes(data, policy=email.policy.default)
    assert mail["Subject"].startswith("[sekretess] Ärende Ärende")


def test_indented_lines_and_very_long_text_render_as_written() -> None:
    """Four spaces or a tab would make a code block, a nested list or a heading in a
    renderer: the indentation travels as character references and comes back."""
    text = "Rad\n    - punkt\n\t# rubrik\n    1. ett\nslut"
    escaped = markdown.escape(text)
    assert markdown.plain(escaped) == text
    rendered = lxml.html.fragment_fromstring(markdown.render(escaped), create_parent="div")
    assert {e.tag for e in rendered.iter()} <= {"div", "p", "br"}
    long_text = markdown.escape("*Rad* [x](y)\n" * 60_000)
    assert len(long_text) > markdown.MAX_RENDERED_CHARS
    html = markdown.render(long_text)
    assert "<em>" not in html and html.count("<p>") == 1 and "*Rad* [x](y)<br />" in html


def test_received_file_names_are_safe_to_save() -> None:
    """Issue 16: no path, no control characters, a length every file system takes."""
    assert safe_file_name("../../../../tmp/x.html", 1) == "x.html"
    assert safe_file_name("C:\\Windows\\evil.exe", 1) == "evil.exe"
    assert safe_file_name("...dold", 1) == "dold"
    assert safe_file_name("..", 4) == "bilaga-4"
    long = safe_file_name("Å" * 300 + ".pdf", 1)
    assert long.endswith("Å.pdf") and len(long.encode()) <= MAX_FILE_NAME_BYTES


def test_text_parts_are_7bit_quoted_printable_or_base64_and_read_back() -> None:
    """The text parts are written directly: the shortest safe encoding of each, and every
    header line within 78 characters but the message ids, which are never folded."""
    cases = {
        "Hello there.\n\nShort ASCII lines.": "7bit",
        "Hälsningar från kommunen, " * 8 + "\nrad två": "quoted-printable",
        "日本語のテキスト" * 40: "base64",
    }
    for text, encoding in cases.items():
        document = msg.Document("SDK-Meddelande", texts=(markdown.escape(text),))
        data = to_email(make_message(documents=(document,), label="Åtgärd " * 30), **ADDRESSES)
        mail = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(mail, EmailMessage)
        plain = mail.get_body(("plain",))
        assert plain is not None and plain["Content-Transfer-Encoding"] == encoding
        assert plain.get_content().rstrip().endswith(text.splitlines()[-1].rstrip())
        assert mail["Subject"] == "[sekretess] " + ("Åtgärd " * 30).strip()
        head = data[: data.index(b"\r\n\r\n")].decode("ascii")
        for line in head.split("\r\n"):
            assert len(line) <= 78 or line.startswith(("Message-ID:", "In-Reply-To:"))


def test_header_text_is_encoded_word_by_word_and_reads_back_exactly() -> None:
    """Subject and display names with other than ASCII: RFC 2047 words in lines of at
    most 78, read back character for character, spaces kept; "[sekretess]" stays plain."""
    label = "Ärende  om  åtgärd " * 8 + "日本語"
    name = "Göinge kommun – Socialtjänsten"  # one encoded word; longer: the email package
    data = to_email(make_message(label=label), **{**ADDRESSES, "sender_name": name})
    mail = email.message_from_bytes(data, policy=email.policy.default)
    assert mail["Subject"] == "[sekretess] " + " ".join(label.split())
    assert mail["From"].addresses[0].display_name == name + " (SDK)"
    head = data[: data.index(b"\r\n\r\n")].decode("ascii")
    assert "Subject: [sekretess] =?utf-8?b?" in head and "From: =?utf-8?b?" in head
    assert all(len(line) <= 78 for line in head.split("\r\n") if "Message-ID" not in line)


def test_mail_lines_and_encoded_words_keep_their_limits() -> None:
    """Review of issue 18's writer: encoded words of at most 75 characters, quoted-printable
    lines of at most 76 also where a line ends in a space, text that looks like an encoded
    word stays that text, and an alias that is no plain address is not written as one."""
    lines = ("x" * 74 + " \n") * 3 + "y" * 74 + "é"
    document = msg.Document("SDK-Meddelande", texts=(lines,))
    subject = "=?utf-8?b?W3Nla3JldGVzc10=?= " + "Ä" * 200
    data = to_email(make_message(documents=(document,), label=subject), **ADDRESSES)
    head, body = data.split(b"\r\n\r\n", 1)
    words = re.findall(rb"=\?utf-8\?b\?[^?]*\?=", head)
    assert words and max(map(len, words)) <= 75
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    mail = email.message_from_bytes(data, policy=email.policy.default)
    assert mail["Subject"] == "[sekretess] " + subject
    plain = mail.get_body(("plain",))
    assert plain is not None and plain.get_content().replace("\r\n", "\n").rstrip().endswith(lines)
    bad_alias = {**ADDRESSES, "sender_name": "Malmö", "sender": "x@y>\r\nBcc: spy@evil.example"}
    with pytest.raises(ValueError):  # as the email package refuses it, never written
        to_email(make_message(), **bad_alias)
