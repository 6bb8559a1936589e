"""Issue 16: a full disk loses nothing. A bridge's spool lies on a small tmpfs, filled
until less than the intake's minimum is free: it takes nothing from its access point
(which keeps the messages or kvittens), says why on /readyz, is killed in that state and
restarted; once there is room it takes everything once. Every mail arrives once, every
kvittens comes back ACCEPTED, and the sender gets no false delay or failure report."""

import contextlib
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.sandboxed import FROM_A, TO_B
from support.waiting import eventually

from sdk_bridge.lab.local import LocalRun
from sdk_bridge.lab.sandbox.federation import HOST
from sdk_bridge.spool.room import MIN_FREE_BYTES, room_needed

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

WAIT_SECONDS = 90  # for a tmpfs filled and freed, a bridge killed and restarted
MAILS = 5
TMPFS_BYTES = MIN_FREE_BYTES + 64 * 1024 * 1024


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root is needed): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def send_all(local: LocalRun) -> None:
    for number in range(MAILS):
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = FROM_A, TO_B, f"Full disk {number}"
        mail.set_content("Hej!")
        local.send("a", FROM_A, TO_B, mail)


def submitted(local: LocalRun) -> bool:
    with local.spool("a") as spool:
        return [d.state for d in spool.deliveries()] == ["submitted"] * MAILS


@pytest.mark.parametrize("full", ["a", "b"])
def test_a_full_disk_loses_nothing_and_reports_nothing_false(tmp_path: Path, full: str) -> None:
    """B full: its messages wait at its access point. A full (after its mails went out):
    the kvittens wait at A's. Either is killed while full and restarted."""
    state = tmp_path / "sandbox" / "state" / full
    with tmpfs(state, TMPFS_BYTES):
        filler = state / "filler"
        local = LocalRun(tmp_path, key_size=2048, poll_seconds=0.3)
        local.start()
        try:
            maildir = local.maildir("b") / "new"
            if full == "a":  # A must take the mails first: a full A answers 452
                local.kill("b", restart=False)  # its kvittens must not come before A is full
                send_all(local)
                eventually(lambda: submitted(local), WAIT_SECONDS)
            usage = shutil.disk_usage(state)
            filler.write_bytes(b"\0" * (usage.free - room_needed(usage.total) + 1024 * 1024))
            if full == "b":
                send_all(local)
            admin = local.bridges[full].admin_port
            eventually(lambda: "disk is nearly full" in readyz(admin)[1], WAIT_SECONDS)
            if full == "a":
                local.kill("b")  # started again: it takes the mails and answers them
                eventually(lambda: len(list(maildir.glob("*"))) == MAILS, WAIT_SECONDS)
            time.sleep(2)  # rounds of the intake: nothing may be taken
            if full == "b":
                assert not maildir.exists() or not list(maildir.glob("*"))
            else:
                assert local.kvittens("a") == {}
            local.kill(full)  # in that state; restarted at once
            filler.unlink()
            eventually(lambda: len(list(maildir.glob("*"))) == MAILS, WAIT_SECONDS)
            eventually(lambda: len(local.kvittens("a")) == MAILS, WAIT_SECONDS)
            assert set(local.kvittens("a").values()) == {"ACCEPTED"}
            for label in ("a", "b"):
                with local.spool(label) as spool:
                    assert spool.received("lost") == []
            with local.spool("a") as spool:
                notes = [d.notes for d in spool.deliveries()]
            assert not any(n.delay_reported or n.failure_reported for n in notes)
            assert readyz(admin)[0] == 200
        finally:
            local.stop()
