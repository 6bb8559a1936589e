"""One access point shared by three organisations, as a service provider runs one Domibus
for several: A and B run bridges whose plugin users are administrators (Domibus 5.2 lists them
every organisation's messages, whatever finalRecipient they ask for), C has no bridge.
Each bridge takes exactly its own messages; C's, retrieved without being marked
downloaded and left, all stay pending at the access point; everything the bridges
send the access point and it answers is valid against Domibus's XSDs."""

import email.policy
import time
from collections import Counter
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest
from support.domibus_xsd import Watch

from sdk_bridge.lab.local import LocalRun
from sdk_bridge.sdk.names import MESSAGE_ACTION

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

MAILS = 12  # from each bridge to each other organisation
SENDERS = {"a": "registrator@a.sandbox.test", "b": "registrator@b.sandbox.test"}


def to(sender: str, recipient: str) -> str:
    """The address of `recipient`'s registrator as `sender`'s users write it."""
    return f"registrator@{recipient}.sandbox.test.sdk.{sender}.sandbox.test"


def mail(sender: str, recipient: str, number: int) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"] = SENDERS[sender], to(sender, recipient)
    message["Subject"] = f"Delad {sender}->{recipient} {number:02d}"
    message.set_content(f"Meddelande {number} från {sender.upper()} till {recipient.upper()}.")
    return message


def subjects(local: LocalRun, label: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for sub in ("new", "cur"):
        directory = local.maildir(label) / sub
        for path in directory.iterdir() if directory.is_dir() else ():
            headers = BytesHeaderParser(policy=email.policy.default).parsebytes(path.read_bytes())
            found[str(headers["Subject"])] += 1
    return found


@pytest.mark.slow
def test_each_bridge_takes_only_its_own_from_a_shared_access_point(tmp_path: Path) -> None:
    local = LocalRun(
        tmp_path,
        key_size=2048,
        organisations=3,
        shared_access_point=True,
        admin_plugin_users=True,
    )
    watch = Watch()  # every request of both bridges and every answer, against the XSDs
    local.sandbox.access_point("a").observer = watch
    local.start()
    try:
        for sender, recipients in (("a", "bc"), ("b", "ac")):
            for recipient in recipients:
                for number in range(MAILS):
                    local.send(
                        sender,
                        SENDERS[sender],
                        to(sender, recipient),
                        mail(sender, recipient, number),
                    )
        wanted = {
            label: {f"Delad {other}->{label} {n:02d}" for n in range(MAILS)}
            for label, other in (("a", "b"), ("b", "a"))
        }
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(wanted[label] <= subjects(local, label).keys() for label in "ab"):
                break
            time.sleep(0.5)
        time.sleep(2)  # anything taken that was not theirs would show now
        for label in "ab":
            found = subjects(local, label)
            assert set(found) == wanted[label], label  # exactly its own
            assert max(found.values()) == 1
        # Every message to A and B answered ACCEPTED; none to C answered at all.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            outcomes = [Counter(local.kvittens(label).values()) for label in "ab"]
            if all(o["ACCEPTED"] == MAILS for o in outcomes):
                break
            time.sleep(0.5)
        assert all(o == {"ACCEPTED": MAILS} for o in outcomes), outcomes
        shared = local.sandbox.access_point("c")
        organisation_c = local.sandbox.organisations["c"].id
        to_c = [
            e.message_id
            for e in shared.submitted(MESSAGE_ACTION)
            if e.final_recipient == organisation_c
        ]
        assert len(to_c) == 2 * MAILS
        assert sorted(shared.pending(organisation_c)) == sorted(to_c)  # all still there
        assert shared.pending() == shared.pending(organisation_c)  # and nothing else is
        for label in "ab":
            with local.spool(label) as spool:
                assert not [h for h in spool.held_received() if h["state"] == "lost"]
                # Domibus lists an administrator every organisation's messages: each bridge
                # looked at C's once, kept nothing of them and left them pending.
                states = spool.received_states(to_c)
                assert states == dict.fromkeys(to_c, "left"), label
                assert all(spool.received_payload(i) == b"" for i in to_c)
        watch.check()
    finally:
        local.stop()
