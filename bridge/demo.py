"""`sdk-bridge demo`: the whole loop on one machine, each step checked and shown.

A sandbox federation (address book, SMP/CertPub, access points) runs in this process;
organisations A and B each get a real bridge (`sdk-bridge run`, a child process). A user
at A mails B's registrator over SMTP; the demo watches the mail arrive in B's Maildir,
the ACCEPTED kvittens reach A, then answers from B as a mail client would (Reply, with
In-Reply-To) and watches the reply land in A's Maildir in the same thread. It exits 0
only when every step was seen; the directory is kept for a look around.
"""

import contextlib
import email.policy
import json
import os
import select
import signal
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TypeVar

from .sandbox.federation import DOMAIN, HOST, Sandbox

STEP_TIMEOUT = 30.0  # seconds any one step may take
START_TIMEOUT = 30.0
KEY_SIZE = 2048  # the demo's own keys: quick to make (the product takes 3072 and more)
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"

T = TypeVar("T")


class DemoFailed(Exception):
    """A step was not seen in time; the text says which."""


@dataclass
class _Bridge:
    label: str
    process: subprocess.Popen[str]
    port: int
    log: Path


def run(directory: Path | None = None, out: Callable[[str], None] = print) -> int:
    """Run the demo in `directory` (new: a temporary one); 0 when every step was seen."""
    started = time.monotonic()
    directory = (
        Path(tempfile.mkdtemp(prefix="sdk-bridge-demo-")) if directory is None else directory
    )
    out(f"sdk-bridge demo in {directory}")
    sandbox = Sandbox(directory / "sandbox", 2, key_size=KEY_SIZE)
    bridges: list[_Bridge] = []
    try:
        sandbox.start()
        out(f" 1. SDK federation (sandbox) up at {sandbox.https.url}: address book, SMP/CertPub,")
        out("    one access point for each of Sandbox kommun A and B")
        for label in ("a", "b"):
            bridges.append(_start_bridge(sandbox, label, directory))
        a, b = bridges
        out(f" 2. Bridges running: A with SMTP on {HOST}:{a.port}, B with SMTP on {HOST}:{b.port}")
        _loop(sandbox, a, b, out)
    except DemoFailed as e:
        out(f"FAILED: {e}")
        for bridge in bridges:
            out(f"    {bridge.label.upper()}'s log: {bridge.log}")
        return 1
    finally:
        for bridge in bridges:
            _stop(bridge)
        sandbox.stop()
    out(f"All steps verified in {time.monotonic() - started:.1f} s. Files: {directory}")
    return 0


def _loop(sandbox: Sandbox, a: _Bridge, b: _Bridge, out: Callable[[str], None]) -> None:
    to_b = f"registrator@b.{DOMAIN}.sdk.a.{DOMAIN}"
    from_a = f"registrator@a.{DOMAIN}"
    first = EmailMessage()
    first["From"] = f"Registrator A <{from_a}>"
    first["To"] = to_b
    first["Subject"] = "Ansökan om bygglov – Åsa Öberg"
    first["Message-ID"] = f"<demo-{os.getpid()}-{int(time.time())}@a.{DOMAIN}>"
    first["X-SDK-Reference"] = "dnr=BN 2026/117"
    first.set_content(
        "Hej!\n\nHär kommer ansökan med **ritning** bifogad.\n\nMed vänlig hälsning\nA"
    )
    first.add_attachment(PDF, maintype="application", subtype="pdf", filename="ritning.pdf")
    _send(a, from_a, to_b, first)
    out(f" 3. A user at A mailed {to_b} over SMTP: 250, queued")

    maildir_b = sandbox.maildir(sandbox.organisations["b"].addresses[0])
    path, delivered = _wait(lambda: _one_mail(maildir_b), "the mail in B's Maildir")
    sdk_id = str(delivered["X-SDK-Message-ID"])
    _expect(delivered["Subject"] == first["Subject"], "the subject arrived unchanged")
    _expect(
        any(
            p.get_filename() == "ritning.pdf" and p.get_content() == PDF
            for p in delivered.iter_attachments()
        ),
        "the PDF arrived byte for byte",
    )
    out(f" 4. B verified, decrypted and accepted SDK message {sdk_id}")
    out(f"    and delivered it to B's Maildir: {path}")
    out(f"    From: {delivered['From']}")
    out(f"    Subject: {delivered['Subject']}   ({delivered['X-SDK-Reference']})")

    _wait(lambda: _kvittens_accepted(sandbox, "a", sdk_id), "the ACCEPTED kvittens at A")
    out(f" 5. A received B's kvittens ACCEPTED for {sdk_id}; A's message is delivered")

    reply = EmailMessage()
    reply["From"] = f"Registrator B <registrator@b.{DOMAIN}>"
    reply["To"] = str(delivered["From"])
    reply["Subject"] = f"Sv: {delivered['Subject']}"
    reply["In-Reply-To"] = str(delivered["Message-ID"])
    reply["References"] = str(delivered["Message-ID"])
    reply.set_content("Tack, ansökan är mottagen och diarieförd.")
    reply_to = reply["To"].addresses[0].addr_spec
    _send(b, f"registrator@b.{DOMAIN}", reply_to, reply)
    out(f" 6. B's registrator replied from the mail client to {reply_to}")

    maildir_a = sandbox.maildir(sandbox.organisations["a"].addresses[0])
    path, answer = _wait(lambda: _one_mail(maildir_a), "the reply in A's Maildir")
    reply_id = str(answer["X-SDK-Message-ID"])
    _expect(answer["In-Reply-To"] == first["Message-ID"], "the reply threads under A's mail")
    _expect(
        answer["X-SDK-Conversation-ID"] == delivered["X-SDK-Conversation-ID"],
        "the reply continues the SDK conversation",
    )
    _expect(
        answer["X-SDK-Sender-Reference"] == first["X-SDK-Reference"],
        "the reply carries B's case reference back",
    )
    out(f" 7. A accepted the reply, SDK message {reply_id}, and delivered it: {path}")
    out(f"    In-Reply-To: {answer['In-Reply-To']} (A's original mail)")
    out(f"    same SDK conversation: {answer['X-SDK-Conversation-ID']}")
    out(f"    B's case reference came back with it: {answer['X-SDK-Sender-Reference']}")

    _wait(lambda: _kvittens_accepted(sandbox, "b", reply_id), "the ACCEPTED kvittens at B")
    out(f" 8. B received A's kvittens ACCEPTED for the reply {reply_id}")


