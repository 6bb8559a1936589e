"""What is the SQLite spool's own: its journal mode and its files surviving a reopen. The
behaviours every back end shares are in test_spool_contract.py, run on SQLite too."""

import sqlite3
from pathlib import Path

from test_spool_contract import ENVELOPE, RECIPIENTS

from bridge.spool import SQLiteSpool


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
