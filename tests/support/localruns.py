"""Mail through two bridges of a LocalRun, counted in B's Maildir."""

import email.policy
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from sdk_bridge.lab.local import LocalRun
from support.sandboxed import FROM_A as FROM
from support.sandboxed import TO_B


def mail(number: int) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"] = FROM, TO_B
    message["Subject"] = f"Krasch {number:04d}"
    message["Message-ID"] = f"<crash-{number}@a.sandbox.test>"
    message.set_content(f"Meddelande {number}.")
    return message


def in_mailbox(local: LocalRun) -> list[tuple[str, str]]:
    """(subject, SDK messageId) of every mail in B's Maildir."""
    found = []
    for sub in ("new", "cur"):
        directory = local.maildir("b") / sub
        for path in directory.iterdir() if directory.is_dir() else ():
            with path.open("rb") as file:
                headers = BytesHeaderParser(policy=email.policy.default).parsebytes(file.read())
            found.append((str(headers["Subject"]), str(headers["X-SDK-Message-ID"])))
    return found


def assert_each_once(local: LocalRun, subjects: Iterable[str]) -> None:
    """B's Maildir holds a mail with each of `subjects` exactly once, and no SDK message
    twice."""
    found = in_mailbox(local)
    counted = Counter(subject for subject, _ in found)
    assert set(counted) == set(subjects)
    assert max(counted.values()) == 1, [s for s, n in counted.items() if n > 1]
    assert len({sdk_id for _, sdk_id in found}) == len(found)


def recover_lost(local: LocalRun) -> int:
    """The administrator's part: envelopes a bridge recorded as lost (messages at B,
    kvittens at A), imported from the access point's retention."""
    recovered = 0
    for label in ("a", "b"):
        with local.spool(label) as spool:
            lost = [held["id"] for held in spool.held_received() if held["state"] == "lost"]
        config = local.config(label)
        for ebms_id in lost:
            payload = local.sandbox.access_points[label].retained_payload(ebms_id)
            assert payload is not None, f"{ebms_id} is gone from the access point"
            envelope = local.directory / f"recovered-{ebms_id}.xml"
            envelope.write_bytes(payload)
            command = [
                sys.executable,
                "-m",
                "sdk_bridge.cli",
                "inbound",
                "import",
                "-c",
                str(config),
            ]
            subprocess.run([*command, "--ebms-id", ebms_id, str(envelope)], check=True, timeout=60)
            recovered += 1
    return recovered
