"""Faults injected through the sandbox's switches while two real bridges run: the access
point refusing (for a while, and for longer than a mail's lifetime), the address book and
SMP down (served from cache), the SMP handing out a tampered document, and the spools on
full file systems (a 8 MB tmpfs each; skipped where mount is not allowed). Each mail ends in
the receiver's Maildir exactly once or comes back to its sender as a DSN; what SMTP refused
with a 4xx was never counted as accepted.

Both bridges hand their DSNs to a smart host in this process, and give up and warn early
(A: lifetime 18 s, both: delay warning 7.2 s), so outcomes show within the test's time.
Dovecot stopped and started again is covered with a real Dovecot in
tests/test_e2e.py::test_mail_waits_while_dovecot_is_down_and_arrives_once.

A disk filling up in the middle of DATA keeps the SMTP dialogue in step (452 4.3.1 after the
final dot), and a receiving spool too full for the envelope it just retrieved holds it in
memory until there is room.

The module runs on SQLite, then again on PostgreSQL. There a mail too large to hold in
memory while it arrives is written to the spool directory, so A's full file system is
tested alike with such mail;
but what B retrieves goes into the database, whose disk is not the bridge's, so the
receiving-spool case is SQLite's alone. So is the refusing access point: its 37 s are the
lifetimes it waits out, not the spool, and the spool's part in it (retries, the notes of
the DSNs owed, a bounce) runs on PostgreSQL in tests/test_daemon.py and tests/test_queue.py.
"""

import email.policy
import errno
import json
import os
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from support import backends
from support.sandboxed import FROM_A, FROM_B
from support.waiting import eventually

from sdk_bridge.ingress.arriving import PER_MESSAGE
from sdk_bridge.lab.local import LocalRun
from sdk_bridge.lab.sandbox.federation import HOST
from sdk_bridge.lab.sandbox.ports import free_tcp_port
from sdk_bridge.sdk.names import KVITTENS_ACTION
from sdk_bridge_plugins.postgres_spool import PostgresSpool

pytestmark = pytest.mark.slow
spool_backend = backends.bridge_setup

TO_B = "registrator@b.sandbox.test.sdk.a.sandbox.test"  # B's registrator, as A's users write it
TO_A = "registrator@a.sandbox.test.sdk.b.sandbox.test"
POLL_SECONDS = 0.2
A_LIFETIME_SECONDS = 18.0  # shorter than the worker's first retry (24-36 s): one retry decides
DELAY_WARNING_SECONDS = 7.2
OUTBOUND = {  # per bridge, beside poll_seconds and smart_host
    "a": {
        "lifetime_hours": A_LIFETIME_SECONDS / 3600,
        "delay_warning_hours": DELAY_WARNING_SECONDS / 3600,
    },
    "b": {"delay_warning_hours": DELAY_WARNING_SECONDS / 3600},
}
SPOOL_TMPFS = "size=8m"  # each spool's file system, to fill up


