"""The mails of issue 15's acceptance test (tests/test_fidelity.py), as raw bytes with CRLF
line ends, each with what must arrive at B.

- every `msg_*.txt` of CPython's own e-mail test corpus (`test/test_email/data` of the
  interpreter running the tests), with only its Subject marked and its To set to B's alias:
  the envelope routes it, every other byte stays as it is;
- mails as Outlook and other clients write them: a meeting invite, HTML with inline cid
  images, S/MIME detached and opaque signed mail and PGP/MIME (signed here with throw-away
  keys made with openssl and gpg), Cc and Reply-To from a person, plain text full of
  Markdown characters, a Latin-1 text attachment with a forwarded mail, a delivery report.

What is expected follows PRODUCT.md's mapping table, derived from the mail's MIME structure
as Python's e-mail parser reads it (`expectation`): the text/plain of an alternative (else
its HTML) and every other inline text/plain is the text; every other leaf part arrives as an
attachment with its type, file name (where it has one), charset and method parameters and
the SHA-256 of its decoded content; message/* parts arrive whole (compared with line ends
and trailing whitespace normalised), message/external-body and message/partial as text files
that hold their lines (README's table); a multipart/signed entity arrives as
"signerat-meddelande.eml" whose first part is byte for byte the signed part, and its content
is read as any other.
"""

from __future__ import annotations

import email.policy
import hashlib
import io
import re
import shutil
import struct
import subprocess
import sysconfig
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.utils import format_datetime
from pathlib import Path
from typing import Literal, cast

