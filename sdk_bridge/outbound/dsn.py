"""Delivery status notifications (RFC 3464) for mail the bridge has answered `250` for.

What SMTP could refuse, it refused, and Exchange wrote the NDR. After `250` the bridge is
the one that must tell the sender: a delay warning, a failure (the kvittens said REJECTED,
the recipient turned out unknown, the message expired), a success when asked for, and a
follow-up when a kvittens ACCEPTED arrives after a failure DSN went out.

`build` makes the `multipart/report; report-type=delivery-status` message, which
`smarthost.send` hands to the organisation's smart host. Decisions:

- **Who is told**: `should_notify` follows RFC 3461: NEVER silences everything; without
  NOTIFY the default is FAILURE and DELAY, never SUCCESS.
- **Delivered after all** is `Action.DELIVERED` with `Report.after_failure=True`: the
  action field stays a valid RFC 3464 value ("delivered"), the wording and subject say
  "Levererat trots allt / Delivered after all". It corrects a failure DSN the sender
  already has, so it goes out when SUCCESS was asked for *or* failures were (NOTIFY
  FAILURE, or no NOTIFY); NEVER still silences it. Set the flag only when a failure DSN
  was actually sent for that recipient.
- **No loops**: no DSN to a null sender (`MAIL FROM:<>`), none about a message that is
  itself a DSN, and every DSN goes out with `MAIL FROM:<>` and `Auto-Submitted:
  auto-replied` (RFC 3834).
- **What is returned** (part 3): the original's header block only, `text/rfc822-headers`,
  whatever RET asks: a report leaves through the smart host, and a mail refused by the
  other side (content a phisher chose, or confidential text) must not travel back
  whole. RFC 3461 lets a server return less than RET=FULL asks.
- **Diagnostic-Code**: `smtp; <text>` for SMTP-style or access-point text (the default),
  `X-SDK; <code> <text>` for a kvittens reason (`DIAGNOSTIC_SDK`). Non-ASCII text becomes
  RFC 2047 encoded words there (the fields are 7-bit); the human-readable part carries it
  as UTF-8.
- **What the human text says** follows from the report: a failure with x.4.7 reads as
  expired, 5.1.x as an unknown recipient, an `X-SDK` diagnostic as a rejection by the
  receiving organisation, 5.6.x as content SDK cannot carry, 5.7.x as a security or
  permission stop, anything else as a generic failure.
- Header values that come from outside (ENVID, ORCPT, addresses, diagnostics) are put on
  one line, so nothing a sender or a receiving organisation writes can add header lines.
"""

import email.policy
import email.utils
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesHeaderParser
from enum import StrEnum
from typing import cast

from ..spool import Envelope, RecipientRecord

# email.policy.SMTP (CRLF, 8-bit allowed), but header lines of the returned original are
# written as they came instead of being re-folded.
POLICY = email.policy.SMTP.clone(refold_source="none")

DIAGNOSTIC_SMTP = "smtp"  # an SMTP reply, or the access point's error text
DIAGNOSTIC_SDK = "X-SDK"  # a kvittens reason: code and text

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_DIAGNOSTIC_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