class SmartHost:
    """The organisations' own mail server, as far as DSNs go: it keeps what it is given."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self._lock:
            self._received.append((envelope.mail_from or "", list(envelope.rcpt_tos), content))
        return "250 2.0.0 OK"

    def received(self) -> list[tuple[str, list[str], bytes]]:
        with self._lock:
            return list(self._received)


@dataclass(frozen=True)
class Report:
    """One recipient block of a DSN, and the mail it is about."""

    to: str  # who was told
    about: str  # the Subject of the original mail
    action: str
    status: str
    diagnostic: str


def reports(host: SmartHost) -> list[Report]:
    """Every DSN the smart host was given, one entry per recipient it reports on."""
    found: list[Report] = []
    for mail_from, recipients, data in host.received():
        assert mail_from in ("", "<>"), "a DSN goes out with a null sender"
        message = BytesParser(policy=email.policy.default).parsebytes(data)
        assert message.get_content_type() == "multipart/report", message.get_content_type()
        _, status, returned = message.iter_parts()
        if returned.get_content_type() == "message/rfc822":
            original = returned.get_payload(0)
            assert isinstance(original, Message)
        else:
            headers = returned.get_payload(decode=True)
            assert isinstance(headers, bytes)
            original = BytesHeaderParser().parsebytes(headers)
        blocks = status.get_payload()
        assert isinstance(blocks, list)
        for block in blocks[1:]:
            assert isinstance(block, Message)
            found.append(
                Report(
                    to=recipients[0],
                    about=str(original["Subject"]),
                    action=str(block["Action"]),
                    status=str(block["Status"]),
                    diagnostic=" ".join(str(block["Diagnostic-Code"] or "").split()),
                )
            )
    return found


def about(host: SmartHost, subjects: list[str]) -> dict[str, list[Report]]:
    """The reports for each of `subjects`, in the order they came."""
    found = reports(host)
    return {s: [r for r in found if r.about == s] for s in subjects}


def fault_run(directory: Path, smart_host_port: int, backend: backends.SpoolBackend) -> LocalRun:
    """A local run whose bridges send DSNs to `smart_host_port` and give up and warn early."""
    outbound = {
        label: {"smart_host": f"{HOST}:{smart_host_port}", **settings}
        for label, settings in OUTBOUND.items()
    }
    return LocalRun(
        directory,
        key_size=2048,
        poll_seconds=POLL_SECONDS,
        outbound=outbound,
        spools=backend.spools(),
        interface=backend.interface,
    )


@dataclass
class Faulty:
    """What the tests share: one federation, so its start-up is paid once."""

    local: LocalRun
    host: SmartHost
    tmpfs: str | None  # why the spools are not on small file systems of their own, or None
    backend: str

    def require_tmpfs(self) -> None:
        if self.tmpfs is not None:
            pytest.skip(f"the spools are not on small tmpfs mounts: {self.tmpfs}")


def mount_tmpfs(directory: Path) -> str | None:
    """A small tmpfs on `directory`; the reason it could not be mounted, or None."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", SPOOL_TMPFS, "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError as e:
        return f"mount: {e}"
    return None if result.returncode == 0 else f"mount: {result.stderr.strip()}"


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, spool_backend: backends.SpoolBackend
) -> Iterator[Faulty]:
    """Sandbox, smart host and both bridges, each spool on a small tmpfs where allowed."""
    host = SmartHost()
    controller = Controller(host, hostname=HOST, port=free_tcp_port())
    controller.start()
    local = fault_run(tmp_path_factory.mktemp("faults"), controller.port, spool_backend)
    spools = [local.sandbox.directory / "state" / label / "spool" for label in ("a", "b")]
    mounted: list[Path] = []
    why_not = None
    try:
        for spool in spools:
            why_not = why_not or mount_tmpfs(spool)
            if why_not is None:
                mounted.append(spool)
        local.start()
        yield Faulty(local, host, why_not, spool_backend.name)
    finally:
        local.stop()
        controller.stop()
        for spool in mounted:
            subprocess.run(["umount", str(spool)], check=True, timeout=30)


# --- mail in and out ----------------------------------------------------------------------


def mail(subject: str, sender: str, recipient: str, body: str = "Hej.") -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, recipient, subject
    message["Message-ID"] = f"<{uuid.uuid4()}@{sender.partition('@')[2]}>"
    message.set_content(body)
    return message


def offer(local: LocalRun, label: str, message: EmailMessage) -> tuple[int, str]:
    """One SMTP attempt at `label`'s bridge: the reply that decided it (250: accepted)."""
    try:
        with smtplib.SMTP(HOST, local.bridges[label].port, timeout=30) as smtp:
            smtp.send_message(message, str(message["From"]), [str(message["To"])])
    except smtplib.SMTPRecipientsRefused as e:
        code, text = next(iter(e.recipients.values()))
        return code, text.decode()
    except smtplib.SMTPResponseException as e:
        error = e.smtp_error
        return e.smtp_code, error.decode() if isinstance(error, bytes) else error
    return 250, ""


def accepted(local: LocalRun, label: str, message: EmailMessage) -> None:
    code, text = offer(local, label, message)
    assert code == 250, f"{message['Subject']}: {code} {text}"


def in_maildir(local: LocalRun, label: str) -> Counter[str]:
    """How often each subject is in `label`'s registrator's Maildir."""
    found: Counter[str] = Counter()
    for sub in ("new", "cur"):
        directory = local.maildir(label) / sub
        for path in directory.iterdir() if directory.is_dir() else ():
            headers = BytesHeaderParser(policy=email.policy.default).parsebytes(path.read_bytes())
            found[str(headers["Subject"])] += 1
    return found