FUNCTIONAL_A = "registrator@a.sandbox.test"  # A's functional address: the envelope sender
B_ALIAS = "registrator@b.sandbox.test.sdk.a.sandbox.test"  # B's registrator, as A writes it
A_AT_B_NAME = "Sandbox kommun A – Registrator (SDK)"  # B's From name for A's registrator
# message/* parts that only point at content arrive as text files of their header lines.
REFERENCE_FILES = {
    "message/external-body": "extern-referens.txt",
    "message/partial": "meddelandedel.txt",
}
CORPUS = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
SIGNED_ENTITY = "signerat-meddelande.eml"
HEADER_PREFIXES = (
    "Referens: ", "Person: ", "Avsändarens referens: ", "Från: ", "Kopia: ", "Till: ",
    "Svara till: ",
)  # fmt: skip
DATE = format_datetime(datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
_COMPAT = email.policy.compat32
_REGENERATE = email.policy.compat32.clone(linesep="\r\n", max_line_length=0)
_SMTP = email.policy.SMTP


@dataclass
class Attachment:
    """A part that must arrive at B as an attachment."""

    content_type: str
    content: bytes  # decoded; for message/* the part's body (the attached message)
    filename: str | None = None  # None: any name (an unnamed part is "bilaga-<n><ext>")
    params: dict[str, str] = field(default_factory=dict)  # B's Content-Type carries these
    signed_part: bytes | None = None  # multipart/signed: the signed part, byte for byte
    whole: bool = True  # False: no SHA-256 to compare (only signed_part)
    or_text: str | None = None  # a named inline text part: as text at B is as good
    within: bool = False  # the content's lines are found in the file's, not the same bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def is_message(self) -> bool:
        return self.content_type.startswith("message/")

    def describe(self) -> str:
        named = f" {self.filename!r}" if self.filename else ""
        params = "".join(f"; {k}={v}" for k, v in self.params.items())
        return f"{self.content_type}{params}{named} ({len(self.content)} bytes)"


@dataclass
class Mail:
    name: str
    raw: bytes  # as sent over SMTP: CRLF line ends, ending in CRLF
    texts: list[str]  # each text/plain body part: its lines appear at B in order
    attachments: list[Attachment]
    text: str | None = None  # B's whole text below the header block, where known exactly
    header_lines: list[str] = field(default_factory=list)  # in B's header block
    display_name: str | None = None  # of B's From
    calendar: bool = False  # B's alternative carries text/calendar; method=REQUEST
    signed: Literal["smime", "opaque", "pgp"] | None = None  # verify at B
    reply: bool = False  # B's answer must reach A's INBOX
    corpus: bool = False  # a refusal at SMTP (5xx with an enhanced code) is acceptable
    skip: str | None = None  # why this mail cannot be built here

    @property
    def marker(self) -> str:
        return marker(self.name)


def marker(name: str) -> str:
    return f"[fid-{name}]"


def crlf(raw: bytes) -> bytes:
    raw = re.sub(rb"\r*\n", b"\r\n", raw)
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


# --- what B must receive, from the mail's structure -------------------------------------


def expectation(raw: bytes) -> tuple[list[str], list[Attachment]]:
    """The text/plain body parts and the attachments of `raw` (see the module docstring)."""
    parsed = BytesParser(policy=_COMPAT).parsebytes(raw)
    texts: list[str] = []
    attachments: list[Attachment] = []
    raw_root = raw_tree(raw)
    images = {
        cid.strip().strip("<>"): part.get_filename() or ""
        for part in parsed.walk()
        if (cid := part.get("Content-ID")) and part.get_content_maintype() == "image"
    }

    def walk(part: Message, raw_part: RawPart | None) -> None:
        ctype = part.get_content_type()
        payload = part.get_payload()
        if part.get_content_maintype() == "multipart":
            if not isinstance(payload, list):  # malformed: its text is what is readable
                texts.append(_decoded_text(part))
                return
            children = cast("list[Message]", payload)
            raws = raw_part.children if raw_part is not None else []
            aligned = len(raws) == len(children)

            def child(index: int) -> None:
                walk(children[index], raws[index] if aligned else None)

            if ctype == "multipart/alternative":
                chosen = _preferred(children)
                for index, alternative in enumerate(children):
                    other_text = alternative.get_content_type() in ("text/plain", "text/html")
                    if index == chosen or not other_text:
                        child(index)
                return
            if ctype == "multipart/signed" and children:
                first = raws[0].raw if aligned and raws else None
                attachments.append(
                    Attachment("message/rfc822", b"", SIGNED_ENTITY, signed_part=first, whole=False)
                )
                child(0)
                return
            for index in range(len(children)):
                child(index)
            return
        if part.get_content_maintype() == "message":
            body = raw_part.body if raw_part is not None else _regenerated_body(part)
            if ctype in REFERENCE_FILES:  # README: the part's header lines, as a text file
                name = part.get_filename() or REFERENCE_FILES[ctype]
                attachments.append(Attachment("text/plain", body, name, within=True))
            else:
                attachments.append(Attachment(ctype, body, part.get_filename()))
            return
        if ctype in ("text/plain", "text/html") and not _is_attachment(part):
            if ctype == "text/plain":
                texts.append(_cid_references(_decoded_text(part), images))
            return
        content = part.get_payload(decode=True)
        attachments.append(
            Attachment(ctype, content if isinstance(content, bytes) else b"", part.get_filename(),
                       _params(part))
        )  # fmt: skip
        if ctype == "text/plain" and part.get_content_disposition() != "attachment":
            attachments[-1].or_text = _decoded_text(part)  # named, not an attachment: either

    walk(parsed, raw_root)
    return texts, attachments


def _preferred(children: list[Message]) -> int | None:
    for wanted in ("text/plain", "text/html"):
        for index, child in enumerate(children):
            if child.get_content_type() == wanted and not _is_attachment(child):
                return index
    return None


def _is_attachment(part: Message) -> bool:
    """Disposition attachment, or a file name (a named text part that is not an attachment
    may arrive as a file or as text: `Attachment.or_text`)."""
    return part.get_content_disposition() == "attachment" or bool(part.get_filename())


def _params(part: Message) -> dict[str, str]:
    wanted = ("charset", "method") if part.get_content_maintype() == "text" else ()
    found = {}
    for name in wanted:
        value = part.get_param(name)
        if isinstance(value, str):
            found[name] = value.lower()
    return found


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(part.get_payload()).encode("utf-8", "replace")
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("latin-1")


def _cid_references(text: str, images: dict[str, str]) -> str:
    """Outlook's "[cid:image001.png@…]" markers as B must show them."""
    return re.sub(
        r"\[cid:([^\]\s]+)\]",
        lambda m: f"[bild: {images.get(m[1]) or m[1].split('@')[0]}]",
        text,
    )


def _regenerated_body(part: Message) -> bytes:
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_REGENERATE).flatten(part)
    return out.getvalue().split(b"\r\n\r\n", 1)[-1]


# --- raw MIME: parts as the bytes between their boundaries ------------------------------


