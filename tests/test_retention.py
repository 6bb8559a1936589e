"""Issue 16: a mail's content is kept only until it is delivered and its kvittens settled.
Two bridges started from a shell whose umask lets others read (022), on SQLite and on
PostgreSQL: once a mail has reached B's mailbox and B's kvittens A, a purge leaves no word
of its subject, text or attachment in any file either bridge wrote, nor in any row of
their databases; and every file is its owner's alone."""

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pytest
import yaml
from support import backends
from support.files import exposed
from support.sandboxed import FROM_A, TO_B

from sdk_bridge.lab.local import LocalRun

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

spool_backend = backends.spool_backend

ARRIVAL_SECONDS = 90.0


@pytest.fixture
def local(tmp_path: Path, spool_backend: backends.SpoolBackend) -> Iterator[LocalRun]:
    previous = os.umask(0o022)  # the bridges inherit it
    try:
        run = LocalRun(tmp_path, key_size=2048, poll_seconds=0.3, spools=spool_backend.spools())
        run.start()
    finally:
        os.umask(previous)
    yield run
    run.stop()


def forms(word: str) -> list[bytes]:
    """`word` as it may be stored: as it is, and base64 at each of the three alignments
    (the characters that depend on the word's bytes alone)."""
    raw = word.encode()
    found = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        found.append(encoded[4 if shift else 0 : (shift + len(raw)) // 3 * 4])
    return found


def stored_bytes(local: LocalRun) -> dict[str, bytes]:
    """Every byte the bridges wrote: each file of their state and logs, each row of their
    databases, by "label: where"."""
    found = {}
    for label, bridge in local.bridges.items():
        assert bridge.log is not None
        for file in [bridge.log, *bridge.spool.parent.rglob("*")]:
            if file.is_file():
                found[f"{label}: {file}"] = file.read_bytes()
        spool = yaml.safe_load(local.config(label).read_text())["spool"]
        if isinstance(spool, dict):
            rows = database_rows(spool["dsn"])
            found.update({f"{label}: {where}": data for where, data in rows.items()})
    return found


def database_rows(dsn: str) -> dict[str, bytes]:
    rows = {}
    with psycopg.connect(dsn) as db:
        tables = db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            for number, row in enumerate(db.execute(f"SELECT * FROM {table}", binary=True)):
                values = [v if isinstance(v, bytes) else str(v).encode() for v in row]
                rows[f"{dsn} {table} row {number}"] = b"\0".join(values)
    return rows


def holding(stored: dict[str, bytes], words: list[str]) -> list[tuple[str, str]]:
    """(word, where) for each word found in some form somewhere."""
    return [
        (word, where)
        for word in words
        for where, data in stored.items()
        if any(form in data for form in forms(word))
    ]


def test_no_word_of_a_delivered_mail_is_kept(local: LocalRun) -> None:
    token = uuid.uuid4().hex[:12]
    subject, text, attachment = f"Amne{token}", f"Brodtext{token}", f"Bilaga{token}"
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = FROM_A, TO_B, f"Beslut {subject}"
    mail.set_content("".join(f"Rad {n}: {text} gäller.\n" for n in range(20)))
    mail.add_attachment(
        "".join(f"{attachment} {n}\n" for n in range(50)).encode(),
        maintype="text",
        subtype="plain",
        filename="anteckning.txt",
    )
    words = [subject, text, attachment]
    local.send("a", FROM_A, TO_B, mail)
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while not (list((local.maildir("b") / "new").glob("*")) and local.kvittens("a")):
        assert time.monotonic() < deadline, "the mail or its kvittens did not arrive"
        time.sleep(0.2)
    assert list(local.kvittens("a").values()) == ["ACCEPTED"]
    before = holding(stored_bytes(local), words)
    for label in ("a", "b"):  # the search sees every word at both before the purge
        assert {word for word, where in before if where.startswith(f"{label}:")} == set(words)

    previous = os.umask(0o022)
    try:
        for label in ("a", "b"):
            purge = [
                sys.executable,
                "-m",
                "sdk_bridge.cli",
                "purge",
                "-c",
                str(local.config(label)),
            ]
            subprocess.run(purge, check=True, capture_output=True, timeout=60)
    finally:
        os.umask(previous)

    assert holding(stored_bytes(local), words) == []
    for bridge in local.bridges.values():
        assert exposed(bridge.spool.parent) == []
    delivered = next((local.maildir("b") / "new").iterdir()).read_bytes()
    assert subject.encode() in delivered  # the mailbox has it, of course
