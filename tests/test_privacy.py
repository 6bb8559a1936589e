"""Issue 16: every mail is confidential. Started by hand from a shell whose umask lets
others read (022, as README's quick start runs it), the bridges still write every file of
their spools and mailboxes for their owner alone."""

import os
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.files import exposed
from support.sandboxed import FROM_A, TO_B

from sdk_bridge.lab.local import LocalRun


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalRun]:
    previous = os.umask(0o022)  # the bridges inherit it
    try:
        run = LocalRun(tmp_path, key_size=2048, poll_seconds=0.3)
        run.start()
    finally:
        os.umask(previous)
    yield run
    run.stop()


def test_what_the_bridges_write_is_their_owners_alone(local: LocalRun) -> None:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = FROM_A, TO_B, "Hemligt"
    mail.set_content("Känsliga uppgifter.")
    local.send("a", FROM_A, TO_B, mail)
    deadline = time.monotonic() + 60
    while not list((local.maildir("b") / "new").glob("*")):
        assert time.monotonic() < deadline, "the mail did not arrive"
        time.sleep(0.2)
    for label in ("a", "b"):
        assert exposed(local.bridges[label].spool) == []
    assert exposed(local.maildir("b")) == []