@dataclass
class RawPart:
    raw: bytes  # the whole part, exactly as between its boundaries
    head: bytes
    body: bytes
    headers: Message
    children: list[RawPart]

    def walk(self) -> Iterator[RawPart]:
        yield self
        for child in self.children:
            yield from child.walk()


def raw_tree(raw: bytes) -> RawPart:
    """`raw` split at its boundaries (RFC 2046: the CRLF before a delimiter belongs to it);
    message/* parts are leaves."""
    head, body = _split_head(raw)
    headers = BytesParser(policy=_COMPAT).parsebytes(head + b"\r\n\r\n", headersonly=True)
    children = []
    boundary = headers.get_boundary() if headers.get_content_maintype() == "multipart" else None
    if boundary:
        children = [raw_tree(part) for part in split_multipart(body, boundary)]
    return RawPart(raw, head, body, headers, children)


def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    if raw.startswith(b"\r\n"):
        return b"", raw[2:]
    head, separator, body = raw.partition(b"\r\n\r\n")
    return (head, body) if separator else (raw, b"")


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    delimiter = re.compile(
        rb"(?:\A|\r\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r\n|\Z)"
    )
    parts, start = [], None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : match.start()])
        if match[1]:
            break
        start = match.end()
    return parts


# --- the CPython corpus ----------------------------------------------------------------


def corpus_names() -> list[str]:
    return sorted(path.stem for path in CORPUS.glob("msg_*.txt")) if CORPUS.is_dir() else []


def corpus_mail(name: str) -> Mail:
    original = crlf((CORPUS / f"{name}.txt").read_bytes())
    raw = routed(original, marker(name), name)
    texts, attachments = expectation(raw)
    return Mail(name, raw, texts, attachments, corpus=True)


def routed(raw: bytes, mark: str, name: str) -> bytes:
    """`raw` with its Subject marked and its To set to B's alias; nothing else changes
    but a leading mbox "From " line, which no mail carries over SMTP. The header block ends
    at the first line that is not a header field or a continuation (some of the corpus has
    no blank line after it)."""
    lines = raw.split(b"\r\n")
    if lines[0].startswith(b"From "):  # an mbox separator, not part of a mail on the wire
        lines = lines[1:]
    end = 0
    while end < len(lines) and (
        re.match(rb"[!-9;-~]+:", lines[end]) or (end and lines[end][:1] in (b" ", b"\t"))
    ):
        end += 1
    head, rest = lines[:end], lines[end:]
    out: list[bytes] = []
    subject_seen = False
    skipping = False
    for line in head:
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        field_name = line.split(b":", 1)[0].strip().lower()
        if field_name == b"to":
            skipping = True
            continue
        if field_name == b"subject" and not subject_seen:
            subject_seen = True
            value = line.split(b":", 1)[1].lstrip(b" ")
            line = b"Subject: " + mark.encode() + b" " + value
        out.append(line)
    added = [b"To: " + B_ALIAS.encode()]
    if not subject_seen:
        added.append(f"Subject: {mark} {name}".encode())
    return b"\r\n".join(added + out + rest)


# --- mails as clients write them ---------------------------------------------------------


def _message(subject: str, sender: str = f"Registrator <{FUNCTIONAL_A}>") -> EmailMessage:
    mail = EmailMessage(policy=_SMTP)
    mail["From"] = sender
    mail["To"] = f"Sandbox kommun B – Registrator (SDK) <{B_ALIAS}>"
    mail["Subject"] = subject
    mail["Date"] = DATE
    mail["Message-ID"] = f"<fid-{hashlib.sha256(subject.encode()).hexdigest()[:16]}@a.sandbox.test>"
    return mail


def _built(name: str, mail: EmailMessage | bytes, text: str | None = None, **more: object) -> Mail:
    raw = crlf(mail if isinstance(mail, bytes) else mail.as_bytes(policy=_SMTP))
    texts, attachments = expectation(raw)
    built = Mail(name, raw, texts, attachments, text=text, **more)  # type: ignore[arg-type]
    # The writer, where not the functional address: named atop B's text and in B's From.
    (writer,) = BytesParser(policy=email.policy.default).parsebytes(raw)["From"].addresses
    if writer.addr_spec != FUNCTIONAL_A and not built.header_lines:
        shown = f"{writer.display_name} ({writer.addr_spec})" if writer.display_name else ""
        built.header_lines = [f"Från: {shown or writer.addr_spec}"]
        if writer.display_name:
            built.display_name = f"{A_AT_B_NAME}, {writer.display_name}"
    return built


