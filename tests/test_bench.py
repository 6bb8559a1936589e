"""`sdk-bridge bench`: a small run end to end, its JSON complete and consistent."""

import json
import subprocess
import sys
from pathlib import Path

import dovecot
import postgres
import psycopg
from dovecot import USERS, Dovecot

dovecot_server = dovecot.dovecot_server


def test_a_small_run(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bridge.cli", "bench", "--messages", "12"]
    command += ["--concurrency", "3", "--key-size", "2048", "--json", "--dir", str(tmp_path)]
    command += ["--rate", "20"]  # 12 mails offered over 0.55 s at least
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["messages"], report["concurrency"], report["key_size"]) == (12, 3, 2048)
    assert (report["spool"], report["instances"]) == ("sqlite", 1)
    assert report["profile"] == "10kb" and report["mean_mail_bytes"] > 10_000
    assert 0 < report["end_to_end_msgs_per_s"] < report["crypto_limit_msgs_per_s"]
    assert report["offered_rate_msgs_per_s"] == 20
    assert report["sandbox_and_clients_cpu_ms_per_message"] > 0
    assert 0 < report["machine_cpu_busy_share"] <= 1
    assert 0 < report["smtp_accept_p50_ms"] <= report["smtp_accept_p99_ms"]
    assert 0 < report["accept_to_mailbox_p50_ms"] <= report["accept_to_mailbox_p99_ms"]
    assert report["bridges"].keys() == {"a", "b"}
    for label in ("a", "b"):
        usage = report["bridges"][label]
        assert usage["peak_rss_mb"] > 20 and usage["cpu_seconds"] > 0
        assert usage["processes"] >= 2  # the bridge and its crypto workers
        assert usage["cpu_ms_per_message"] > 0
    delivered = list((tmp_path / "sandbox" / "mail" / "b" / "b.registrator" / "new").iterdir())
    assert len(delivered) == 13  # and the warm-up mail


def test_a_run_into_a_running_dovecot(tmp_path: Path, dovecot_server: Dovecot) -> None:
    """--imap: B delivers into a real Dovecot's INBOX and the run watches it there."""
    url = f"imap://bob:{USERS['bob']}@127.0.0.1:{dovecot_server.imap_port}/INBOX"
    command = [sys.executable, "-m", "bridge.cli", "bench", "--messages", "6", "--imap", url]
    command += ["--concurrency", "2", "--key-size", "2048", "--json", "--dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["mailbox"] == "imap" and report["messages"] == 6
    session = dovecot_server.imap("bob")
    try:
        session.select("INBOX", readonly=True)
        _, found = session.search(None, "SUBJECT", "bench-")
        assert len(found[0].split()) >= 7  # and the warm-up mail
    finally:
        session.logout()


def test_a_bad_imap_url_is_a_usage_error() -> None:
    command = [sys.executable, "-m", "bridge.cli", "bench", "--imap", "imap://127.0.0.1/INBOX"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "user:password" in result.stderr


def test_a_run_with_two_instances_on_postgres(
    tmp_path: Path, postgres_server: postgres.PostgreSQL
) -> None:
    """--postgres --instances 2: both spools in databases made for the run (and dropped
    after it), two bridges of A sharing the sessions, each in the report."""
    command = [sys.executable, "-m", "bridge.cli", "bench", "--messages", "8", "--json"]
    command += ["--concurrency", "4", "--key-size", "2048", "--dir", str(tmp_path)]
    command += ["--postgres", postgres_server.dsn(), "--instances", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["spool"], report["instances"], report["messages"]) == ("postgres", 2, 8)
    assert report["end_to_end_msgs_per_s"] > 0
    assert report["bridges"].keys() == {"a", "a2", "b"}
    for usage in report["bridges"].values():
        assert usage["peak_rss_mb"] > 20 and usage["cpu_ms_per_message"] > 0
    delivered = list((tmp_path / "sandbox" / "mail" / "b" / "b.registrator" / "new").iterdir())
    assert len(delivered) == 10  # and a warm-up mail through each instance
    with psycopg.connect(postgres_server.dsn()) as db:
        left = db.execute("SELECT datname FROM pg_database WHERE datname LIKE 'sdk_bridge_%'")
        assert left.fetchall() == []


def test_two_instances_need_postgres() -> None:
    command = [sys.executable, "-m", "bridge.cli", "bench", "--instances", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--postgres" in result.stderr