class Action(StrEnum):
    """The RFC 3464 Action field. A "delivered after all" follow-up is DELIVERED with
    `Report.after_failure` set."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"


@dataclass(frozen=True)
class Report:
    """One recipient's outcome, as the DSN reports it."""

    address: str  # the RCPT TO address (Final-Recipient)
    action: Action
    status: str  # RFC 3463: "5.1.1", "4.4.7", "2.0.0", "5.6.0", …
    diagnostic: str = ""  # the SMTP/access point error, or the kvittens reason code and text
    diagnostic_type: str = DIAGNOSTIC_SMTP
    orcpt: str | None = None  # RFC 3461 ORCPT as stored: "rfc822;address"
    notify: tuple[str, ...] = ()  # RFC 3461 NOTIFY as given at RCPT
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None  # delays only
    after_failure: bool = False  # DELIVERED after a failure DSN was sent: a correction
    remote_mta: str | None = None  # the access point that answered, if any (Remote-MTA)

    def __post_init__(self) -> None:
        if not _STATUS.fullmatch(self.status):
            raise ValueError(f"not an RFC 3463 status code: {self.status!r}")
        allowed = {Action.FAILED: "45", Action.DELAYED: "4", Action.DELIVERED: "2"}
        if self.status[0] not in allowed[self.action]:
            raise ValueError(f"status {self.status} does not fit action {self.action}")
        if self.after_failure and self.action is not Action.DELIVERED:
            raise ValueError("only a delivery can follow up an earlier failure")
        if self.will_retry_until is not None and self.action is not Action.DELAYED:
            raise ValueError("will_retry_until belongs to delays")
        if not _DIAGNOSTIC_TYPE.fullmatch(self.diagnostic_type):
            raise ValueError(f"not a diagnostic type: {self.diagnostic_type!r}")

    @classmethod
    def for_recipient(
        cls, recipient: RecipientRecord, action: Action, status: str, **fields: object
    ) -> "Report":
        """A report for a spooled recipient: address, ORCPT and NOTIFY come from it."""
        return cls(
            address=recipient.address,
            orcpt=recipient.orcpt,
            notify=recipient.notify,
            action=action,
            status=status,
            **fields,  # type: ignore[arg-type]
        )


def should_notify(notify: tuple[str, ...], action: Action, *, after_failure: bool = False) -> bool:
    """RFC 3461 NOTIFY: NEVER → never; none given → FAILURE and DELAY; else as listed.
    A delivered-after-all follow-up also goes to whoever was told about failures."""
    values = {v.strip().upper() for item in notify for v in item.split(",") if v.strip()}
    if "NEVER" in values:
        return False
    if not values:
        values = {"FAILURE", "DELAY"}
    if action is Action.FAILED:
        return "FAILURE" in values
    if action is Action.DELAYED:
        return "DELAY" in values
    return "SUCCESS" in values or (after_failure and "FAILURE" in values)


def wanted(envelope: Envelope, reports: list[Report]) -> bool:
    """Whether `build` may have a DSN to make, known before the original is read: a sender
    to send it to, and a recipient whose NOTIFY asks for it."""
    return bool(_sender(envelope) and _chosen(reports))


def _sender(envelope: Envelope) -> str:
    return envelope.mail_from.strip().strip("<>").strip()


def _chosen(reports: list[Report]) -> list[Report]:
    return [r for r in reports if should_notify(r.notify, r.action, after_failure=r.after_failure)]


def build(
    *,
    envelope: Envelope,
    reports: list[Report],
    original: bytes,
    reporting_mta: str,
    arrival: datetime,
    from_address: str,
    now: datetime | None = None,
) -> EmailMessage | None:
    """The DSN for `reports` (one message's recipients) to the envelope sender, or None when
    none is due: a null sender, a message that is itself a DSN, or nobody asked (NOTIFY)."""
    sender = _sender(envelope)
    chosen = _chosen(reports)
    if not (sender and chosen):
        return None
    # The header block alone: the parser would turn a 30 MB body into text several times.
    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(_header_block(original))
    if _is_dsn(headers):
        return None
    now = now or datetime.now(UTC)
    subject = _one_line(str(headers.get("Subject", "")))[:200]
    policy = POLICY if sender.isascii() else POLICY.clone(utf8=True)

    dsn = EmailMessage(policy=policy)
    dsn["From"] = from_address
    dsn["To"] = sender
    _set_text(dsn, "Subject", _subject(chosen, subject))
    dsn["Date"] = email.utils.format_datetime(_aware(now))
    dsn["Message-ID"] = email.utils.make_msgid("dsn", domain=reporting_mta)
    dsn["Auto-Submitted"] = "auto-replied"
    dsn["MIME-Version"] = "1.0"
    dsn["Content-Type"] = "multipart/report; report-type=delivery-status"

    text = MIMEPart(policy=policy)
    text.set_content(
        _human_text(chosen, subject=subject, arrival=arrival, reporting_mta=reporting_mta),
        charset="utf-8",
        cte="quoted-printable",
    )
    text["Content-Language"] = "sv, en"
    _attach(dsn, text)

    status = MIMEPart(policy=policy)
    status["Content-Type"] = "message/delivery-status"
    status["Content-Description"] = "Leveransrapport / Delivery report"
    status.set_payload(
        [
            _message_fields(envelope, reporting_mta, arrival, policy),
            *(_recipient_fields(r, policy) for r in chosen),
        ]
    )
    _attach(dsn, status)

    _attach(dsn, _original_headers(original, policy=policy))
    return dsn