def _subject(name: str, subject: str) -> str:
    return f"{marker(name)} {subject}"


MARKDOWN_TEXT = """\
Hej!

Här kommer underlaget i ärende KS_2024_0123, se *stjärna* och _understreck_.
# 1 Inledning
1. första
2) andra
> citat från förra brevet
[x](https://example.se)
Filen ligger i C:\\Users\\x\\fil.txt
a | b | c
--- | --- | ---
    indenterad rad
**inte fet** och `inte kod` och <b>inte html</b> &amp; 2 * 3 = 6


Två tomma rader ovan, en nedan.

+ plus
- minus
"""
MARKDOWN_TEXT += "-- \nAnna Andersson\nHandläggare\n070-123 45 67\n"  # the signature block


def markdown_mail() -> Mail:
    name = "markdown"
    mail = _message(_subject(name, "Text med Markdown-tecken"))
    mail.set_content(MARKDOWN_TEXT, cte="quoted-printable")
    return _built(name, mail, MARKDOWN_TEXT)


CC_TEXT = "Hej,\n\njag skickar detta även till Bo och Cecilia.\nSvara gärna till bygglovsenheten.\n"


def cc_mail() -> Mail:
    name = "cc"
    mail = _message(
        _subject(name, "Kopia och svarsadress"),
        sender="Anna Andersson <anna.andersson@a.sandbox.test>",
    )
    mail["Cc"] = "Bo Ek <bo.ek@a.sandbox.test>, Cecilia Ceder <cecilia@a.sandbox.test>"
    mail["Reply-To"] = "Bygglovsenheten Ö <bygglov@a.sandbox.test>"
    mail.set_content(CC_TEXT, cte="quoted-printable")
    parsed = BytesParser(policy=email.policy.default).parsebytes(mail.as_bytes(policy=_SMTP))
    return _built(
        name,
        mail,
        CC_TEXT,
        header_lines=[
            "Från: Anna Andersson (anna.andersson@a.sandbox.test)",
            f"Kopia: {parsed['Cc']}",
            f"Svara till: {parsed['Reply-To']}",
        ],
        display_name=f"{A_AT_B_NAME}, Anna Andersson",
        reply=True,
    )


INVITE = """\
BEGIN:VCALENDAR
METHOD:REQUEST
PRODID:Microsoft Exchange Server 2010
VERSION:2.0
BEGIN:VTIMEZONE
TZID:W. Europe Standard Time
BEGIN:STANDARD
DTSTART:16010101T030000
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:16010101T020000
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3
END:DAYLIGHT
END:VTIMEZONE
BEGIN:VEVENT
ORGANIZER;CN=Anna Andersson:mailto:anna.andersson@a.sandbox.test
ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Sandbox kommun
 B – Registrator (SDK):mailto:registrator@b.sandbox.test.sdk.a.sandbox.test
DESCRIPTION;LANGUAGE=sv-SE:Vi går igenom remissvaret i ärende KS 2024/123.\\n
UID:040000008200E00074C5B7101A82E0080000000050F1B2C3D4E5DA01000000000000000010
 000000A1B2C3D4E5F60718293A4B5C6D7E8F90
SUMMARY;LANGUAGE=sv-SE:Samråd om remissvar
DTSTART;TZID=W. Europe Standard Time:20260310T100000
DTEND;TZID=W. Europe Standard Time:20260310T110000
CLASS:PUBLIC
PRIORITY:5
DTSTAMP:20260302T093000Z
TRANSP:OPAQUE
STATUS:CONFIRMED
SEQUENCE:0
LOCATION;LANGUAGE=sv-SE:Stadshuset\\, rum Älven
BEGIN:VALARM
DESCRIPTION:REMINDER
TRIGGER;RELATED=START:-PT15M
ACTION:DISPLAY
END:VALARM
END:VEVENT
END:VCALENDAR
""".replace("\n", "\r\n")


