"""`sdk-bridge run` as an administrator runs it, against the sandbox: mail sent with
smtplib and swaks arrives at B's access point, SIGTERM stops it cleanly, and SIGKILL at
random moments loses nothing and sends nothing twice."""

import asyncio
import random
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import backends
from support.daemon import FROM, TO_B, Bridge, Sink, mail
from support.outbound import access_point, received_by_b
from support.waiting import eventually

from sdk_bridge.lab.local import opened_spool
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.sdk import markdown
from sdk_bridge.spool import Delivery, State

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

# Every test here runs on SQLite, then again on PostgreSQL.
spool_backend = backends.spool_backend
sandbox = backends.sandbox


@pytest.fixture
def bridge(sandbox: Sandbox) -> Iterator[Bridge]:
    running = Bridge(sandbox)
    running.start()
    yield running
    code = running.stop() if running.process is not None else 0
    running.close()
    assert code == 0


def pending_at_b(sandbox: Sandbox) -> int:
    async def count() -> int:
        ap = access_point(sandbox, "b")
        try:
            return len(await ap.pending())
        finally:
            await ap.close()

    return asyncio.run(count())


def test_mail_through_the_daemon(bridge: Bridge, sandbox: Sandbox, tmp_path: Path) -> None:
    port = bridge.smtp_port
    rich = mail("[sekretess] Åtgärd för Örebro – ärende 7")
    rich.add_attachment(
        b"%PDF-1.7\n" + bytes(range(256)) * 4000,
        maintype="application",
        subtype="pdf",
        filename="beslut åäö.pdf",
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        assert smtp.send_message(mail("Via smtplib"), FROM, [TO_B]) == {}
        assert smtp.send_message(rich, FROM, [TO_B]) == {}
    if shutil.which("swaks"):
        result = subprocess.run(
            [
                "swaks",
                "--server",
                f"127.0.0.1:{port}",
                "--from",
                FROM,
                "--to",
                TO_B,
                "--header",
                "Subject: Via swaks",
                "--body",
                "Hej från swaks",
                "--silent",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    expected = 3 if shutil.which("swaks") else 2
    eventually(lambda: pending_at_b(sandbox) >= expected)
    by_label = {m.label: m for m in received_by_b(sandbox, tmp_path / "cache-b")}
    assert set(by_label) == {"Via smtplib", "Åtgärd för Örebro – ärende 7", "Via swaks"} - (
        set() if shutil.which("swaks") else {"Via swaks"}
    )
    secret = by_label["Åtgärd för Örebro – ärende 7"]
    assert secret.confidential
    assert secret.sender.attention.functional_address == "a.registrator"
    (document,) = secret.documents
    (text,) = document.texts  # B1.3.3 Markdown that renders as written
    assert markdown.plain(text) == "Innehåll för [sekretess] Åtgärd för Örebro – ärende 7."
    (pdf,) = document.files
    assert (pdf.file_name, pdf.content_type) == ("beslut åäö.pdf", "application/pdf")
    assert pdf.content == b"%PDF-1.7\n" + bytes(range(256)) * 4000


def test_a_second_bridge_on_the_same_spool_directory_is_refused(bridge: Bridge) -> None:
    """Two bridges on one directory would discard each other's arriving mail and, on a
    shared database, take each other's work under one name."""
    command = [sys.executable, "-m", "sdk_bridge.cli", "run", "-c", str(bridge.config)]
    second = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert "another sdk-bridge runs on the spool directory" in second.stderr
    assert bridge.process is not None and bridge.process.poll() is None  # the first goes on


def test_sigkill_at_random_moments_loses_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """200 messages from a sender that retries like an MTA, while the bridge is killed 5
    times at random moments (mid-dialogue, mid-store, mid-submission). Every message that
    got 250 reaches B's access point, and every SDK message the spool holds is stored there
    exactly once."""

    def spooled() -> list:
        with opened_spool(sandbox.config_path("a")) as spool:
            return spool.deliveries()

    earlier = {d.sdk_message_id for d in spooled()}  # from the other tests of this module
    running = Bridge(sandbox)
    running.start()
    acknowledged: list[str] = []
    done = threading.Event()

    def sender() -> None:
        for number in range(200):
            subject = f"Nummer {number:03d}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # retry until 250, as an MTA would
                try:
                    # a restarted bridge listens on a port of its own (port 0)
                    with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=30) as smtp:
                        if smtp.send_message(mail(subject), FROM, [TO_B]) == {}:
                            acknowledged.append(subject)
                            break
                except (smtplib.SMTPException, OSError):
                    time.sleep(0.1)  # the bridge is down or died mid-dialogue
        done.set()

    thread = threading.Thread(target=sender)
    thread.start()
    chance = random.Random(20261128)
    for _ in range(5):
        if done.wait(chance.uniform(0.3, 1.5)):
            break
        running.stop(signal.SIGKILL)
        running.start()
    thread.join(300)
    assert len(acknowledged) == 200
    eventually(lambda: all(d.state is State.SUBMITTED for d in spooled()), 120)
    assert running.stop() == 0
    arrived = received_by_b(sandbox, tmp_path / "cache-b")
    ids = [m.message_id for m in arrived]
    ours = [d.sdk_message_id for d in spooled() if d.sdk_message_id not in earlier]
    assert sorted(ids) == sorted(ours)  # each SDK message stored exactly once
    labels = {m.label for m in arrived}
    assert set(acknowledged) <= labels


def reporting_bridge(sandbox: Sandbox, smart_host_port: int) -> Bridge:
    """A's bridge, started, sending its delivery reports to `smart_host_port`."""
    outbound = {
        "smart_host": f"127.0.0.1:{smart_host_port}",
        "postmaster": "postmaster@a.sandbox.test",
        "poll_seconds": 0.3,
    }
    running = Bridge(sandbox, f"reports-{smart_host_port}", outbound=outbound)
    running.start()
    return running


def test_kvittens_outcomes_reach_the_sender_as_dsns(sandbox: Sandbox, tmp_path: Path) -> None:
    from email import message_from_bytes, policy

    from support.kvittens import REJECTED, send_kvittens

    from sdk_bridge.sdk.verdict import ACCEPTED

    sink = Sink()
    running = reporting_bridge(sandbox, sink.port)
    try:
        port = running.smtp_port
        sent = {}
        for subject in ("Avvisas", "Tas emot"):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.send_message(
                    mail(subject), FROM, [TO_B], rcpt_options=["NOTIFY=SUCCESS,FAILURE"]
                )
        eventually(lambda: pending_at_b(sandbox) >= 2)
        for message in received_by_b(sandbox, tmp_path / "cache-b"):
            sent[message.label] = message.message_id
        send_kvittens(sandbox, REJECTED, sent["Avvisas"])
        send_kvittens(sandbox, ACCEPTED, sent["Tas emot"])
        eventually(lambda: len(sink.messages) >= 2, 60)
    finally:
        assert running.stop() == 0
        sink.stop()
    reports = {}
    for mail_from, recipients, content in sink.messages:
        assert mail_from in ("", "<>") and recipients == [FROM]
        report = message_from_bytes(content, policy=policy.default)
        assert report.get_content_type() == "multipart/report"
        status = list(report.iter_parts())[1]
        assert status.get_content_type() == "message/delivery-status"
        text = status.as_string()
        reports[
            "5.6.0" if "Status: 5.6.0" in text else "2.0.0" if "Status: 2.0.0" in text else "?"
        ] = text
    assert "X-SDK; REJECTED BV not-supported: file type not accepted" in reports["5.6.0"]
    assert "Action: delivered" in reports["2.0.0"]


def test_a_smart_host_that_hangs_delays_no_kvittens(sandbox: Sandbox, tmp_path: Path) -> None:
    """Issue 17: the report stage alone talks to the smart host. One that takes the
    connection and never answers holds up the rejected mail's report for its timeout
    (30 s), while the next mail's ACCEPTED kvittens is retrieved and settled at once."""
    import socket

    from support.kvittens import REJECTED, send_kvittens

    from sdk_bridge.sdk.verdict import ACCEPTED

    silent = socket.create_server(("127.0.0.1", 0))  # connections queue, never answered
    running = reporting_bridge(sandbox, silent.getsockname()[1])
    config_file = running.config

    def delivery(sdk_message_id: str) -> Delivery:
        with opened_spool(config_file) as spool:
            found = spool.by_sdk_message_id(sdk_message_id)
        assert found is not None
        return found

    def send(subject: str) -> str:
        earlier = set(sent_to_b())
        with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=30) as smtp:
            smtp.send_message(mail(subject), FROM, [TO_B], rcpt_options=["NOTIFY=FAILURE"])
        eventually(lambda: set(sent_to_b()) - earlier)
        return next(
            m for m in received_by_b(sandbox, tmp_path / "b") if m.label == subject
        ).message_id

    def sent_to_b() -> list[str]:
        with opened_spool(config_file) as spool:
            return [d.sdk_message_id for d in spool.deliveries(State.SUBMITTED)]

    try:
        refused = send("Värden tiger: avvisas")
        send_kvittens(sandbox, REJECTED, refused)
        eventually(lambda: delivery(refused).state is State.FAILED)
        settled_at = time.monotonic()
        taken = send("Värden tiger: tas emot")
        send_kvittens(sandbox, ACCEPTED, taken)
        eventually(lambda: delivery(taken).state is State.DELIVERED)
        assert time.monotonic() - settled_at < 20  # the report's 30 s have not run out
        assert delivery(refused).notes.report is not None  # still on its way to the smart host
    finally:
        stopping = time.monotonic()
        code = running.stop()
        stopped_in = time.monotonic() - stopping
        silent.close()
    assert code == 0 and stopped_in < 10  # the report is dropped midway, and stays owed
    assert delivery(refused).notes.report is not None


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` now."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def test_a_killed_bridge_leaves_no_crypto_worker(sandbox: Sandbox) -> None:
    """Each worker reads its tasks from a socket whose other end only the bridge holds: the
    read returns nothing once the bridge is gone, and the worker ends instead of waiting
    for ever."""
    running = Bridge(sandbox)
    running.start()
    assert running.process is not None
    pid = running.process.pid
    with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=30) as smtp:
        smtp.send_message(mail("Startar arbetarna"), FROM, [TO_B])
    eventually(lambda: len(children(pid)) >= 2)
    workers = children(pid)
    running.stop(signal.SIGKILL)
    try:
        eventually(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10)
    finally:
        running.close()
