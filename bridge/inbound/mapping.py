"""SDK business message v3 to mail: the inbound half of PRODUCT.md's mapping table.

Pure functions without I/O. The caller resolves the addresses (the sender's reply-able
alias and display name, the mailbox of our functional address) and the Message-ID that
refToMessageId names, since only its store knows them.

Decisions:

- **From** is the sender's functional address as its alias under our SDK domain with the
  display name "<organisation> – <functional address> (SDK)", so Reply goes back through
  the bridge. **To** is the mailbox of our functional address.
- **Subject** is the label; a label that outbound cut ("…") and whose full form opens
  the text as "Ämne: …" gets its full subject back, and that line leaves the text.
  With confidentiality=true the subject starts with the secrecy prefix ("[sekretess] ")
  and the mail has `Sensitivity: Company-Confidential`; `X-SDK-Confidentiality` is
  always there (true or false), so rules in Outlook or Exchange can sort on it.
- **Ids**: `Message-ID: <messageId@sdk-domain>`; `In-Reply-To` and `References` name the
  mail that refToMessageId points at. `X-SDK-Message-ID` and `X-SDK-Conversation-ID` carry
  the SDK ids for administrators and for tracing a reply.
- **References and persons** from the recipient's attention are kept as `X-SDK-Reference`
  headers in the very form the outbound side reads ("root=extension"), as `X-SDK-Person`
  headers, and as lines at the top of the text, so a reader sees them without looking at
  headers. The sender's own reference ids become `X-SDK-Sender-Reference` headers and
  "Avsändarens referens" lines (a reply returns them; the inbox stores them for that).
- **Body**: the ContentText (several joined by a blank line) as text/plain that reads like
  the original (`bridge.sdk.markdown.plain`: no escapes, no hard-break marks), and as HTML
  of B1.3.3's Markdown subset and nothing else (`bridge.sdk.markdown.render`): raw HTML,
  links, images, code and quotes stay visible as text, so nothing in the mail can run or
  load remote content.
- **Attachments**: every ContentFile, byte for byte, with its file name (control
  characters become spaces; "bilaga-<n>" when empty) and type (application/octet-stream for a
  type with parameters or not of the form type/subtype, and for multipart/*, message/*
  and text/html). The mail is 7-bit (quoted-printable or base64 parts).
"""

import binascii
import email.policy
import html
import io
import re
import uuid
from collections.abc import Iterator, Sequence
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from bridge.outbound.mapping import ELLIPSIS, REFERENCE_HEADER, SUBJECT_PREFIX, one_line
from bridge.sdk import markdown
from bridge.sdk.message import Attention, BusinessMessage, Identifier, Reference

SECRECY_PREFIX = "[sekretess] "
CONFIDENTIALITY_HEADER = "X-SDK-Confidentiality"
PERSON_HEADER = "X-SDK-Person"
SENDER_REFERENCE_HEADER = "X-SDK-Sender-Reference"
SDK_MESSAGE_ID_HEADER = "X-SDK-Message-ID"
SDK_CONVERSATION_HEADER = "X-SDK-Conversation-ID"
_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)")
# 7bit: Swedish text goes out quoted-printable, so a server without 8BITMIME takes it
# too; 998: headers such as a long In-Reply-To stay unencoded (only RFC 2047 text folds).
_POLICY = email.policy.SMTP.clone(cte_type="7bit", max_line_length=998)
# The parts are encoded in lines of 76 characters, as RFC 2045 asks of quoted-printable and
# base64; the mail is then written with _POLICY, which only folds the headers.
_PARTS_POLICY = _POLICY.clone(max_line_length=76)
_BASE64_LINE = 57  # bytes a 76-character base64 line holds
_BASE64_CHUNK = _BASE64_LINE * 1024