def queue(local: LocalRun, label: str) -> list[dict[str, Any]]:
    """`sdk-bridge queue list --json`: the spool as an administrator sees it."""
    command = [sys.executable, "-m", "sdk_bridge.cli", "queue", "list", "--json"]
    result = subprocess.run(
        [*command, "-c", str(local.config(label))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def outbound(local: LocalRun, label: str, message: EmailMessage) -> list[dict[str, Any]]:
    """The queue entries of one mail sent through `label`."""
    message_id = str(message["Message-ID"]).strip("<>")
    entries = queue(local, label)
    return [
        e for e in entries if e["direction"] == "out" and e["details"]["message_id"] == message_id
    ]


def kvittens(local: LocalRun, label: str, message: EmailMessage) -> list[str | None]:
    """The kvittens outcome `label`'s spool holds for each delivery of `message`."""
    message_id = str(message["Message-ID"]).strip("<>")
    with local.spool(label) as spool:
        deliveries = spool.deliveries()
    return [d.notes.kvittens for d in deliveries if d.mail_message_id == message_id]


def acknowledged(local: LocalRun, label: str, messages: list[EmailMessage], seconds: float) -> None:
    """Every one of `messages` sent through `label` is answered by a kvittens ACCEPTED."""
    eventually(
        lambda: all(kvittens(local, label, m) == ["ACCEPTED"] for m in messages),
        seconds,
        f"kvittens ACCEPTED at {label.upper()} for {[str(m['Subject']) for m in messages]}",
    )


def delivered_once(local: LocalRun, label: str, subjects: list[str], seconds: float) -> None:
    """Every one of `subjects` reaches `label`'s Maildir, and none twice."""
    eventually(
        lambda: all(in_maildir(local, label)[s] for s in subjects),
        seconds,
        f"{subjects} in {label.upper()}'s Maildir",
    )
    counts = in_maildir(local, label)
    assert {s: counts[s] for s in subjects} == dict.fromkeys(subjects, 1)


def fill(path: Path, leave: int = 0) -> None:
    """Write zeros to `path` until its file system is full, then give back `leave` bytes."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(10_000):  # 640 MB at most: far more than the tmpfs holds
            os.write(descriptor, bytes(65536))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        os.ftruncate(descriptor, max(0, os.fstat(descriptor).st_size - leave))
    else:
        raise AssertionError(f"{path}: the file system never filled up")
    finally:
        os.close(descriptor)


# --- the faults ---------------------------------------------------------------------------


def test_an_access_point_refusing_delays_mail_and_one_refusing_too_long_bounces_it(
    faulty: Faulty,
) -> None:
    """B's access point refuses for a while: B's mail waits, its sender gets a delay DSN,
    and the bridge's own retry delivers it once. A's refuses beyond A's lifetime: the mail
    never reaches the access point and comes back as a failure DSN naming the refusal."""
    local, host = faulty.local, faulty.host
    ap_a, ap_b = local.sandbox.access_points["a"], local.sandbox.access_points["b"]
    too_long = mail("AP refusing too long", FROM_A, TO_B)
    for_a_while = [mail(f"AP refusing a while {n}", FROM_B, TO_A) for n in range(3)]
    waiting = [str(m["Subject"]) for m in for_a_while]
    subjects = [str(too_long["Subject"]), *waiting]
    ap_a.refuse_submissions("unavailable")  # HTTP 503, as a proxy before a stopped Domibus
    ap_b.refuse_submissions("fault")  # Domibus's SubmitMessageFault, EBMS:0004
    try:
        accepted(local, "a", too_long)  # SMTP does not wait for the access point
        for message in for_a_while:
            accepted(local, "b", message)
        eventually(
            lambda: all(r for r in about(host, subjects).values()),
            DELAY_WARNING_SECONDS + 10,
            "a delay DSN for each",
        )
        ap_b.clear_fault_switches()  # B's access point is back; A's still refuses
        eventually(
            lambda: any(r.action == "failed" for r in about(host, subjects)[subjects[0]]),
            40,
            "A's mail bounced",
        )
        delivered_once(local, "a", waiting, 40)
    finally:
        ap_a.clear_fault_switches()
        ap_b.clear_fault_switches()

    told = about(host, subjects)
    for subject in waiting:
        assert [(r.to, r.action, r.status) for r in told[subject]] == [(FROM_B, "delayed", "4.4.1")]
        assert "refusing submissions" in told[subject][0].diagnostic
        [entry] = outbound(local, "b", next(m for m in for_a_while if m["Subject"] == subject))
        assert entry["state"] in ("submitted", "delivered") and entry["attempts"] >= 2
    delay, failure = told[subjects[0]]
    assert (delay.to, delay.action, delay.status) == (FROM_A, "delayed", "4.4.1")
    assert (failure.to, failure.action, failure.status) == (FROM_A, "failed", "5.4.7")
    assert "503" in failure.diagnostic
    [entry] = outbound(local, "a", too_long)
    assert entry["state"] == "failed"
    assert ap_a.status(entry["sdk_message_id"]) == "NOT_FOUND"  # never got through
    assert in_maildir(local, "b")[subjects[0]] == 0


def test_a_kvittens_the_access_point_could_not_send_is_sent_again(faulty: Faulty) -> None:
    """B's access point takes B's kvittens, reports it on its way (SEND_ENQUEUED,
    SEND_ATTEMPT_FAILED, WAITING_FOR_RETRY), then SEND_FAILURE: B hands the same envelope
    over again under a new transport MessageId, and A's sender hears it was delivered."""
    local = faulty.local
    ap_b = local.sandbox.access_points["b"]
    message = mail("Kvittens sent again", FROM_A, TO_B)
    ap_b.intermediate_statuses()
    ap_b.fail_sends(1)  # the next submission at B's access point: B's kvittens
    try:
        accepted(local, "a", message)
        delivered_once(local, "b", [str(message["Subject"])], 60)
        [entry] = outbound(local, "a", message)
        eventually(
            lambda: local.kvittens("a").get(entry["sdk_message_id"]) == "ACCEPTED",
            60,
            "A has B's ACCEPTED",
        )
    finally:
        ap_b.clear_fault_switches()
    sent = [e.message_id for e in ap_b.submitted(KVITTENS_ACTION)]
    resent = [i for i in sent if i.endswith("-resend-1")]
    assert len(resent) == 1 and resent[0].removesuffix("-resend-1") in sent
    eventually(  # B asked through the statuses on the way until the resend was sent
        lambda: ("kvittens", "sent") not in spool_depths(local, "b"), 30, "B's kvittens followed"
    )
    assert ("kvittens", "failed") not in spool_depths(local, "b")
    assert ap_b.status(resent[0], "SENDING") == "ACKNOWLEDGED"
    assert ap_b.status(resent[0].removesuffix("-resend-1"), "SENDING") == "SEND_FAILURE"


def spool_depths(local: LocalRun, label: str) -> dict[tuple[str, str], Any]:
    with local.spool(label) as spool:
        return spool.queue_depths()


def test_the_registry_down_is_served_from_cache_and_a_tampered_smp_answer_is_not_used(
    faulty: Faulty,
) -> None:
    """With the address book and SMP down, mail flows on what the bridge cached. Restarted
    meanwhile, the bridge still knows the address book (its cache) but not the certificates
    (memory): RCPT gets 451 4.4.3, never 550, as it does while the SMP's answer does not
    verify. Once the SMP is back and honest, the same mail is accepted and delivered."""
    local, host = faulty.local, faulty.host
    book, smp = local.sandbox.address_book, local.sandbox.smp
    warm = mail("Registry warm", FROM_A, TO_B)
    cached = mail("Registry down, from cache", FROM_A, TO_B)
    late = mail("Registry down, after a restart", FROM_A, TO_B)
    no_book = mail("Registry down, no address book yet", FROM_A, TO_B)
    subjects = [str(m["Subject"]) for m in (warm, cached, late, no_book)]
    accepted(local, "a", warm)
    delivered_once(local, "b", subjects[:1], 20)
    acknowledged(local, "a", [warm], 20)  # A now knows B's certificates, and B knows A's
    book.faults.fail_with = smp.faults.fail_with = 503
    try:
        accepted(local, "a", cached)
        delivered_once(local, "b", subjects[1:2], 20)
        acknowledged(local, "a", [cached], 20)  # B's kvittens checked with what A cached

        local.kill("a")  # SIGKILL and start again: the certificates it knew are gone
        code, text = offer(local, "a", late)
        assert (code, text[:5]) == (451, "4.4.3"), text
        assert "HTTP 503" in text and "/smp" in text  # the address was found, in the cache

        smp.faults.fail_with, smp.tamper = None, True  # up again, but the document is altered
        asked = smp.requests
        code, text = offer(local, "a", late)
        assert (code, text[:5]) == (451, "4.4.3"), text
        assert "not trustworthy" in text and smp.requests > asked
        smp.tamper = False
        accepted(local, "a", late)

        forget_the_address_book(local, "a")
        local.kill("a")  # a bridge that never had the book, which is still down
        code, text = offer(local, "a", no_book)
        assert (code, text[:5]) == (451, "4.4.3"), text
        assert "address book" in text
    finally:
        book.faults.fail_with = smp.faults.fail_with = None
        smp.tamper = False
    accepted(local, "a", no_book)
    delivered_once(local, "b", subjects[2:], 20)
    acknowledged(local, "a", [late, no_book], 20)
    assert not any(about(host, subjects).values())  # nothing for the senders to hear


def forget_the_address_book(local: LocalRun, label: str) -> None:
    """As if `label`'s bridge never had the address book: its cache file, or on a shared
    spool its row in the database."""
    with local.spool(label) as spool:
        if spool.registry_cache() is None:
            (local.sandbox.directory / "state" / label / "addressbook.json").unlink()
            return
        assert isinstance(spool, PostgresSpool)
        with spool._pool.connection() as db:
            db.execute("DELETE FROM registry_cache WHERE name = 'addressbook.json'")


def test_a_full_spool_answers_4xx_keeps_nothing_and_recovers(faulty: Faulty) -> None:
    """A's spool file system full: DATA is answered with a 4xx, so the sending server keeps
    the mail; nothing half-written stays or is queued, the bridge lives on, and once there
    is room the same mail is accepted and delivered once. The mail is too large to be held
    in memory while it arrives, so it meets the full disk on PostgreSQL too (a small one
    would go straight into the database, which has room)."""
    faulty.require_tmpfs()
    local, host = faulty.local, faulty.host
    spool = local.bridges["a"].spool
    full = mail("Spool full", FROM_A, TO_B, "Ett långt brev.\n" * (PER_MESSAGE // 10))
    filler = spool / "filler"
    fill(filler)
    try:
        code, text = offer(local, "a", full)
        assert 400 <= code < 500, f"{code} {text}"
        assert local.bridges["a"].running()
        assert not list((spool / "incoming").iterdir())
    finally:
        filler.unlink()
    assert outbound(local, "a", full) == []  # nothing partial was queued
    accepted(local, "a", full)
    delivered_once(local, "b", [str(full["Subject"])], 20)
    acknowledged(local, "a", [full], 20)
    assert not any(about(host, [str(full["Subject"])]).values())


def test_a_spool_filling_up_during_data_keeps_the_smtp_dialogue_in_step(faulty: Faulty) -> None:
    """A mail larger than the write buffer meets the full disk mid-DATA: the bridge must
    read the message to its end, answer one 4xx, and then answer the next command."""
    faulty.require_tmpfs()
    local = faulty.local
    spool = local.bridges["a"].spool
    filler = spool / "filler"
    fill(filler)
    try:
        with socket.create_connection((HOST, local.bridges["a"].port), timeout=10) as connection:
            replies = connection.makefile("rb")

            def reply() -> bytes:
                for _ in range(100):
                    line = replies.readline()
                    if line[3:4] != b"-":
                        return line
                raise AssertionError("an endless reply")

            def command(line: bytes) -> bytes:
                connection.sendall(line + b"\r\n")
                return reply()

            assert reply().startswith(b"220")
            assert command(b"EHLO mail.a.sandbox.test").startswith(b"250")
            assert command(f"MAIL FROM:<{FROM_A}>".encode()).startswith(b"250")
            assert command(f"RCPT TO:<{TO_B}>".encode()).startswith(b"250")
            assert command(b"DATA").startswith(b"354")
            lines = b"".join(b"line %05d of a long mail\r\n" % n for n in range(12_000))
            assert len(lines) > PER_MESSAGE  # not held in memory: it meets the disk mid-DATA
            connection.sendall(b"Subject: Spool full mid-DATA\r\n\r\n" + lines + b".\r\n")
            assert reply().startswith(b"452 4.3.1 Insufficient system storage")
            try:
                after = command(b"NOOP")
            except OSError as e:
                after = f"connection lost: {e}".encode()
            assert after.startswith(b"250"), after
    finally:
        filler.unlink()
    assert not list((spool / "incoming").iterdir())


def test_a_receiving_spool_too_full_for_a_message_keeps_it_until_there_is_room(
    faulty: Faulty,
) -> None:
    """B's spool has room for its bookkeeping but not for a large envelope: B must not
    lose what the access point handed over (gone there under Digg's P-Mode), but keep it
    until the disk has room, then deliver it once."""
    faulty.require_tmpfs()
    if faulty.backend == "postgres":
        pytest.skip("B keeps what it retrieves in the database, whose disk is not the bridge's")
    local = faulty.local
    ap_b = local.sandbox.access_points["b"]
    big = mail("Receiving spool full", FROM_A, TO_B, body="Rad i ett stort brev.\n" * 30_000)
    filler = local.bridges["b"].spool / "filler"
    fill(filler, leave=256 * 1024)
    try:
        accepted(local, "a", big)
        [entry] = outbound(local, "a", big)
        deadline = time.monotonic() + 10  # B takes it (the fault), or rightly leaves it there
        while time.monotonic() < deadline and ap_b.status(entry["sdk_message_id"]) in (
            "NOT_FOUND",  # not submitted yet
            "RECEIVED",  # not retrieved yet
        ):
            time.sleep(0.2)
    finally:
        filler.unlink()
    delivered_once(local, "b", [str(big["Subject"])], 15)
    acknowledged(local, "a", [big], 15)