def invite_mail() -> Mail:
    name = "invite"
    mail = _message(
        _subject(name, "Samråd om remissvar"), "Anna Andersson <anna.andersson@a.sandbox.test>"
    )
    plain = (
        "När: den 10 mars 2026 10:00–11:00.\nVar: Stadshuset, rum Älven\n\n"
        "Vi går igenom remissvaret i ärende KS 2024/123.\n"
    )
    mail.set_content(plain, cte="quoted-printable")
    mail.add_alternative(
        '<html><head><meta charset="utf-8"></head><body><p><b>När:</b> den 10 mars 2026'
        " 10:00–11:00.<br>Var: Stadshuset, rum Älven</p><p>Vi går igenom remissvaret i"
        " ärende KS 2024/123.</p></body></html>\n",
        subtype="html",
        cte="quoted-printable",
    )
    mail.add_alternative(
        INVITE.encode(), maintype="text", subtype="calendar",
        params={"method": "REQUEST", "charset": "utf-8"},
    )  # fmt: skip
    built = _built(name, mail, plain, calendar=True)
    (calendar,) = [a for a in built.attachments if a.content_type == "text/calendar"]
    calendar.filename = "inbjudan.ics"
    return built


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + bytes(colour) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def jpeg() -> bytes:
    path = CORPUS / "python.jpg"
    if path.is_file():
        return path.read_bytes()
    header = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    return header + bytes(range(256)) + b"\xff\xd9"


def inline_images_mail() -> Mail:
    name = "inline-images"
    first, second = "image001.png@01DA0000.12345670", "image002.jpg@01DA0000.12345670"
    plain = (
        "Hej!\n\nHär är kartan över fastigheten:\n\n[cid:" + first + "]\n\n"
        "Och ett foto från platsbesöket [cid:" + second + "] i går.\n\n"
        "Med vänlig hälsning\nAnna\n"
    )
    html = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        '</head><body lang="SV"><div class="WordSection1"><p class="MsoNormal">Hej!</p>'
        '<p class="MsoNormal">Här är kartan över fastigheten:</p><p class="MsoNormal">'
        f'<img width="40" height="30" style="width:.41in" id="Bild_x0020_1" src="cid:{first}"'
        ' alt="karta"></p><p class="MsoNormal">Och ett foto från platsbesöket '
        f'<img width="20" height="20" src="cid:{second}"> i går.</p>'
        '<p class="MsoNormal">Med vänlig hälsning<br>Anna</p></div></body></html>\n'
    )
    alternative = MIMEPart(policy=_SMTP)
    alternative.set_content(plain, cte="quoted-printable")
    alternative.add_alternative(html, subtype="html", cte="quoted-printable")
    images = []
    for cid, content, subtype in (
        (first, png(40, 30, (0, 90, 160)), "png"),
        (second, jpeg(), "jpeg"),
    ):
        filename = cid.split("@")[0]
        image = MIMEPart(policy=_SMTP)
        image.set_content(
            content, maintype="image", subtype=subtype, cid=f"<{cid}>", filename=filename,
            disposition="inline", params={"name": filename},
        )  # fmt: skip
        image["Content-Description"] = filename
        images.append(image)
    mail = _message(_subject(name, "Karta och foto"))
    mail["MIME-Version"] = "1.0"
    mail["Content-Type"] = 'multipart/related; type="multipart/alternative"'
    mail.set_payload([alternative, *images])
    mail.set_boundary("_004_DB9PR07MB7788F1A2B3C4D5E6F7089ABCDB9PR07MB7788eurp_")
    text = plain.replace(f"[cid:{first}]", "[bild: image001.png]").replace(
        f"[cid:{second}]", "[bild: image002.jpg]"
    )
    return _built(name, mail, text)


LATIN1_NOTE = "Anteckning från mötet\r\nÅtgärder: förhöj räckena, måla om dörrarna.\r\n"


def forwarded() -> EmailMessage:
    inner = EmailMessage(policy=_SMTP)
    inner["From"] = "Leverantör AB <offert@leverantor.example>"
    inner["To"] = "Anna Andersson <anna.andersson@a.sandbox.test>"
    inner["Subject"] = "Offert på räcken"
    inner["Date"] = DATE
    inner["Message-ID"] = "<offert-17@leverantor.example>"
    inner.set_content(
        "Hej Anna,\n\nhär kommer offerten. Pris: 12 300 kr.\n", cte="quoted-printable"
    )
    return inner


