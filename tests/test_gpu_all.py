"""benchmarks/gpu_all.py builds command lines for other scripts; a typo there would only show on the GPU, where
every minute counts. Each stage's argv must parse under its script's own parser (nothing is run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Parsed(Exception):
    pass


def stage_args(load, smoke: bool) -> list[dict]:
    gpu_all = load("gpu_all")
    args = gpu_all.build_parser().parse_args(["--data", "DATA", "--work", "WORK", "--results", "RES",
                                              *(["--smoke"] if smoke else [])])
    return gpu_all.stages(args)


def test_baselines_option_trains_only_the_named_baselines(bench_module):
    gpu_all = bench_module("gpu_all")
    args = gpu_all.build_parser().parse_args(["--data", "D", "--work", "W", "--results", "R",
                                              "--baselines", "ptb-large,wikitext-2-medium"])
    base = gpu_all.stages(args)[0]
    runs = base["argv"][base["argv"].index("--runs") + 1:base["argv"].index("--models")]
    assert runs == ["ptb:large", "wikitext-2:medium"]
    assert [p.name for p in base["produces"]] == ["ptb-large", "wikitext-2-medium"]
    args.vocab_options = "--num-blocks 10 --rank-rule sqrt_frequency"
    vocab = next(st for st in gpu_all.stages(args) if st["name"] == "vocab_ptb_small")
    i = vocab["argv"].index("--num-blocks")
    assert vocab["argv"][i:i + 4] == ["--num-blocks", "10", "--rank-rule", "sqrt_frequency"]
    args.baselines = "ptb-huge"
    with pytest.raises(SystemExit, match="unknown baseline"):
        gpu_all.stages(args)


@pytest.mark.parametrize("smoke", [False, True])
def test_every_stage_argv_parses_under_its_script(smoke, monkeypatch, bench_module):
    stages = stage_args(bench_module, smoke)
    assert stages[0]["name"] == "baselines" and len({s["name"] for s in stages}) == len(stages)
    names = {s["name"] for s in stages}
    for s in stages:
        assert set(s["after"]) <= names, s["name"]
        if s["argv"][1] == "-m":  # a module run (pytest), not one of our scripts
            assert s["argv"][2] == "pytest" and "gpu" in s["argv"], s["name"]
            continue
        script = Path(s["argv"][1]).stem
        argv = s["argv"][2:] + (["--time-limit", "100"] if s.get("timed", True) else [])
        seen = {}

        def parse_args(self, args=None, namespace=None, _seen=seen):
            ns, extra = self.parse_known_args(args, namespace)
            _seen["ns"], _seen["extra"] = ns, extra
            raise Parsed

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        monkeypatch.setattr(sys, "argv", [s["argv"][1], *argv])
        mod = bench_module(script)
        with pytest.raises(Parsed):
            mod.main(argv) if script != "baselines" else mod.main()
        monkeypatch.undo()
        assert seen["extra"] == [], f"{s['name']}: {script}.py does not know {seen['extra']}"


def test_baseline_run_specs_carry_tying_and_graph_into_the_name_and_the_table(bench_module):
    baselines = bench_module("baselines")
    run = baselines.parse_run("ptb:medium:fp32:tied:graph", "auto")
    assert (run["precision"], run["tied"], run["graph"], run["name"]) == ("fp32", True, True, "ptb-medium-fp32-tied-graph")
    assert baselines.parse_run("ptb:medium", "bf16")["name"] == "ptb-medium"  # the old names stay
    for bad in ("ptb", "ptb:", "ptb:medium:foo", "ptb:medium:fp32:bf16", "ptb:medium:tied:tied"):
        with pytest.raises(SystemExit, match="bad run"):
            baselines.parse_run(bad, "auto")
    row = dict(corpus="ptb", preset="medium", test_ppl=80.0, valid_ppl=83.0, epochs=39, wall_s=300.0,
               train_tokens_per_s=1.0, params=10, bytes_on_disk=40, published_test_ppl=82.07)
    table = baselines.markdown({"runs": {"ptb-medium-fp32-tied-graph": {**row, "tied": True, "cuda_graph": True,
                                                                        "concurrent_runs": ["ptb-medium-fp32-tied-graph"]}}})
    peer_row = next(line for line in table.splitlines() if line.startswith("| ptb-medium-fp32-tied-graph | yes"))
    assert "| nothing | 80.00 | -1.18 | 5.0 | 0.85x |" in peer_row


def test_baselines_script_trains_variants_and_remembers_who_ran_beside(tmp_path):
    """baselines.py on the CPU, tiny preset, two steps: a tied variant gets its own model directory, and the
    runs a resumed run shared the machine with in earlier calls stay in its record."""
    import json
    import subprocess

    from test_vocab_benchmark import tiny_corpus

    data = tiny_corpus(tmp_path / "data")
    res = tmp_path / "baselines.json"
    res.write_text(json.dumps({"runs": {}, "beside": {"ptb-tiny": ["earlier-run", "ptb-tiny"]}}))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "baselines.py"), "--data", str(data), "--runs", "ptb:tiny",
           "ptb:tiny:tied", "--models", str(tmp_path / "models"), "--results", str(res), "--device", "cpu",
           "--max-steps", "2", "--time-limit", "300", "--no-verify"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = json.loads(res.read_text())["runs"]
    assert set(runs) == {"ptb-tiny", "ptb-tiny-tied"}
    assert runs["ptb-tiny-tied"]["tied"] and not runs["ptb-tiny"]["tied"]
    assert runs["ptb-tiny-tied"]["params"] < runs["ptb-tiny"]["params"]  # one vocabulary matrix fewer
    assert runs["ptb-tiny"]["concurrent_runs"] == ["earlier-run", "ptb-tiny", "ptb-tiny-tied"]
    assert json.loads(res.read_text())["beside"] == {}
    assert (tmp_path / "models" / "ptb-tiny-tied" / "manifest.json").is_file()
    # a run that fails (here: the canonical checksums, without --no-verify) is an error, not "rerun to resume"
    out = subprocess.run([c for c in cmd if c != "--no-verify"] + ["--runs", "ptb:small"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "ptb-small: FAILED" in out.stdout
