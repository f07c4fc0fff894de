"""benchmarks/speed.py end to end on a tiny model: every row timed beside dense, the breakdown present and sane."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402


def test_speed_writes_ratios_and_breakdown(tmp_path):
    out = tmp_path / "speed.json"
    rc = speed.main(["--vocab", "300", "--hidden", "16", "--layers", "1", "--rate", "4", "--gq-rate", "12",
                     "--num-blocks", "3", "--methods", "svd,groupreduce", "--devices", "cpu", "--repeats", "2",
                     "--rounds", "1", "--breakdown", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "svd", "groupreduce"}
    assert rows["groupreduce"]["config"]["num_blocks"] == 3
    for r in rows.values():
        parts = r["cpu_ms_parts"]
        assert set(parts) == {"encoder", "rnn", "decoder"} and all(v > 0 for v in parts.values())
        assert r["cpu_vs_dense"] > 0
    assert rows["dense"]["cpu_vs_dense"] == pytest.approx(1.0)
    assert "cpu ms decoder" in out.with_suffix(".md").read_text()


def test_speed_refuses_unknown_method(tmp_path, capsys):
    assert speed.main(["--methods", "nope", "--devices", "cpu", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
