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


def test_speed_times_grouped_gemm_rows(tmp_path):
    out = tmp_path / "speed.json"
    rc = speed.main(["--vocab", "300", "--hidden", "16", "--layers", "1", "--rate", "4", "--gq-rate", "12",
                     "--num-blocks", "3", "--methods", "svd,groupreduce,groupreduce+q8", "--devices", "cpu",
                     "--repeats", "2", "--rounds", "2", "--breakdown", "--group-gemms", "1,2", "--out", str(out)])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dense", "svd", "groupreduce", "groupreduce[g1]", "groupreduce[g2]", "groupreduce+q8",
                         "groupreduce+q8[g1]", "groupreduce+q8[g2]"}
    assert rows["groupreduce[g2]"]["group_gemms"] == 2 and "group_gemms" not in rows["groupreduce"]
    assert all(len(r["cpu_rounds"]) == 2 and r["cpu_vs_dense"] > 0 and "cpu_ms_parts" in r for r in rows.values())
    assert rows["groupreduce[g1]"]["vocab_ratio"] == rows["groupreduce"]["vocab_ratio"]
    assert "| groupreduce[g2] |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("bad", ["0", "2,x", "-1", "1.5"])
def test_speed_refuses_bad_group_gemms(tmp_path, capsys, bad):
    out = tmp_path / "x.json"
    rc = speed.main(["--methods", "groupreduce", "--devices", "cpu", "--group-gemms", bad, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--group-gemms" in err and err.count("\n") == 1
    assert not out.exists()