# --- the delivery-status part ------------------------------------------------------------


def _message_fields(
    envelope: Envelope, reporting_mta: str, arrival: datetime, policy: email.policy.Policy
) -> Message:
    block = EmailMessage(policy=policy)
    block["Reporting-MTA"] = f"dns; {_one_line(reporting_mta)}"
    if envelope.envid:
        block["Original-Envelope-Id"] = _xtext_safe(envelope.envid)
    if envelope.helo:
        block["Received-From-MTA"] = f"dns; {_xtext_safe(envelope.helo)}"
    block["Arrival-Date"] = email.utils.format_datetime(_aware(arrival))
    return block


def _recipient_fields(report: Report, policy: email.policy.Policy) -> Message:
    block = EmailMessage(policy=policy)
    if report.orcpt:
        kind, _, address = report.orcpt.partition(";")
        if not address:
            kind, address = "rfc822", kind
        block["Original-Recipient"] = _address_field(address.strip(), kind.strip().lower())
    block["Final-Recipient"] = _address_field(report.address)
    block["Action"] = str(report.action)
    block["Status"] = report.status
    if report.remote_mta:
        block["Remote-MTA"] = f"dns; {_xtext_safe(report.remote_mta)}"
    if report.diagnostic:
        _set_text(
            block, "Diagnostic-Code", _one_line(report.diagnostic), f"{report.diagnostic_type}; "
        )
    if report.last_attempt is not None:
        block["Last-Attempt-Date"] = email.utils.format_datetime(_aware(report.last_attempt))
    if report.will_retry_until is not None:
        block["Will-Retry-Until"] = email.utils.format_datetime(_aware(report.will_retry_until))
    return block


def _address_field(address: str, kind: str = "rfc822") -> str:
    """`rfc822; a@b`; an internationalised address as RFC 6533 `utf-8; …\\x{E5}…`."""
    if kind == "rfc822" and all(0x21 <= ord(c) <= 0x7E for c in address):
        return f"rfc822; {address}"
    if kind == "rfc822":
        kind = "utf-8"
    if kind == "utf-8":
        return "utf-8; " + "".join(
            c if 0x21 <= ord(c) <= 0x7E and c != "\\" else f"\\x{{{ord(c):X}}}" for c in address
        )
    return f"{_xtext_safe(kind)}; {_xtext_safe(address)}"


def _xtext_safe(value: str) -> str:
    """Printable ASCII as it is, anything else as RFC 3461 xtext `+HH` (or `+{hex}`)."""
    return "".join(
        c if 0x21 <= ord(c) <= 0x7E else f"+{ord(c):02X}" if ord(c) < 0x100 else f"+{{{ord(c):X}}}"
        for c in value
    )


def _attach(whole: EmailMessage, part: MIMEPart) -> None:
    # typeshed lets a message attach only its own class; a part is a MIMEPart, no
    # MIME-Version of its own.
    whole.attach(cast(EmailMessage, part))


# --- the original --------------------------------------------------------------------------


def _original_headers(original: bytes, *, policy: email.policy.Policy) -> MIMEPart:
    """Part 3: the original's header lines as they came (not re-folded: POLICY), CRLF."""
    part = MIMEPart(policy=policy)
    data = _crlf(_header_block(original))
    part["Content-Type"] = "text/rfc822-headers" + ("" if data.isascii() else "; charset=utf-8")
    part["Content-Transfer-Encoding"] = "7bit" if data.isascii() else "8bit"
    part.set_payload(data.decode("ascii", "surrogateescape"))
    return part


def _header_block(original: bytes) -> bytes:
    match = re.search(rb"\r?\n\r?\n", original)
    return original[: match.start()] + b"\r\n" if match else original


