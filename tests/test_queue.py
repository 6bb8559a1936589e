"""`sdk-bridge queue` against a running bridge: deliveries held up at a refusing access
point are listed, shown, held, released, deleted, bounced and retried."""

import json
import smtplib
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support import backends
from support.daemon import FROM, TO_B, Bridge, mail
from support.waiting import eventually

from sdk_bridge.lab.sandbox.federation import Sandbox

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

# On SQLite, then again on PostgreSQL.
spool_backend = backends.spool_backend
sandbox = backends.sandbox


@pytest.fixture
def bridge(sandbox: Sandbox) -> Iterator[Bridge]:
    running = Bridge(sandbox)
    running.start()
    yield running
    sandbox.access_points["a"].clear_fault_switches()
    code = running.stop() if running.process is not None else 0
    running.close()
    assert code == 0


def queue(sandbox: Sandbox, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sdk_bridge.cli", "queue", arguments[0]]
    command += ["-c", str(sandbox.config_path("a")), *arguments[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def listed(sandbox: Sandbox) -> dict[str, dict]:
    return {e["id"]: e for e in json.loads(queue(sandbox, "list", "--json").stdout)}


def test_steering_the_queue(sandbox: Sandbox, bridge: Bridge) -> None:
    before = set(listed(sandbox))
    sandbox.access_points["a"].refuse_submissions(how="unavailable")
    subjects = ["Hålls", "Tas bort", "Studsar"]
    with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as smtp:
        for subject in subjects:
            smtp.send_message(mail(subject), FROM, [TO_B])

    def waiting() -> list[dict]:
        new = [e for i, e in listed(sandbox).items() if i not in before]
        return [e for e in new if e["state"] == "queued" and e["attempts"] >= 1]

    eventually(lambda: len(waiting()) == 3)
    held, deleted, bounced = sorted(waiting(), key=lambda e: int(e["id"]))

    shown = queue(sandbox, "show", held["id"]).stdout
    assert f"sdk_message_id: {held['sdk_message_id']}" in shown
    assert f"recipient: {TO_B}" in shown and f"sender: {FROM}" in shown
    assert "last_error: " in shown and "Innehåll" not in shown  # no body unless asked
    assert "Innehåll för Hålls." in queue(sandbox, "show", held["id"], "--body").stdout

    assert queue(sandbox, "hold", held["id"]).returncode == 0
    refused = queue(sandbox, "retry", held["id"])
    assert refused.returncode == 1 and "only a queued delivery" in refused.stderr
    assert queue(sandbox, "delete", deleted["id"]).returncode == 0
    assert queue(sandbox, "bounce", bounced["id"]).returncode == 0
    states = listed(sandbox)
    assert [states[e["id"]]["state"] for e in (held, deleted, bounced)] == [
        "held",
        "deleted",
        "failed",
    ]
    assert states[bounced["id"]]["last_error"] == "returned to the sender by the administrator"

    sandbox.access_points["a"].clear_fault_switches()
    assert queue(sandbox, "release", held["id"]).returncode == 0
    eventually(lambda: listed(sandbox)[held["id"]]["state"] == "submitted", 30)
    assert listed(sandbox)[deleted["id"]]["state"] == "deleted"  # never sent
    assert queue(sandbox, "retry", "--all").returncode == 0
    missing = queue(sandbox, "show", "999999")
    assert missing.returncode == 1 and "no such entry" in missing.stderr

    # Deleted, the mail is settled: a purge removes its content, and `show --body` says so.
    command = [sys.executable, "-m", "sdk_bridge.cli", "purge", "-c", str(sandbox.config_path("a"))]
    purged = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert purged.returncode == 0 and "outbound_mails" in json.loads(purged.stdout)
    gone = queue(sandbox, "show", deleted["id"], "--body")
    assert gone.returncode == 1 and "its content was removed at" in gone.stderr
    assert "Innehåll för Hålls." in queue(sandbox, "show", held["id"], "--body").stdout