def to_email(
    message: BusinessMessage,
    *,
    sender: str,
    sender_name: str,
    recipient: str,
    sdk_domain: str,
    replying_to: str | None = None,
    secrecy_prefix: str = SECRECY_PREFIX,
) -> bytes:
    """The mail for `message`, CRLF line ends, ready for any mailbox plugin.

    `sender` is the reply-able alias of the sender's functional address and
    `sender_name` its address-book name; `replying_to` the Message-ID (without angle
    brackets) of the mail that refToMessageId names, by default `<ref@sdk_domain>`.
    """
    raw = "\n\n".join(t for d in message.documents for t in d.texts)
    subject, raw = _subject(message.label or "", raw)
    text = markdown.plain(raw)
    mail = EmailMessage(policy=_PARTS_POLICY)
    mail["From"] = Address(one_line(f"{sender_name} (SDK)"), addr_spec=sender)
    mail["To"] = Address(addr_spec=recipient)
    mail["Subject"] = one_line((secrecy_prefix if message.confidential else "") + subject)
    mail["Date"] = format_datetime(message.created)
    mail["Message-ID"] = f"<{message.message_id}@{sdk_domain}>"
    if message.ref_to_message_id is not None:
        parent = replying_to or f"{message.ref_to_message_id}@{sdk_domain}"
        mail["In-Reply-To"] = f"<{parent}>"
        mail["References"] = f"<{parent}>"
    if message.confidential:
        mail["Sensitivity"] = "Company-Confidential"
    mail[CONFIDENTIALITY_HEADER] = "true" if message.confidential else "false"
    mail[SDK_MESSAGE_ID_HEADER] = message.message_id
    mail[SDK_CONVERSATION_HEADER] = message.conversation_id
    attention = message.recipient.attention
    sender_attention = message.sender.attention
    sender_references = sender_attention.references if sender_attention else ()
    lines = _attention_lines(attention) + [
        f"Avsändarens referens: {_reference(reference)}" for reference in sender_references
    ]
    for reference in sender_references:
        mail[SENDER_REFERENCE_HEADER] = one_line(_identifier(reference.id))
    if attention is not None:
        for reference in attention.references:
            mail[REFERENCE_HEADER] = one_line(_identifier(reference.id))
        for person in attention.persons:
            if person.id is not None:
                mail[PERSON_HEADER] = one_line(_identifier(person.id))
    body = "\n".join(lines) + ("\n\n" if lines and text else "") + text
    mail.set_content(body or " ")
    mail.add_alternative(_html(lines, raw), subtype="html")
    files = [file for document in message.documents for file in document.files]
    placeholders: list[tuple[bytes, bytes]] = []  # (placeholder, content) in mail order
    for number, file in enumerate(files, start=1):
        maintype, subtype = _attachment_type(file.content_type)
        name = one_line("".join(c if c.isprintable() else " " for c in file.file_name))
        mail.add_attachment(
            b"", maintype=maintype, subtype=subtype, filename=name or f"bilaga-{number}"
        )
        if file.content:
            placeholder = uuid.uuid4().hex  # random: nothing else in the mail can equal it
            mail.get_payload()[-1].set_payload(placeholder)
            placeholders.append((placeholder.encode(), file.content))
    return _spliced(mail.as_bytes(policy=_POLICY), placeholders)


def _spliced(template: bytes, placeholders: list[tuple[bytes, bytes]]) -> bytes:
    """The mail with each placeholder replaced by its file's base64, made here a piece at a
    time: the email package would hold a 30 MB attachment several times over (its lines,
    their join, the generator's buffer). Each piece goes into one buffer as it is made,
    whose bytes `getvalue` hands over without copying them: pieces kept to be joined at the
    end would hold the mail twice."""
    mail, rest = io.BytesIO(), template
    for placeholder, content in placeholders:
        head, rest = rest.split(placeholder, 1)
        mail.write(head)
        for piece in _base64_lines(content):
            mail.write(piece)
    mail.write(rest)
    return mail.getvalue()


def _base64_lines(content: bytes) -> Iterator[bytes]:
    """`content` in base64 lines of 76 characters, CRLF between them (not after the last)."""
    view = memoryview(content)
    for start in range(0, len(view), _BASE64_CHUNK):
        if start:
            yield b"\r\n"
        chunk = view[start : start + _BASE64_CHUNK]
        yield b"\r\n".join(
            binascii.b2a_base64(chunk[at : at + _BASE64_LINE], newline=False)
            for at in range(0, len(chunk), _BASE64_LINE)
        )




def _attachment_type(content_type: str) -> tuple[str, str]:
    """The sender's type when it is a plain type/subtype that a mail client will only
    offer as a file; anything else (parameters, multipart/* or message/* that would need
    a structure the bytes may not have, HTML a client might render) as a neutral type."""
    match = _TYPE.fullmatch(content_type.strip().lower())
    if match is None or match[1] in ("multipart", "message") or match[0] == "text/html":
        return "application", "octet-stream"
    return match[1], match[2]


def _subject(label: str, text: str) -> tuple[str, str]:
    """The label, or the full subject when outbound cut it and put it atop the text."""
    first, _, rest = text.partition("\n\n")
    first = markdown.plain(first)
    if label.endswith(ELLIPSIS) and first.startswith(SUBJECT_PREFIX):
        full = first.removeprefix(SUBJECT_PREFIX)
        if full.startswith(label.removesuffix(ELLIPSIS).rstrip()):
            return full, rest
    return label, text


def _attention_lines(attention: Attention | None) -> list[str]:
    if attention is None:
        return []
    lines = [f"Referens: {_reference(reference)}" for reference in attention.references]
    for person in attention.persons:
        named = person.label or ""
        identified = f"{person.id.extension} ({person.id.root})" if person.id else ""
        lines.append(f"Person: {' '.join(part for part in (named, identified) if part)}")
    return lines


def _reference(reference: Reference) -> str:
    label = f"{reference.label} " if reference.label else ""
    return f"{label}{reference.id.extension} ({reference.id.root})"


def _identifier(identifier: Identifier) -> str:
    return f"{identifier.root}={identifier.extension}"


def _html(lines: Sequence[str], text: str) -> str:
    header = "".join(f"<p>{html.escape(line)}</p>\n" for line in lines)
    separator = "<hr>\n" if lines and text else ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n'
        f"{header}{separator}{markdown.render(text)}</body></html>\n"
    )
