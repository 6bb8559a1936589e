"""The micro-benchmark runs and reports what it promises (its numbers are not judged here)."""

import json
from typing import Any

from sdk_bridge import cli
from sdk_bridge.lab.benchmark import PROFILES, format_table, run_core_benchmark


def test_core_benchmark_reports_rates_for_each_profile() -> None:
    result: dict[str, Any] = run_core_benchmark(seconds=0.05, key_size=2048)
    assert result["key_size"] == 2048
    assert result["rsa_sign_per_s"] > 0
    for name, size in PROFILES.items():
        row = result[name]
        assert row["seal_msgs_per_s"] > 0 and row["open_msgs_per_s"] > 0
        assert 0.9 * size <= row["message_bytes"] <= 1.4 * size
    assert "RSA-2048 raw signatures" in format_table(result)


def test_bench_core_command_prints_json(capsys) -> None:
    assert cli.main(["bench-core", "--seconds", "0.05", "--key-size", "2048", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"key_size", "rsa_sign_per_s", *PROFILES}
