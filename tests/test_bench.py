"""`sdk-bridge bench`: a small run end to end, its JSON complete and consistent; and a run
on two bridges already running."""

import json
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

import psycopg
import pytest
import yaml
from support import dovecot, postgres
from support.dovecot import USERS, Dovecot

from sdk_bridge.lab.local import LocalRun
from sdk_bridge.lab.running import _config_argument
from sdk_bridge.lab.sandbox.federation import FROM_A as FROM
from sdk_bridge.lab.sandbox.federation import TO_B

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

dovecot_server = dovecot.dovecot_server


def test_a_small_run(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sdk_bridge.cli", "bench", "--messages", "12"]
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
        assert 0 < usage["main_cpu_ms_per_message"] < usage["cpu_ms_per_message"]
        assert usage["idle_rss_mb"] > 20 and usage["rss_above_idle_mb"] >= 0
    delivered = list((tmp_path / "sandbox" / "mail" / "b" / "b.registrator" / "new").iterdir())
    assert len(delivered) == 13  # and the warm-up mail


def test_a_run_into_a_running_dovecot(tmp_path: Path, dovecot_server: Dovecot) -> None:
    """--imap: B delivers into a real Dovecot's INBOX and the run watches it there."""
    url = f"imap://bob:{USERS['bob']}@127.0.0.1:{dovecot_server.imap_port}/INBOX"
    command = [sys.executable, "-m", "sdk_bridge.cli", "bench", "--messages", "6", "--imap", url]
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
    command = [sys.executable, "-m", "sdk_bridge.cli", "bench", "--imap", "imap://127.0.0.1/INBOX"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "user:password" in result.stderr


def test_a_run_with_two_instances_on_postgres(
    tmp_path: Path, postgres_server: postgres.PostgreSQL
) -> None:
    """--postgres --instances 2: both spools in databases made for the run (and dropped
    after it), two bridges of A sharing the sessions, each in the report."""
    command = [sys.executable, "-m", "sdk_bridge.cli", "bench", "--messages", "8", "--json"]
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
    command = [sys.executable, "-m", "sdk_bridge.cli", "bench", "--instances", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--postgres" in result.stderr


@pytest.fixture(scope="module")
def running_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRun]:
    """Two bridges running on a sandbox, as `sdk-bridge sandbox` and two `sdk-bridge run`
    would have them, with a mail of other traffic on its way."""
    local = LocalRun(tmp_path_factory.mktemp("running"), key_size=2048, poll_seconds=0.2)
    local.start()
    try:
        other = EmailMessage()
        other["From"], other["To"], other["Subject"] = FROM, TO_B, "Ett annat ärende"
        other.set_content("Inte från bänkprovet.")
        local.send("a", FROM, TO_B, other)
        yield local
    finally:
        local.stop()


def bench_running(config_a: Path, config_b: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sdk_bridge.cli", "bench", "--running", str(config_a)]
    command += [str(config_b), "--json", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_a_run_on_running_bridges(running_pair: LocalRun) -> None:
    """--running: the bridges are found by their configurations, mail goes from A's sender
    to B's first functional address, only this run's mails are counted, both processes are
    measured, and both bridges go on running."""
    local = running_pair
    result = bench_running(local.config("a"), local.config("b"), "--messages", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["setup"], report["messages"], report["key_size"]) == ("running", 5, 2048)
    assert (report["spool"], report["instances"], report["mailbox"]) == ("sqlite", 1, "maildir")
    assert report["configs"] == {"a": str(local.config("a")), "b": str(local.config("b"))}
    assert report["sender"] == FROM
    assert report["recipient"] == "b.registrator@b.sandbox.test.sdk.a.sandbox.test"
    assert 0 < report["end_to_end_msgs_per_s"] < report["crypto_limit_msgs_per_s"]
    assert 0 < report["smtp_accept_p50_ms"] <= report["smtp_accept_p99_ms"]
    assert 0 < report["accept_to_mailbox_p50_ms"] <= report["accept_to_mailbox_p99_ms"]
    assert report["clients_cpu_ms_per_message"] > 0
    assert "sandbox_and_clients_cpu_ms_per_message" not in report
    assert report["bridges"].keys() == {"a", "b"}
    for label in ("a", "b"):
        usage = report["bridges"][label]
        assert usage["pid"] == local.bridges[label].pid
        assert usage["peak_rss_mb"] > 20 and usage["processes"] >= 2
        assert usage["cpu_ms_per_message"] > 0
        assert local.bridges[label].running()  # left running
    subjects = [
        str(BytesHeaderParser().parsebytes(path.read_bytes())["Subject"])
        for path in (local.maildir("b") / "new").iterdir()
    ]
    assert len([s for s in subjects if s.startswith(report["run_id"])]) == 6  # and a warm-up


def test_a_bridge_not_found_is_reported_not_fatal(running_pair: LocalRun) -> None:
    """B's configuration copied: no process runs with the copy, so B is measured without
    RSS and CPU, and the report says why."""
    local = running_pair
    copy = local.config("b").with_name("copy-of-b.yaml")
    copy.write_text(local.config("b").read_text())
    result = bench_running(local.config("a"), copy, "--messages", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["bridges"]["a"]["peak_rss_mb"] > 20
    b = report["bridges"]["b"]
    assert (b["pid"], b["peak_rss_mb"], b["cpu_seconds"]) == (None, None, None)
    assert "no `sdk-bridge run -c" in b["not_measured"]


def test_a_sender_network_that_needs_auth_is_a_usage_error(running_pair: LocalRun) -> None:
    local = running_pair
    settings = yaml.safe_load(local.config("a").read_text())
    settings["smtp"]["allowed_networks"] = ["10.0.0.0/8"]
    closed = local.config("a").with_name("closed-a.yaml")
    closed.write_text(yaml.safe_dump(settings))
    result = bench_running(closed, local.config("b"))
    assert result.returncode == 2
    assert "smtp.allowed_networks" in result.stderr and "127.0.0.1/32" in result.stderr


def test_a_missing_configuration_is_a_usage_error(tmp_path: Path) -> None:
    result = bench_running(tmp_path / "a.yaml", tmp_path / "b.yaml")
    assert result.returncode == 2
    assert f"{tmp_path / 'a.yaml'}: no such configuration file" in result.stderr


def test_running_takes_no_options_of_a_local_run(tmp_path: Path) -> None:
    result = bench_running(tmp_path / "a.yaml", tmp_path / "b.yaml", "--key-size", "2048")
    assert result.returncode == 2 and "--key-size is not for --running" in result.stderr


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["/usr/bin/python3", "/usr/bin/sdk-bridge", "run", "-c", "/etc/b.yaml"], "/etc/b.yaml"),
        (["python", "-m", "sdk_bridge.cli", "run", "--config=b.yaml"], "b.yaml"),
        (["python", "-m", "sdk_bridge.cli", "run", "-cb.yaml"], "b.yaml"),
        (["sdk-bridge", "check-config", "-c", "b.yaml"], None),
        (["python", "-m", "sdk_bridge.cli", "bench", "--running", "a.yaml", "b.yaml"], None),
        (["python", "-c", "from multiprocessing.spawn import spawn_main"], None),
    ],
)
def test_a_bridge_is_known_by_its_command_line(argv: list[str], found: str | None) -> None:
    assert _config_argument(argv) == found
