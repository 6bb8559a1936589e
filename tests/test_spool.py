"""What is the SQLite spool's own: its journal mode and its files surviving a reopen. The
behaviours every back end shares are in test_spool_contract.py, run on SQLite too."""

import asyncio
import errno
import os
import sqlite3
import time
from pathlib import Path

import pytest
from support.spools import AT_ONCE, ENVELOPE, RECIPIENTS

from sdk_bridge.runtime.stages import Stage
from sdk_bridge.sdk.names import MESSAGE_ACTION
from sdk_bridge.spool import (
    ContentRemoved,
    InboundMail,
    InboxState,
    OwedKvittens,
    Received,
    SpoolFull,
    SQLiteSpool,
    State,
)
from sdk_bridge.spool.retention import PURGE_INTERVAL, Retention, purge
from sdk_bridge.spool.sqlite import INLINE_BYTES


def test_the_queue_is_in_wal_mode(tmp_path: Path) -> None:
    SQLiteSpool(tmp_path).accept(ENVELOPE, RECIPIENTS, b"x")
    with sqlite3.connect(tmp_path / "spool.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    message_id = spool.accept(ENVELOPE, RECIPIENTS, b"body")
    before = spool.deliveries()
    spool.close()
    reopened = SQLiteSpool(tmp_path)
    assert reopened.deliveries() == before
    assert reopened.body(message_id) == b"body"


def test_sqlite_forgets_deleted_rows_and_orphan_files(tmp_path: Path) -> None:
    """What SQLite deletes is overwritten (secure_delete) and its WAL emptied; a body no
    row names, left by a crash, goes once it is an hour old."""
    spool = SQLiteSpool(tmp_path)
    try:
        spool.hold_report("anna@kommun.se", b"Subject: kvartalsrapporten" + b"x" * 10_000)
        (tmp_path / "messages" / "lost+found").mkdir()  # not a file: left alone
        young = tmp_path / "messages" / "young.eml"
        old = tmp_path / "messages" / "old.eml"
        for orphan in (young, old):
            orphan.write_bytes(b"kvartalsrapporten")
        hours_ago = time.time() - 2 * 3600
        os.utime(old, (hours_ago, hours_ago))
        purged = spool.purge(AT_ONCE)
        assert (purged.reports, purged.orphans) == (1, 1)
        assert young.exists() and not old.exists()
        young.unlink()
        for file in tmp_path.rglob("*"):
            assert not file.is_file() or b"kvartalsrapporten" not in file.read_bytes(), file
    finally:
        spool.close()


def test_the_daemon_purges_from_the_start_until_stopped(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    message_id = spool.accept(ENVELOPE, RECIPIENTS, b"Subject: x\r\n\r\nhemligt")
    for delivery in spool.deliveries():
        spool.update(delivery.id, state=State.DELIVERED)

    def kept(message_id: str) -> bool:
        try:
            spool.body(message_id)
        except ContentRemoved:
            return False
        return True

    async def run() -> None:
        stop = asyncio.Event()
        stage = Stage("purge", lambda: purge(spool, Retention()), PURGE_INTERVAL)
        purging = asyncio.create_task(stage.run(stop))
        async with asyncio.timeout(10):
            while await asyncio.to_thread(kept, message_id):
                await asyncio.sleep(0.05)
            stop.set()
            await purging

    try:
        asyncio.run(run())
    finally:
        spool.close()


def test_mail_taken_over_smtp_is_kept_in_its_row_when_small(tmp_path: Path) -> None:
    """Mail up to INLINE_BYTES is kept in its row, whether it was handed over in memory or
    in a file (the sessions' memory was full): no file to create and fsync before the 250.
    Larger mail is a file. Every kind reads back the same, and once purged nothing of it
    is left."""
    secret = b"hemligt" * (INLINE_BYTES // 7 + 1)
    arrived_small, arrived_large = tmp_path / "small.part", tmp_path / "large.part"
    arrived_small.write_bytes(b"Subject: hemligt i fil\r\n\r\nx")
    arrived_large.write_bytes(b"Subject: stor fil\r\n\r\n" + secret)
    spool = SQLiteSpool(tmp_path / "spool")
    try:
        small = spool.accept(ENVELOPE, RECIPIENTS, b"Subject: hemligt\r\n\r\nx")
        small_file = spool.accept(ENVELOPE, RECIPIENTS, arrived_small)
        assert list((tmp_path / "spool" / "messages").iterdir()) == []
        large = spool.accept(ENVELOPE, RECIPIENTS, secret)
        large_file = spool.accept(ENVELOPE, RECIPIENTS, arrived_large)
        assert not arrived_small.exists() and not arrived_large.exists()
        assert {p.stem for p in (tmp_path / "spool" / "messages").iterdir()} == {
            large,
            large_file,
        }
        assert spool.body(small) == b"Subject: hemligt\r\n\r\nx"
        assert spool.body(small_file) == b"Subject: hemligt i fil\r\n\r\nx"
        assert spool.body(large) == secret
        assert spool.body(large_file) == b"Subject: stor fil\r\n\r\n" + secret
        for delivery in spool.deliveries():
            spool.update(delivery.id, state=State.DELIVERED)
        assert spool.purge(AT_ONCE).outbound_mails == 4
        for message_id in (small, small_file, large, large_file):
            with pytest.raises(ContentRemoved):
                spool.body(message_id)
    finally:
        spool.close()
    for file in tmp_path.rglob("*"):
        assert not file.is_file() or b"hemligt" not in file.read_bytes(), file


def test_a_spool_from_before_retention_gets_its_columns(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "spool.sqlite3") as db:
        db.execute(
            "CREATE TABLE messages (id TEXT PRIMARY KEY, received_at TEXT NOT NULL,"
            " mail_from TEXT NOT NULL, envelope TEXT NOT NULL, size INTEGER NOT NULL)"
        )
    spool = SQLiteSpool(tmp_path)
    try:
        spool.accept(ENVELOPE, RECIPIENTS, b"x")
        for delivery in spool.deliveries():
            spool.update(delivery.id, state=State.DELIVERED)
        assert spool.purge(AT_ONCE).outbound_mails == 1
    finally:
        spool.close()


def test_the_wal_is_emptied_once_no_reader_holds_it(tmp_path: Path) -> None:
    """A reader in another process (`sdk-bridge queue`, a backup) keeps the WAL from being
    emptied: the purge does not wait for it, and empties it at a later round."""
    spool = SQLiteSpool(tmp_path)
    reader = sqlite3.connect(tmp_path / "spool.sqlite3")
    try:
        spool.hold_report("anna@kommun.se", b"Subject: kvartalsrapporten" + b"x" * 10_000)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM reports").fetchone()  # a read transaction
        started = time.monotonic()
        assert spool.purge(AT_ONCE).reports == 1
        assert time.monotonic() - started < 2
        assert b"kvartalsrapporten" in (tmp_path / "spool.sqlite3-wal").read_bytes()
        reader.rollback()
        spool.purge(AT_ONCE)  # nothing to remove, the WAL still to empty
        assert (tmp_path / "spool.sqlite3-wal").stat().st_size == 0
    finally:
        reader.close()
        spool.close()


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("database or disk is full"), OSError(errno.ENOSPC, "No space")],
)
def test_a_full_disk_is_spool_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """What SMTP answers 452 4.3.1 for, whichever layer noticed the disk is full."""
    spool = SQLiteSpool(tmp_path)

    def full(*_: object) -> str:
        raise error

    monkeypatch.setattr(spool, "_accept", full)
    with pytest.raises(SpoolFull):
        spool.accept(ENVELOPE, RECIPIENTS, b"x")
    spool.close()


def test_small_contents_stay_in_their_rows_and_large_ones_are_files(tmp_path: Path) -> None:
    """What the bridge keeps on the way in and answers with is kept in its row up to
    INLINE_BYTES (no file to create and fsync), and as a file when larger; either way it
    reads back the same, and once purged nothing of it is left in the spool's files."""
    small = Received("e-small", MESSAGE_ACTION, "0203:b.se", "0203:a.se", "c", b"<litet/>")
    secret = b"hemligt" * (INLINE_BYTES // 7 + 1)
    large = Received("e-large", MESSAGE_ACTION, "0203:b.se", "0203:a.se", "c", secret)
    spool = SQLiteSpool(tmp_path)
    try:
        assert spool.store_received(small) and spool.store_received(large)
        assert len(list((tmp_path / "received").iterdir())) == 1  # the large one's
        assert {r.id: r.payload for r in spool.received()} == {
            "e-small": small.payload,
            "e-large": secret,
        }
        assert [r.id for r in spool.claim_received(max_bytes=len(secret))] == ["e-small"]
        for item, mail in ((small, b"From: b\r\n\r\nHej"), (large, b"From: b\r\n\r\n" + secret)):
            owed = OwedKvittens(f"kv-{item.id}", item.id, "0203:b.se", "c", accepted=True)
            inbound = InboundMail(
                f"sdk-{item.id}", item.id, "a.registrator", "0203:b.se", "c", f"{item.id}@a.se"
            )
            assert spool.conclude_received(
                item.id, "accepted", kvittens=(owed, b"<kvittens/>"), mail=(inbound, mail)
            )
        assert len(list((tmp_path / "inbox").iterdir())) == 1  # the large mail
        assert list((tmp_path / "kvittens").iterdir()) == []
        assert spool.inbound_mail("sdk-e-small") == b"From: b\r\n\r\nHej"
        assert spool.inbound_mail("sdk-e-large").endswith(secret)
        assert [k.id for k, data in spool.owed_kvittens() if data == b"<kvittens/>"] == [
            "kv-e-small",
            "kv-e-large",
        ]
        for sdk_id in ("sdk-e-small", "sdk-e-large"):
            spool.update_inbound(sdk_id, state=InboxState.DELIVERED)
        for kvittens_id in ("kv-e-small", "kv-e-large"):
            spool.update_kvittens(kvittens_id, state="delivered")
        purged = spool.purge(AT_ONCE)
        assert (purged.received_envelopes, purged.inbound_mails, purged.kvittens) == (2, 2, 2)
        for sdk_id in ("sdk-e-small", "sdk-e-large"):
            with pytest.raises(ContentRemoved):
                spool.inbound_mail(sdk_id)
        assert spool.received_payload("e-small") == b""
    finally:
        spool.close()
    for file in tmp_path.rglob("*"):
        assert not file.is_file() or b"hemligt" not in file.read_bytes(), file
