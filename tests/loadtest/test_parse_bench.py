"""loadtest/parse_bench.py runs over conf/natserver.cfg and reports every message kind
(shape only: timing figures are for BENCHMARKS.md, not for assertions)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson

from loadtest import parse_bench

ROOT = Path(__file__).resolve().parents[2]


def test_json_has_every_kind_with_positive_figures(capsys):
    assert parse_bench.main(["--count", "3", "--repeat", "1", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["count"] == 3 and doc["repeat"] == 1
    assert set(doc["route"]) == set(parse_bench.KINDS)
    for kind, row in doc["route"].items():
        assert row["label"] == parse_bench.KINDS[kind]
        assert row["bytes"] > 300
        assert row["us_per_message"] > 0 and row["messages_per_s"] > 0
    assert set(doc["parse"]) == set(parse_bench.KINDS)
    for row in doc["parse"].values():
        assert set(row) == {"scan", "scan + 5 headers", "scan + all views"}
        assert all(v > 0 for v in row.values())


def test_module_command_prints_a_row_per_message_kind():
    run = subprocess.run([sys.executable, "-m", "loadtest.parse_bench", "--count", "2",
                          "--repeat", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for label in parse_bench.KINDS.values():
        row = next((ln for ln in lines if ln.strip().startswith(label)), None)
        assert row is not None, (label, run.stdout)
        # bytes, us/message, messages/s
        assert re.search(r"\s\d+\s+\d+\.\d\s+[\d,]+$", row), row
    assert any(ln.startswith("python 3.") for ln in lines)


def test_bad_count_is_a_usage_error():
    run = subprocess.run([sys.executable, "-m", "loadtest.parse_bench", "--count", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--count" in run.stderr
