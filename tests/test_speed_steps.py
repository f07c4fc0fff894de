"""benchmarks/speed_steps.py: the compact-or-rebuilt table of speed.py runs, computed from their numbers."""

from __future__ import annotations

import json

import pytest


def _run(T: int, ratios: dict[str, tuple[float, float]], graph: bool = False) -> dict:
    """A speed.py --target lstm --rebuilt result at T steps per call: method -> (compact, rebuilt) vs dense."""
    rows = [{"method": "dense", "cuda_vs_dense": 1.0}]
    for suffix in ("", "[graph]") if graph else ("",):
        for m, (c, r) in ratios.items():
            rows += [{"method": m + suffix, "cuda_vs_dense": c}, {"method": f"{m}, rebuilt dense{suffix}", "cuda_vs_dense": r}]
    return {"target": "lstm", "devices": ["cuda"], "gpu": "test GPU", "rows": rows,
            "model": {"vocab": 100, "hidden": 8, "layers": 2},
            "setting": {"seq_len": T, "rate": 25.0, "batch": {"cpu": 1, "cuda": 64}, "rounds": 3, "repeats": 10}}


def test_cells_mark_the_faster_path_and_the_rule_is_checked_against_them(tmp_path, bench_module):
    mod = bench_module("speed_steps")
    (tmp_path / "t1.json").write_text(json.dumps(_run(1, {"lmf": (1.8, 0.9), "tt": (0.5, 0.7)}, graph=True)))
    (tmp_path / "t35.json").write_text(json.dumps(_run(35, {"lmf": (0.2, 0.9), "tt": (0.1, 0.8)})))
    out = tmp_path / "steps.md"
    assert mod.main([str(tmp_path / "t35.json"), str(tmp_path / "t1.json"), "--out", str(out)]) == 0
    md = out.read_text()
    assert "| method | T=1 eager (b) | T=1 graph (b) | T=35 eager (a) |" in md  # ordered by T, runs lettered
    assert "| lmf | **1.80** / 0.90 | **1.80** / 0.90 | 0.20 / **0.90** |" in md
    assert "| tt | 0.50 / **0.70** |" in md
    assert "T=1 (b): rule compact; rebuilt faster for 1 of 2 methods (agrees)" in md
    assert "T=35 (a): rule rebuilt; rebuilt faster for 2 of 2 methods (agrees)" in md
    # a run where rebuilding loses at many steps contradicts the library's rule, and the table says so
    (tmp_path / "t8.json").write_text(json.dumps(_run(8, {"lmf": (1.5, 0.9), "tt": (0.9, 0.8)})))
    assert mod.main([str(tmp_path / "t8.json"), "--out", str(out)]) == 0
    assert "T=8 (a): rule rebuilt; rebuilt faster for 0 of 2 methods (DISAGREES)" in out.read_text()


def test_runs_without_rebuilt_rows_or_cuda_are_refused(tmp_path, bench_module):
    mod = bench_module("speed_steps")
    res = _run(4, {"lmf": (1.0, 1.0)})
    res["rows"] = [r for r in res["rows"] if "rebuilt" not in r["method"]]
    (tmp_path / "x.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="no rebuilt-dense rows"):
        mod.main([str(tmp_path / "x.json"), "--out", str(tmp_path / "o.md")])
    (tmp_path / "y.json").write_text(json.dumps({**_run(4, {"lmf": (1.0, 1.0)}), "devices": ["cpu"]}))
    with pytest.raises(SystemExit, match="timed on CUDA"):
        mod.main([str(tmp_path / "y.json"), "--out", str(tmp_path / "o.md")])
    assert not (tmp_path / "o.md").exists()
