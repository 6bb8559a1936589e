"""A backlog is worked off round after round, not one batch per poll: with a poll of ten
minutes and more mail waiting than one round takes (100 retrieved, 50 judged), one
SIGUSR1 must bring every message into the mailbox, not the first batch only."""

import signal
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.sandboxed import FROM_A as FROM
from support.sandboxed import TO_B

from sdk_bridge.lab.local import LocalRun
from sdk_bridge.lab.sandbox.federation import HOST

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

MAILS = 130  # more than a round retrieves (100) and judges (50)
DEADLINE = 90.0


def test_one_fetch_works_off_the_whole_backlog(tmp_path: Path) -> None:
    local = LocalRun(
        tmp_path, key_size=2048, poll_seconds=0.2, outbound={"b": {"poll_seconds": 600}}
    )
    local.start()
    try:
        with smtplib.SMTP(HOST, local.bridges["a"].port, timeout=30) as smtp:
            for number in range(MAILS):
                mail = EmailMessage()
                mail["From"], mail["To"], mail["Subject"] = FROM, TO_B, f"Kö {number:03d}"
                mail.set_content("Ett av många meddelanden.")
                smtp.send_message(mail)
        deadline = time.monotonic() + DEADLINE
        access_point = local.sandbox.access_points["b"]
        while len(access_point.pending()) < MAILS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(access_point.pending()) == MAILS, "A did not send them all"
        process = local.bridges["b"].process
        assert process is not None
        process.send_signal(signal.SIGUSR1)  # B's one look
        new = local.maildir("b") / "new"
        while time.monotonic() < deadline:
            arrived = len(list(new.iterdir())) if new.is_dir() else 0
            if arrived == MAILS:
                break
            time.sleep(0.2)
        assert arrived == MAILS
    finally:
        local.stop()