def attachments_mail() -> Mail:
    name = "attachments"
    mail = _message(_subject(name, "Anteckning och vidarebefordrad offert"))
    mail.set_content("Se bifogad anteckning och offerten nedan.\n", cte="quoted-printable")
    mail.add_attachment(
        LATIN1_NOTE.encode("iso-8859-1"), maintype="text", subtype="plain",
        params={"charset": "iso-8859-1"}, filename="anteckning.txt",
    )  # fmt: skip
    mail.add_attachment(forwarded(), filename="Offert på räcken.eml")
    return _built(name, mail)


def report_mail() -> Mail:
    name = "report"
    boundary = "9B095B5ADSN=_01DA6C2F1B0E4F2A00000001mx1.a.sandbox.test"
    raw = f"""\
From: postmaster@a.sandbox.test
To: {B_ALIAS}
Date: {DATE}
Subject: {marker(name)} Delivery Status Notification (Failure)
Message-ID: <dsn-42@a.sandbox.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"

This is a MIME-formatted message.
Portions of this message may be unreadable without a MIME-capable mail program.

--{boundary}
Content-Type: text/plain; charset=unicode-1-1-utf-7

This is an automatically generated Delivery Status Notification.

Delivery to the following recipients failed.

       okand@a.sandbox.test

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns;mx1.a.sandbox.test
Received-From-MTA: dns;outlook.a.sandbox.test
Arrival-Date: Mon, 2 Mar 2026 09:30:00 +0000

Final-Recipient: rfc822;okand@a.sandbox.test
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp;550 5.1.1 User unknown

--{boundary}
Content-Type: text/rfc822-headers

From: Anna Andersson <anna.andersson@a.sandbox.test>
To: <okand@a.sandbox.test>
Subject: Protokoll
Date: Mon, 2 Mar 2026 09:29:00 +0000
Message-ID: <protokoll-1@a.sandbox.test>

--{boundary}--
"""
    return _built(name, raw.encode())


# --- signed mail ---------------------------------------------------------------------------