def _start_bridge(sandbox: Sandbox, label: str, directory: Path) -> _Bridge:
    config = sandbox.directory / f"demo-{label}.yaml"
    config.write_text(sandbox.config_path(label).read_text() + "outbound:\n  poll_seconds: 0.3\n")
    log = directory / f"bridge-{label}.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    bridge = _Bridge(label, process, sandbox.smtp_port(label), log)
    assert process.stdout is not None
    # The daemon prints one line once it listens; a bridge that hangs must not hang us.
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("sdk-bridge ready"):
        process.kill()
        process.wait()
        raise DemoFailed(f"the bridge of {label.upper()} did not start (see {log})")
    return bridge


def _stop(bridge: _Bridge) -> None:
    if bridge.process.poll() is None:
        bridge.process.send_signal(signal.SIGTERM)
        try:
            bridge.process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            bridge.process.kill()
            bridge.process.wait()
    if bridge.process.stdout is not None:
        bridge.process.stdout.close()


def _send(bridge: _Bridge, sender: str, recipient: str, mail: EmailMessage) -> None:
    """Send as an MTA would: a 4xx (say, the address book still loading) is tried again."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            with smtplib.SMTP(HOST, bridge.port, timeout=STEP_TIMEOUT) as smtp:
                smtp.send_message(mail, sender, [recipient])
            return
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            if code < 500 and time.monotonic() < deadline:
                time.sleep(0.3)
                continue
            raise DemoFailed(f"{bridge.label.upper()} refused {recipient}: {code} {text!r}") from e
        except (smtplib.SMTPException, OSError) as e:
            raise DemoFailed(f"sending to {bridge.label.upper()} failed: {e}") from e


def _wait(probe: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.1)
    raise DemoFailed(f"timed out waiting for {what}")


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(f"not as expected: {what}")


def _one_mail(maildir: Path) -> tuple[Path, EmailMessage] | None:
    files = sorted((maildir / "new").glob("*")) if (maildir / "new").is_dir() else []
    if not files:
        return None
    mail = BytesParser(policy=email.policy.default).parsebytes(files[0].read_bytes())
    assert isinstance(mail, EmailMessage)
    return files[0], mail


def _kvittens_accepted(sandbox: Sandbox, label: str, sdk_message_id: str) -> bool | None:
    """Whether `label`'s spool has the delivery of `sdk_message_id` as ACCEPTED."""
    database = sandbox.directory / "state" / label / "spool" / "spool.sqlite3"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT notes FROM deliveries WHERE sdk_message_id = ?", (sdk_message_id,)
            ).fetchone()
    except sqlite3.Error:  # not created yet, or busy: look again
        return None
    if row is None or json.loads(row[0]).get("kvittens") != "ACCEPTED":
        return None
    return True
