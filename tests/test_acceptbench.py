"""`sdk-bridge bench --smtp-source --postfix`: a small run against both, every mail kept."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sdk_bridge.lab import acceptbench

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

HAS_SMTP_SOURCE = bool(
    shutil.which("smtp-source") or shutil.which("smtp-source", path=str(acceptbench.SBIN))
)
HAS_POSTFIX = (acceptbench.SBIN / "postfix").exists()

needs_smtp_source = pytest.mark.skipif(
    not HAS_SMTP_SOURCE, reason="no smtp-source: Debian package postfix not installed"
)


@needs_smtp_source
@pytest.mark.skipif(not HAS_POSTFIX, reason="no Postfix: Debian package postfix not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="a throw-away Postfix needs root")
def test_a_small_run_against_the_bridge_and_postfix(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sdk_bridge.cli", "bench", "--smtp-source", "--postfix"]
    command += ["--messages", "50", "--concurrency", "4", "--key-size", "2048", "--json"]
    command += ["--dir", str(tmp_path)]
    postfix_directories = Path(tempfile.gettempdir()).glob("sdk-bridge-postfix-*")
    before = set(postfix_directories)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"messages", "concurrency", "payload_bytes", "smtp_source"}
    assert set(report) >= {"bridge", "postfix", "bridge_over_postfix", "goal_ratio"}
    assert (report["messages"], report["concurrency"], report["payload_bytes"]) == (50, 4, 10240)
    for server in (report["bridge"], report["postfix"]):
        assert server["msgs_per_s"] > 0 and server["wall_seconds"] > 0
        assert server["accepted"] == 50
    assert report["bridge_over_postfix"] > 0 and report["postfix"]["version"]
    # In the bridge's spool: the warm-up mail, a warm-up mail per session, and the 50.
    database = tmp_path / "sandbox" / "state" / "a" / "spool" / "spool.sqlite3"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1 + 4 + 50
    assert set(Path(tempfile.gettempdir()).glob("sdk-bridge-postfix-*")) <= before  # removed


@needs_smtp_source
def test_smtp_source_sends_what_the_bridge_takes() -> None:
    """Its arguments: one recipient, sessions that keep their connection, our addresses."""
    arguments = acceptbench.smtp_source_arguments(100, 8, 10240)
    assert arguments[arguments.index("-m") + 1] == "100"
    assert arguments[arguments.index("-s") + 1] == "8"
    assert arguments[arguments.index("-l") + 1] == "10240"
    assert arguments[arguments.index("-r") + 1] == "1" and "-d" in arguments
    assert arguments[arguments.index("-f") + 1].startswith("registrator@a.")


def test_without_smtp_source_the_error_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(acceptbench, "SBIN", tmp_path)
    with pytest.raises(acceptbench.AcceptBenchFailed, match="Debian package 'postfix'"):
        acceptbench.run(1, 1)


def test_postfix_takes_a_profile_of_one_size(capsys: pytest.CaptureFixture[str]) -> None:
    from sdk_bridge.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["bench", "--postfix", "--profile", "mixed"])
    assert exited.value.code == 2
    assert "--postfix takes --profile 10kb or 1mb" in capsys.readouterr().err


@needs_smtp_source
@pytest.mark.skipif(not HAS_POSTFIX, reason="no Postfix: Debian package postfix not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="a throw-away Postfix needs root")
def test_the_bridges_cpu_beside_postfix_relaying_to_postfix(tmp_path: Path) -> None:
    """Issue 18: one run reports each bridge's CPU per message, Postfix's on each side of a
    relay, their ratios and the SMTP accept ratio, at the top of the JSON."""
    command = [sys.executable, "-m", "sdk_bridge.cli", "bench", "--postfix", "--json"]
    command += ["--messages", "30", "--concurrency", "4", "--key-size", "2048"]
    command += ["--dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    for key in ("postfix_send_cpu_ms_per_msg", "postfix_receive_cpu_ms_per_msg"):
        assert 0 < report[key] < 100, report[key]
    for key in ("a_cpu_vs_postfix", "b_cpu_vs_postfix", "smtp_accept_vs_postfix"):
        assert report[key] > 0, report[key]
    assert report["a_cpu_vs_postfix"] == round(
        report["bridges"]["a"]["cpu_ms_per_message"] / report["postfix_send_cpu_ms_per_msg"], 2
    )
    relay = report["postfix_relay"]
    assert relay["messages"] == 30 and relay["version"] and len(relay["runs"]) == 3
    sends = sorted(run["send_cpu_ms_per_msg"] for run in relay["runs"])
    assert report["postfix_send_cpu_ms_per_msg"] == sends[1]  # the median of the three
    assert list(Path(tempfile.gettempdir()).glob("sdk-bridge-relay-*")) == []