class Signer:
    """A throw-away self-signed certificate (openssl) and OpenPGP key (gpg) in a temporary
    directory; `close` stops the gpg-agent started for it and removes the directory."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="fidelity-keys-"))
        self.openssl = shutil.which("openssl")
        self.gpg = shutil.which("gpg")
        self.gnupghome = self.directory / "gnupg"
        self.cert, self.key = self.directory / "cert.pem", self.directory / "key.pem"
        if self.openssl:
            self._run(
                self.openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", str(self.key), "-out", str(self.cert),
                "-subj", "/CN=Anna Andersson/emailAddress=anna.andersson@a.sandbox.test",
            )  # fmt: skip
        if self.gpg:
            self.gnupghome.mkdir(mode=0o700)
            self._run(
                self.gpg, "--homedir", str(self.gnupghome), "--batch", "--passphrase", "",
                "--quick-gen-key", "Anna Andersson <anna.andersson@a.sandbox.test>",
                "ed25519", "sign", "1d",
            )  # fmt: skip

    def _run(self, *command: str, stdin: bytes | None = None) -> bytes:
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{command[:3]} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def cms(self, content: bytes, *options: str) -> bytes:
        assert self.openssl is not None
        source = self.directory / "content.eml"
        source.write_bytes(content)
        return self._run(
            self.openssl, "cms", "-sign", "-in", str(source), "-signer", str(self.cert),
            "-inkey", str(self.key), *options,
        )  # fmt: skip

    def pgp(self, data: bytes) -> bytes:
        assert self.gpg is not None
        return self._run(
            self.gpg, "--homedir", str(self.gnupghome), "--batch", "--armor",
            "--digest-algo", "SHA256", "--detach-sign", stdin=data,
        )  # fmt: skip

    def verify_cms(self, entity: bytes, der: bool = False) -> str | None:
        """None when openssl verifies `entity`, else openssl's complaint."""
        assert self.openssl is not None
        path = self.directory / ("received.p7m" if der else "received.eml")
        path.write_bytes(entity)
        command = [self.openssl, "cms", "-verify", "-noverify", "-in", str(path)]
        done = subprocess.run(
            [*command, *(["-inform", "DER"] if der else []), "-out", "/dev/null"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()

    def verify_pgp(self, data: bytes, signature: bytes) -> str | None:
        assert self.gpg is not None
        (self.directory / "data").write_bytes(data)
        (self.directory / "data.asc").write_bytes(signature)
        done = subprocess.run(
            [self.gpg, "--homedir", str(self.gnupghome), "--batch", "--verify",
             str(self.directory / "data.asc"), str(self.directory / "data")],
            capture_output=True, timeout=60,
        )  # fmt: skip
        return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()

    def close(self) -> None:
        if self.gpg and self.gnupghome.is_dir():
            gpgconf = shutil.which("gpgconf")
            if gpgconf:
                subprocess.run(
                    [gpgconf, "--homedir", str(self.gnupghome), "--kill", "all"],
                    capture_output=True, timeout=30,
                )  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


def _signed_content(text: str, filename: str) -> bytes:
    """The entity to sign: text and one attachment, CRLF, quoted-printable (RFC 3156/8551:
    nothing a relay could change)."""
    content = MIMEPart(policy=_SMTP)
    content.set_content(text, cte="quoted-printable")
    content.add_attachment(PDF, maintype="application", subtype="pdf", filename=filename)
    return crlf(content.as_bytes(policy=_SMTP))


def _headers(name: str, subject: str) -> bytes:
    return crlf(
        f"From: Anna Andersson <anna.andersson@a.sandbox.test>\nTo: {B_ALIAS}\n"
        f"Subject: {_subject(name, subject)}\nDate: {DATE}\n"
        f"Message-ID: <fid-{name}@a.sandbox.test>\n".encode()
    )


def smime_detached_mail(signer: Signer) -> Mail:
    name = "smime-detached"
    if signer.openssl is None:
        return Mail(name, b"", [], [], skip="openssl is not installed")
    content = _signed_content("Beslutet är fattat, se bilagan.\nMed vänlig hälsning\nAnna\n",
                              "beslut.pdf")  # fmt: skip
    signed = crlf(signer.cms(content))
    return _built(name, _headers(name, "Signerat beslut") + signed, signed="smime")


def smime_opaque_mail(signer: Signer) -> Mail:
    name = "smime-opaque"
    if signer.openssl is None:
        return Mail(name, b"", [], [], skip="openssl is not installed")
    content = _signed_content("Intyget bifogas, signerat.\n", "intyg.pdf")
    signed = crlf(signer.cms(content, "-nodetach"))
    mail = _built(name, _headers(name, "Opakt signerat intyg") + signed, signed="opaque")
    texts, attachments = expectation(content)  # what B reads of the signed content
    mail.texts += texts
    mail.attachments += attachments
    return mail


def pgp_mail(signer: Signer) -> Mail:
    name = "pgp"
    if signer.gpg is None:
        return Mail(name, b"", [], [], skip="gpg is not installed (Debian package gnupg)")
    content = _signed_content("Protokollet justerat.\nAnna\n", "protokoll.pdf")
    data = content[:-2]  # the CRLF before the delimiter belongs to it
    signature = crlf(signer.pgp(data))
    boundary = "------------pgp" + hashlib.sha256(data).hexdigest()[:24]
    raw = (
        _headers(name, "PGP-signerat protokoll")
        + b"MIME-Version: 1.0\r\n"
        + b'Content-Type: multipart/signed; micalg=pgp-sha256;\r\n'
        + b' protocol="application/pgp-signature";\r\n'
        + f' boundary="{boundary}"\r\n\r\n'.encode()
        + b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n"
        + f"--{boundary}\r\n".encode() + data + f"\r\n--{boundary}\r\n".encode()
        + b'Content-Type: application/pgp-signature; name="OpenPGP_signature.asc"\r\n'
        + b"Content-Description: OpenPGP digital signature\r\n"
        + b'Content-Disposition: attachment; filename="OpenPGP_signature.asc"\r\n\r\n'
        + signature + f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip
    return _built(name, raw, signed="pgp")


def built_names() -> list[str]:
    return [
        "invite", "inline-images", "smime-detached", "smime-opaque", "pgp", "cc", "markdown",
        "attachments", "report",
    ]  # fmt: skip


def build_all(signer: Signer) -> dict[str, Mail]:
    """Every mail of the test, by name (corpus mails under their file names)."""
    builders: list[Callable[[], Mail]] = [
        invite_mail, inline_images_mail, lambda: smime_detached_mail(signer),
        lambda: smime_opaque_mail(signer), lambda: pgp_mail(signer), cc_mail, markdown_mail,
        attachments_mail, report_mail,
    ]  # fmt: skip
    mails = [build() for build in builders] + [corpus_mail(name) for name in corpus_names()]
    return {mail.name: mail for mail in mails}