def _crlf(data: bytes) -> bytes:
    data = re.sub(rb"\r?\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _is_dsn(headers: Message) -> bool:
    return (
        headers.get_content_type() == "multipart/report"
        and str(headers.get_param("report-type", "")).lower() == "delivery-status"
    )


# --- the words -----------------------------------------------------------------------------


def _subject(reports: list[Report], original_subject: str) -> str:
    actions = {r.action for r in reports}
    if Action.FAILED in actions:
        words = "Olevererbart / Undeliverable"
    elif Action.DELAYED in actions:
        words = "Försenat / Delayed"
    elif all(r.after_failure for r in reports):
        words = "Levererat trots allt / Delivered after all"
    else:
        words = "Levererat / Delivered"
    return f"{words}: {original_subject}" if original_subject else words


def _human_text(
    reports: list[Report], *, subject: str, arrival: datetime, reporting_mta: str
) -> str:
    sv = [
        f"Detta är ett automatiskt meddelande från SDK-bryggan {reporting_mta}. Svara inte på det.",
        "",
        "Gäller ditt meddelande",
        f"  Ämne: {subject or '(inget ämne)'}",
        f"  Mottaget: {human_time(arrival)}",
    ]
    en = [
        f"This is an automatic message from the SDK bridge {reporting_mta}. "
        "Please do not reply to it.",
        "",
        "About your message",
        f"  Subject: {subject or '(no subject)'}",
        f"  Received: {human_time(arrival)}",
    ]
    for report in reports:
        sv_words, en_words = _explain(report, arrival)
        sv += ["", *sv_words]
        en += ["", *en_words]
    return "\n".join(["(English below)", "", *sv, "", "-" * 60, "", *en, "", "-" * 60, ""])


def _explain(report: Report, arrival: datetime) -> tuple[list[str], list[str]]:
    """What happened, for whom, why, and what the sender can do — in Swedish and English."""
    who = report.address
    orcpt = report.orcpt.partition(";")[2] if report.orcpt else ""
    if orcpt and orcpt.strip().lower() != who.lower():
        who += f" ({orcpt.strip()})"
    reason_sv = reason_en = what_sv = what_en = ""
    if report.action is Action.DELIVERED and report.after_failure:
        head_sv = f"Levererat trots allt till: {who}"
        head_en = f"Delivered after all to: {who}"
        reason_sv = (
            "Mottagande organisation bekräftade mottagandet (kvittens ACCEPTED) efter att du "
            "fått besked om att leveransen misslyckats."
        )
        reason_en = (
            "The receiving organisation confirmed receipt (kvittens ACCEPTED) after you were "
            "told that delivery had failed."
        )
        what_sv = "Bortse från det tidigare beskedet. Skicka inte meddelandet igen."
        what_en = "Please disregard the earlier notice. Do not send the message again."
    elif report.action is Action.DELIVERED:
        head_sv = f"Levererat till: {who}"
        head_en = f"Delivered to: {who}"
        reason_sv = "Mottagande organisation har bekräftat mottagandet (kvittens)."
        reason_en = "The receiving organisation has confirmed receipt (kvittens)."
        what_sv = "Du behöver inte göra något."
        what_en = "You do not need to do anything."
    elif report.action is Action.DELAYED:
        head_sv = f"Ännu inte levererat till: {who}"
        head_en = f"Not yet delivered to: {who}"
        if report.will_retry_until is not None:
            until = human_time(report.will_retry_until)
            reason_sv = f"Bryggan fortsätter att försöka till {until}."
            reason_en = f"The bridge will keep trying until {until}."
        else:
            reason_sv = "Bryggan fortsätter att försöka."
            reason_en = "The bridge will keep trying."
        what_sv = "Du behöver inte göra något nu. Går meddelandet inte fram får du ett nytt besked."
        what_en = (
            "You do not need to do anything now. If the message cannot be delivered, you "
            "will be told."
        )
    else:
        head_sv = f"Kunde inte levereras till: {who}"
        head_en = f"Could not be delivered to: {who}"
        reason_sv, reason_en, what_sv, what_en = _failure_words(report, arrival)
    sv = [head_sv]
    en = [head_en]
    if reason_sv:
        sv.append(f"  {reason_sv}")
        en.append(f"  {reason_en}")
    if report.diagnostic:
        label_sv, label_en = (
            ("Mottagarens orsak", "The recipient's reason")
            if report.diagnostic_type.upper() == DIAGNOSTIC_SDK.upper()
            else ("Felmeddelande", "Error")
        )
        sv.append(f"  {label_sv}: {_one_line(report.diagnostic)}")
        en.append(f"  {label_en}: {_one_line(report.diagnostic)}")
    sv.append(f"  Status: {report.status}")
    en.append(f"  Status: {report.status}")
    if report.last_attempt is not None:
        sv.append(f"  Senaste försök: {human_time(report.last_attempt)}")
        en.append(f"  Last attempt: {human_time(report.last_attempt)}")
    sv.append(f"  Vad du kan göra: {what_sv}")
    en.append(f"  What you can do: {what_en}")
    return sv, en


def _failure_words(report: Report, arrival: datetime) -> tuple[str, str, str, str]:
    status = report.status
    if status.endswith(".4.7"):
        since = human_time(arrival)
        return (
            f"Bryggan har försökt leverera sedan {since} utan att lyckas och har slutat försöka.",
            f"The bridge has tried to deliver since {since} without success and has given up.",
            "Skicka meddelandet igen senare. Går det fortfarande inte, kontakta er IT-avdelning "
            "eller nå mottagaren på annat sätt.",
            "Send the message again later. If it still fails, contact your IT department or "
            "reach the recipient another way.",
        )
    if status.startswith("5.1."):
        return (
            "Adressen finns inte, eller mottagaren kan inte ta emot SDK-meddelanden.",
            "The address does not exist, or the recipient cannot receive SDK messages.",
            "Kontrollera att adressen är rätt. Fråga mottagaren vilken funktionsadress som "
            "gäller och skicka sedan igen.",
            "Check that the address is right. Ask the recipient which functional address to "
            "use, then send the message again.",
        )
    if report.diagnostic_type.upper() == DIAGNOSTIC_SDK.upper():
        return (
            "Mottagande organisation tog emot meddelandet men avvisade det (kvittens REJECTED).",
            "The receiving organisation received the message but rejected it (kvittens REJECTED).",
            "Läs orsaken ovan, rätta det den gäller och skicka igen. Är orsaken oklar, "
            "kontakta mottagande organisation.",
            "Read the reason above, correct what it concerns and send again. If the reason is "
            "unclear, contact the receiving organisation.",
        )
    if status.startswith("5.6."):
        return (
            "Meddelandet kunde inte göras om till ett SDK-meddelande: innehållet eller "
            "formatet stöds inte.",
            "The message could not be turned into an SDK message: its content or format is "
            "not supported.",
            "Ta bort eller byt format på bilagor som inte stöds och skicka igen. Kontakta er "
            "IT-avdelning om du inte vet vad som är fel.",
            "Remove unsupported attachments or change their format, and send again. Contact "
            "your IT department if you do not know what is wrong.",
        )
    if status.startswith("5.7."):
        return (
            "Meddelandet stoppades av säkerhets- eller behörighetsskäl.",
            "The message was stopped for security or permission reasons.",
            "Kontakta er IT-avdelning.",
            "Contact your IT department.",
        )
    return (
        "Leveransen misslyckades.",
        "Delivery failed.",
        "Kontakta er IT-avdelning och bifoga detta meddelande.",
        "Contact your IT department and include this message.",
    )


def human_time(moment: datetime) -> str:
    """A time as the human-readable part shows it: local time with its UTC offset."""
    local = _aware(moment).astimezone()
    offset = local.strftime("%z")
    return local.strftime("%Y-%m-%d %H:%M") + f" (UTC{offset[:3]}:{offset[3:]})"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _set_text(part: Message, name: str, text: str, prefix: str = "") -> None:
    """Set a header whose text may be non-ASCII. The email package's folder (3.11) can drop
    the space between two encoded words ("räksmörgåsar på" comes back "räksmörgåsarpå"), so
    non-ASCII text is encoded here with email.header.Header, which keeps it."""
    if text.isascii() or part.policy.utf8:  # type: ignore[attr-defined]
        part[name] = prefix + text
        return
    encoded = Header(text, "utf-8", header_name=f"{name}: {prefix}").encode(linesep="\n")
    part.set_raw(name, prefix + encoded)


def _one_line(text: str) -> str:
    return " ".join(text.split())
