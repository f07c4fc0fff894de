"""End to end: benchmarks/vocab.py on a made-up tiny corpus, CPU, tiny preset (slow: run with -m slow)."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def tiny_corpus(root: Path) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(200)]
    weights = [1 / (i + 1) for i in range(200)]
    (root / "ptb").mkdir(parents=True)
    for split, n in (("train", 800), ("valid", 80), ("test", 80)):
        lines = [" " + " ".join(rng.choices(words, weights, k=rng.randint(3, 10))) + " \n" for _ in range(n)]
        (root / "ptb" / f"ptb.{split}.txt").write_text("".join(lines))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_vocab_benchmark_end_to_end(tmp_path, jobs, bench_module):
    mod = bench_module("vocab")
    data = tiny_corpus(tmp_path / "data")
    res = tmp_path / "res" / "vocab.json"
    argv = ["--corpus", "ptb", "--preset", "tiny", "--data", str(data), "--no-verify", "--train-epochs", "1",
            "--device", "cpu", "--cpu-threads", "1", "--finetune-epochs", "1", "--rates", "4",
            "--gq-rates", "10", "--methods", "svd,prune,prune_agp,quantize,groupreduce,groupreduce_q,dense_retrained",
            "--work", str(tmp_path / "work"), "--results", str(res), "--jobs", str(jobs), "--finetune-dropout", "0.1"]
    threads = torch.get_num_threads()

    def run() -> int:
        if jobs == 1:
            return mod.main(argv)
        # worker processes import the script's functions by module name: run it as the script it is
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vocab.py"), *argv], cwd=ROOT).returncode

    try:
        assert run() == 0
        out = json.loads(res.read_text())
        assert len(out["runs"]) == 7 and all(r["status"] == "done" for r in out["runs"].values())
        ctrl = out["runs"]["dense_retrained@1"]  # the control: uncompressed, same retraining
        assert ctrl["vocab_ratio"] == 1.0 and ctrl["config"] is None and len(ctrl["finetune_history"]) == 2
        assert out["setup"]["finetune_dropout"] == 0.1
        for r in out["runs"].values():
            if r["method"] != "dense_retrained":
                assert r["vocab_ratio"] >= 0.95 * min(r["rate"], 4) and r["bytes_on_disk"] < out["dense"]["bytes_on_disk"]
        assert res.with_suffix(".md").exists() and res.with_suffix(".png").exists()
        # speeds are taken afterwards in the main process, next to dense (never inside parallel workers)
        for r in out["runs"].values():
            assert r["tokens_per_s"] > 0 and r["dense_tokens_per_s_beside"] > 0
            # the figures are the medians of the interleaved rounds kept beside them (exact: a tolerance on the
            # ratio of medians failed once on a loaded machine, where the median of ratios legitimately differs)
            rounds = r["speed_rounds"]
            assert len(rounds) == 3
            assert r["tokens_per_s"] == statistics.median(x["tokens_per_s"] for x in rounds)
            assert r["dense_tokens_per_s_beside"] == statistics.median(x["dense_tokens_per_s"] for x in rounds)
            assert r["speed_vs_dense"] == statistics.median(x["tokens_per_s"] / x["dense_tokens_per_s"] for x in rounds)
        mtime = res.stat().st_mtime
        assert run() == 0  # resumes: nothing redone
        assert all(json.loads(res.read_text())["runs"][k]["wall_s"] == out["runs"][k]["wall_s"] for k in out["runs"])
        assert res.stat().st_mtime >= mtime
    finally:
        torch.set_num_threads(threads)


def _result(corpus: str, dense: float, runs: list[tuple[str, float, float]]) -> dict:
    """A vocab.py result with runs (method, ratio, test ppl after)."""
    return {"setup": {"corpus": corpus, "preset": "medium", "device": "cuda", "finetune_epochs": 2},
            "dense": {"test_ppl": dense, "bytes_on_disk": 1000},
            "runs": {f"{m}@{r:g}": {"method": m, "rate": r, "vocab_ratio": r, "status": "done", "test_ppl_before": p + 5,
                                    "test_ppl_after": p, "bytes_on_disk": int(1000 / r)} for m, r, p in runs}}


def test_vocab_report_computes_each_baselines_verdicts(tmp_path, bench_module):
    mod = bench_module("vocab_report")
    a = _result("ptb", 100.0, [("groupreduce", 6.6, 100.9), ("groupreduce_q", 26.0, 103.5), ("svd", 6.6, 110.0),
                               ("prune", 6.6, 100.5)])
    b = _result("wikitext-2", 90.0, [("groupreduce", 10.0, 90.5), ("groupreduce_q", 26.0, 92.0), ("svd", 10.0, 99.0)])
    b["setup"]["finetune_lr"] = 0.01
    b["runs"]["groupreduce@10"]["config"] = {"num_blocks": 10, "rank_rule": "sqrt_frequency"}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "vocab.json"
    assert mod.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    rep = json.loads(out.read_text())["baselines"]
    va, vb = rep["ptb-medium"]["verdicts"], rep["wikitext-2-medium"]["verdicts"]
    assert va["groupreduce"]["met"] and va["groupreduce"]["best_ratio_within"] == 6.6
    assert not va["groupreduce_q"]["met"] and va["groupreduce_q"]["closest"]["delta"] == pytest.approx(0.035)
    assert va["matched_rates"]["6.6"]["better_than_all"] is False  # pruning is better there
    assert vb["groupreduce"]["met"] and vb["groupreduce_q"]["met"] and vb["matched_rates"]["10"]["better_than_all"]
    md = out.with_suffix(".md").read_text()
    assert "6.6x: NO (prune 100.50 vs GR 100.90)" in md and "NOT met (26.0x: +3.5%)" in md
    # how each file's GroupReduce was set and retrained (the recipe moved the verdicts most)
    assert "| 10 blocks, rank ~ sqrt_frequency, first rate 0.01, 2 epochs |" in md and "| first rate 0.1, 2 epochs |" in md
    assert out.with_suffix(".png").stat().st_size > 0
    assert "CAUTION" not in md
    # a baseline that retraining beats by far is not converged: the report and vocab.py's own table say so
    c = _result("ptb", 150.0, [("groupreduce", 6.6, 130.0), ("prune", 6.6, 131.0)])
    (tmp_path / "c.json").write_text(json.dumps(c))
    assert mod.main([str(tmp_path / "c.json"), "--out", str(out)]) == 0
    assert "ptb-medium (CAUTION: runs end below dense" in out.with_suffix(".md").read_text()
    vocab_mod = bench_module("vocab")
    assert "CAUTION" in vocab_mod.targets(c)[0] and not any("CAUTION" in line for line in vocab_mod.targets(a))
    # a win smaller than run-to-run noise (0.5% of dense) is flagged, a clear one is not, in both tables
    tie = _result("ptb", 100.0, [("groupreduce", 10.0, 110.00), ("prune", 10.0, 110.30), ("groupreduce", 20.0, 120.0),
                                 ("prune", 20.0, 125.0)])
    (tmp_path / "tie.json").write_text(json.dumps(tie))
    assert mod.main([str(tmp_path / "tie.json"), "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "10x: yes (vs prune, by only 0.30: within run-to-run noise)" in md and "20x: yes (vs prune) |" in md
    lines = vocab_mod.targets(tie)
    assert any("10x" in x and "better than all, by only 0.30" in x for x in lines)
    assert any("20x" in x and x.endswith("(better than all)") for x in lines)
    with pytest.raises(SystemExit, match="two results for ptb-medium"):
        mod.main([str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--out", str(out)])
    # another file of the same baseline and recipe (other rates, a fresh baseline run) is a row named by its file
    (tmp_path / "a2.json").write_text((tmp_path / "a.json").read_text())
    assert mod.main([str(tmp_path / "a.json"), str(tmp_path / "a2.json"), "--out", str(out)]) == 0
    assert "| ptb-medium (a2) | `a2.json` |" in out.with_suffix(".md").read_text()
    # a GroupReduce other than 10 blocks, rank ~ sqrt(frequency) names its settings
    probe = json.loads((tmp_path / "b.json").read_text())
    probe["runs"]["groupreduce@10"]["config"] = {"num_blocks": 10, "rank_rule": "uniform"}
    (tmp_path / "bu.json").write_text(json.dumps(probe))
    assert mod.main([str(tmp_path / "b.json"), str(tmp_path / "bu.json"), "--out", str(out)]) == 0
    assert "| wikitext-2-medium, GroupReduce 10 blocks, rank ~ uniform | `bu.json` |" in out.with_suffix(".md").read_text()
    # the same baseline retrained for another number of epochs is a second row, named by its epochs
    other = json.loads((tmp_path / "a.json").read_text())
    other["setup"]["finetune_epochs"] = 7
    (tmp_path / "a7.json").write_text(json.dumps(other))
    assert mod.main([str(tmp_path / "a.json"), str(tmp_path / "a7.json"), "--out", str(out)]) == 0
    assert "| ptb-medium, 7 retraining epochs | `a7.json` |" in out.with_suffix(".md").read_text()
    # ... and the same baseline with quantized layers packed in the balanced layout (stop 16) is a row of its own,
    # while a file whose quantized layers name no layout (written before) reads as padded
    balanced = json.loads((tmp_path / "a.json").read_text())
    balanced["runs"]["groupreduce_q@26"]["layers"] = {"encoder": {"bits": 8, "layout": "balanced"}}
    balanced["runs"]["groupreduce@6.6"]["layers"] = {"encoder": {"bits": None}}  # float GroupReduce: no layout at all
    (tmp_path / "ab.json").write_text(json.dumps(balanced))
    other["setup"]["finetune_epochs"] = balanced["setup"]["finetune_epochs"]
    other["runs"]["groupreduce_q@26"]["layers"] = {"encoder": {"bits": 8}}
    (tmp_path / "ap.json").write_text(json.dumps(other))
    assert mod.main([str(tmp_path / "ap.json"), str(tmp_path / "ab.json"), "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "| ptb-medium | `ap.json` |" in md and "| ptb-medium, balanced quantization layout | `ab.json` |" in md
    # GroupReduce + quantization's settings stand in for a file with no plain GroupReduce run
    only_q = _result("ptb", 100.0, [("groupreduce_q", 26.0, 103.0)])
    only_q["runs"]["groupreduce_q@26"]["config"] = {"num_blocks": 10, "rank_rule": "sqrt_frequency"}
    (tmp_path / "q.json").write_text(json.dumps(only_q))
    assert mod.main([str(tmp_path / "q.json"), "--out", str(out)]) == 0
    assert "| 10 blocks, rank ~ sqrt_frequency, first rate 0.1, 2 epochs |" in out.with_suffix(".md").read_text()
    (tmp_path / "bad.json").write_text("{\"runs\": {}}")
    with pytest.raises(SystemExit, match="not a vocab.py result"):
        mod.main([str(tmp_path / "bad.json"), "--out", str(out)])


@pytest.mark.parametrize("lr, says", [*((v, "--finetune-lr must be a positive number") for v in ("-1", "0", "nan", "inf")),
                                      ("0.1,abc", "numbers separated by commas"), ("0.1,0.1", "distinct rates"),
                                      ("0.1,-1", "must be a positive number")])
def test_vocab_benchmark_refuses_a_bad_retraining_rate_before_any_work(tmp_path, lr, says, capsys, bench_module):
    mod = bench_module("vocab")
    res = tmp_path / "r.json"
    assert mod.main(["--baseline", str(tmp_path / "none"), "--finetune-lr", lr, "--results", str(res),
                     "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not res.exists() and not (tmp_path / "w").exists()


def tiny_run(mod, tmp_path: Path, res: Path, *flags: str) -> int:
    """vocab.py's main on the tiny corpus (trained in-process, 1 epoch, 1 CPU thread): svd and groupreduce at 4x,
    1 retraining epoch, plus ``flags``; the caller's thread count restored."""
    data = tiny_corpus(tmp_path / "data")
    threads = torch.get_num_threads()
    try:
        return mod.main(["--corpus", "ptb", "--preset", "tiny", "--data", str(data), "--no-verify", "--train-epochs", "1",
                         "--device", "cpu", "--cpu-threads", "1", "--finetune-epochs", "1", "--rates", "4",
                         "--methods", "svd,groupreduce", "--work", str(tmp_path / "work"), "--results", str(res), *flags])
    finally:
        torch.set_num_threads(threads)


def test_several_first_rates_run_each_method_at_each_and_judge_it_at_the_one_validation_prefers(tmp_path, bench_module):
    """``--finetune-lr 1,0.001``: one run per (method, rate, first rate); verdicts, plot and report use, per
    (method, rate), the run with the best validation perplexity; the table shows every run and marks the chosen."""
    mod = bench_module("vocab")
    res = tmp_path / "vocab.json"
    assert tiny_run(mod, tmp_path, res, "--finetune-lr", "1,0.001") == 0
    out = json.loads(res.read_text())
    assert sorted(out["runs"]) == ["groupreduce@4@lr0.001", "groupreduce@4@lr1", "svd@4@lr0.001", "svd@4@lr1"]
    assert {r["finetune_lr"] for r in out["runs"].values()} == {1.0, 0.001} and out["setup"]["finetune_lr"] == [1.0, 0.001]
    chosen = mod.done_runs(out)
    assert len(chosen) == 2
    for c in chosen:
        pair = [r for r in out["runs"].values() if r["method"] == c["method"]]
        assert c["valid_ppl_after"] == min(r["valid_ppl_after"] for r in pair)
    md = res.with_suffix(".md").read_text()
    assert md.count(", chosen)") == 2 and md.count("(first rate 1") == 2 and md.count("(first rate 0.001") == 2
    # each run kept its own model directory; no retraining checkpoint is left behind
    assert {p.name for p in (tmp_path / "work" / "models").iterdir()} == set(out["runs"])
    assert not any((tmp_path / "work" / "finetune").glob("*"))
    report = bench_module("vocab_report")
    assert report.main([str(res), "--out", str(tmp_path / "report.json")]) == 0
    assert "first rate chosen on validation from 1, 0.001" in (tmp_path / "report.md").read_text()


def test_a_run_starts_only_when_the_finished_ones_say_it_can_end_in_time(bench_module):
    may_start = bench_module("vocab").may_start
    assert may_start(10_000, 0, [500.0])  # no limit
    assert may_start(0, 1000, []) and not may_start(1001, 1000, [])  # nothing finished yet: only the limit counts
    assert may_start(790, 1000, [100.0, 300.0, 210.0]) and not may_start(800, 1000, [100.0, 300.0, 210.0])  # median 210


def test_a_method_can_take_its_own_first_rates(tmp_path, bench_module, capsys):
    """``--finetune-lr-for svd=1,0.001``: svd runs at both rates, groupreduce only at ``--finetune-lr``'s; every key
    names its rate, the setup and the report record the override, and a bad override is refused in one line."""
    mod = bench_module("vocab")
    res = tmp_path / "vocab.json"
    assert tiny_run(mod, tmp_path, res, "--finetune-lr", "1", "--finetune-lr-for", "svd=1,0.001") == 0
    data = tmp_path / "data"
    threads = torch.get_num_threads()
    try:
        out = json.loads(res.read_text())
        assert sorted(out["runs"]) == ["groupreduce@4@lr1", "svd@4@lr0.001", "svd@4@lr1"]
        assert out["setup"]["finetune_lr"] == 1.0 and out["setup"]["finetune_lr_for"] == {"svd": [1.0, 0.001]}
        assert len(mod.done_runs(out)) == 2
        report = bench_module("vocab_report")
        assert report.main([str(res), "--out", str(tmp_path / "report.json")]) == 0
        assert "first rate 1; svd from 1, 0.001" in (tmp_path / "report.md").read_text()
        capsys.readouterr()
        for bad, says in (("svd", "METHOD=RATES"), ("lstm=0.1", "METHOD=RATES"), ("svd=-1", "learning rate")):
            never = tmp_path / "never.json"
            assert mod.main(["--corpus", "ptb", "--preset", "tiny", "--data", str(data), "--no-verify",
                             "--finetune-lr-for", bad, "--results", str(never), "--work", str(tmp_path / "w2")]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and says in err[0] and not never.exists() and not (tmp_path / "w2").exists()
    finally:
        torch.set_num_threads(threads)


def test_reuse_adopts_finished_runs_of_the_same_dense_model_and_refuses_another(tmp_path, bench_module, capsys):
    """``--reuse``: runs at first rate 1 made earlier join a run at 1 and 0.001 without being redone (only the
    0.001 runs train); a file whose dense model tested differently is refused in one line, nothing written."""
    mod = bench_module("vocab")
    data = tiny_corpus(tmp_path / "data")
    common = ["--corpus", "ptb", "--preset", "tiny", "--data", str(data), "--no-verify", "--train-epochs", "1",
              "--device", "cpu", "--cpu-threads", "1", "--finetune-epochs", "1", "--rates", "4", "--methods", "svd"]
    first, both = tmp_path / "lr1.json", tmp_path / "both.json"
    threads = torch.get_num_threads()
    try:
        assert mod.main([*common, "--finetune-lr", "1", "--work", str(tmp_path / "w"), "--results", str(first)]) == 0
        # the same baseline (same work dir, so the same trained dense model), a second first rate
        assert mod.main([*common, "--finetune-lr", "1,0.001", "--work", str(tmp_path / "w"), "--reuse", str(first),
                         "--results", str(both)]) == 0
        old, new = json.loads(first.read_text()), json.loads(both.read_text())
        assert sorted(new["runs"]) == ["svd@4@lr0.001", "svd@4@lr1"]
        assert new["runs"]["svd@4@lr1"] == old["runs"]["svd@4"]  # adopted as it was, not retrained
        assert new["setup"]["reused_from"] == [str(first)]
        assert "1 finished run(s) adopted" in capsys.readouterr().out
        # another dense model: refused before anything is written
        bad = tmp_path / "other.json"
        bad.write_text(json.dumps({**old, "dense": {**old["dense"], "test_ppl": old["dense"]["test_ppl"] * 1.01}}))
        out = tmp_path / "never.json"
        assert mod.main([*common, "--finetune-lr", "1,0.001", "--work", str(tmp_path / "w"), "--reuse", str(bad),
                         "--results", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not the same baseline" in err[0] and not out.exists()
        (tmp_path / "junk.json").write_text("{not json")
        assert mod.main([*common, "--reuse", str(tmp_path / "junk.json"), "--results", str(out)]) == 2
        assert "cannot read it as JSON" in capsys.readouterr().err and not out.exists()
    finally:
        torch.set_num_threads(threads)


def test_vocab_benchmark_refuses_cuda_graph_without_cuda_before_any_work(tmp_path, capsys, bench_module):
    mod = bench_module("vocab")
    res = tmp_path / "r.json"
    assert mod.main(["--baseline", str(tmp_path / "none"), "--device", "cpu", "--cuda-graph", "--precision", "fp32",
                     "--results", str(res), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not res.exists() and not (tmp_path / "w").exists()


def test_distilled_runs_record_it_and_never_mix_with_plain_ones(tmp_path, bench_module, capsys):
    """``--distill 1``: the setup and the table say how retraining used the dense model; a results file of plain
    runs is not extended with distilled ones (its finished runs would be skipped as if they were), nor adopted."""
    mod = bench_module("vocab")
    data = tiny_corpus(tmp_path / "data")
    common = ["--corpus", "ptb", "--preset", "tiny", "--data", str(data), "--no-verify", "--train-epochs", "1",
              "--device", "cpu", "--cpu-threads", "1", "--finetune-epochs", "1", "--rates", "4", "--methods", "svd",
              "--finetune-lr", "1", "--work", str(tmp_path / "w")]
    plain, taught = tmp_path / "plain.json", tmp_path / "kd.json"
    threads = torch.get_num_threads()
    try:
        assert mod.main([*common, "--results", str(plain)]) == 0
        assert mod.main([*common, "--distill", "1", "--results", str(taught)]) == 0
        a, b = json.loads(plain.read_text()), json.loads(taught.read_text())
        assert a["setup"]["finetune_distill"] is None
        assert b["setup"]["finetune_distill"] == {"weight": 1.0, "temperature": 1.0}
        assert a["dense"]["test_ppl"] == b["dense"]["test_ppl"]  # the same dense model
        assert b["runs"]["svd@4"]["test_ppl_after"] != a["runs"]["svd@4"]["test_ppl_after"]
        assert "Retrained with distillation from the dense model: weight 1" in taught.with_suffix(".md").read_text()
        capsys.readouterr()
        assert mod.main([*common, "--distill", "1", "--results", str(plain)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "give another --results" in err[0]
        assert json.loads(plain.read_text()) == a  # untouched
        assert mod.main([*common, "--distill", "1", "--reuse", str(plain), "--results", str(tmp_path / "x.json")]) == 2
        assert "retrained with distillation None" in capsys.readouterr().err
        # the same for the schedule's patience (a file from before the option reads as 0, the paper's rule)
        assert a["setup"]["finetune_patience"] == 0
        assert mod.main([*common, "--finetune-patience", "1", "--results", str(plain)]) == 2
        assert "retrained with patience 0" in capsys.readouterr().err and json.loads(plain.read_text()) == a
        assert mod.main([*common, "--finetune-patience", "1", "--reuse", str(plain), "--results", str(tmp_path / "y.json")]) == 2
        assert "retrained with patience 0, this run 1" in capsys.readouterr().err
        # ... and for dropout while retraining and the number of retraining epochs
        assert mod.main([*common, "--finetune-dropout", "0.1", "--results", str(plain)]) == 2
        assert "retrained with dropout None, this run asks 0.1" in capsys.readouterr().err
        assert mod.main([*common, "--finetune-epochs", "2", "--results", str(plain)]) == 2
        assert "retrained with epochs 1, this run asks 2" in capsys.readouterr().err and json.loads(plain.read_text()) == a
        assert mod.main([*common, "--finetune-epochs", "2", "--reuse", str(plain), "--results", str(tmp_path / "z.json")]) == 2
        assert "retrained with epochs 1, this run 2" in capsys.readouterr().err and not (tmp_path / "z.json").exists()
        # a --results that is no vocab.py result (the report's vocab.json, a torn file) is refused, not overwritten
        for name, text in (("report.json", json.dumps({"baselines": {}})), ("torn.json", '{"runs": {')):
            other = tmp_path / name
            other.write_text(text)
            assert mod.main([*common, "--results", str(other)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "give another --results" in err[0] and other.read_text() == text
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("flag, bad, says", [
    *(("--finetune-dropout", v, "--finetune-dropout must be in [0, 1)") for v in ("-0.1", "1")),
    *(("--distill", v, "distillation weight must be a number in [0, 1]") for v in ("-0.1", "1.5", "nan")),
    ("--distill-temperature", "0", "distillation temperature must be a positive number"),
    ("--finetune-patience", "-1", "--finetune-patience must be an integer >= 0")])
def test_vocab_benchmark_refuses_bad_retraining_settings_before_any_work(tmp_path, capsys, bench_module, flag, bad, says):
    mod = bench_module("vocab")
    res = tmp_path / "r.json"
    assert mod.main(["--baseline", str(tmp_path / "none"), flag, bad, "--results", str(res),
                     "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not res.exists() and not (tmp_path / "w").exists()


def test_verdicts_compare_with_the_dense_retrained_control_where_it_ran(tmp_path, bench_module):
    """A retraining that lifts the uncompressed model (dropout on PTB small: 112.6 -> 100.1) must not be credited
    to compression: with a dense_retrained run, vocab.py's targets and vocab_report's verdicts judge against it."""
    mod, rep = bench_module("vocab"), bench_module("vocab_report")
    res = _result("ptb", 112.0, [("groupreduce", 6.6, 106.0), ("groupreduce_q", 26.0, 107.0)])
    assert any("6.6x (met)" in line for line in mod.targets(res))
    assert rep.verdicts(res)["groupreduce"]["met"]
    res["runs"]["dense_retrained@1"] = {"method": "dense_retrained", "rate": 1.0, "vocab_ratio": 1.0, "status": "done",
                                        "test_ppl_before": 112.0, "test_ppl_after": 100.0, "valid_ppl_after": 104.0,
                                        "bytes_on_disk": 1000}
    for r in res["runs"].values():
        r.setdefault("valid_ppl_after", r["test_ppl_after"])
    assert mod.reference_ppl(res) == (100.0, "dense_retrained")
    lines = mod.targets(res)
    assert "against dense_retrained (test ppl 100.00)" in lines[0]
    assert any("groupreduce: largest ratio within +1%" in line and "NOT met" in line for line in lines)
    v = rep.verdicts(res)
    assert not v["groupreduce"]["met"] and v["groupreduce"]["closest"]["delta"] == pytest.approx(0.06)


def test_vocab_benchmark_refuses_bad_method_settings_before_any_work(tmp_path, capsys, bench_module):
    mod = bench_module("vocab")
    res = tmp_path / "r.json"
    assert mod.main(["--baseline", str(tmp_path / "none"), "--methods", "svd,groupreduce", "--rank-multiple", "0",
                     "--results", str(res), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "rank_multiple must be an integer in 1..64, got 0" in err and len(err.strip().splitlines()) == 1
    assert not res.exists() and not (tmp_path / "w").exists()


def test_a_speed_taken_on_a_shared_gpu_says_so(bench_module):
    vocab = bench_module("vocab")
    assert vocab.fmt_speed({}) == "-"
    assert vocab.fmt_speed({"speed_vs_dense": 0.914}) == "0.91"  # CPU, or a GPU nobody else used
    assert vocab.fmt_speed({"speed_vs_dense": 0.914, "speed_other_gpu_processes": 0}) == "0.91"
    assert vocab.fmt_speed({"speed_vs_dense": 0.914, "speed_other_gpu_processes": 2}) == "0.91 (GPU shared)"
    assert vocab.fmt_speed({"speed_vs_dense": 0.914, "speed_other_gpu_processes": None}) == "0.91 (GPU sharing unknown)"


def test_speeds_are_taken_in_the_time_left_and_stop_when_it_runs_out(tmp_path, bench_module):
    # a paused invocation (--time-limit) still times the runs that finished, as long as the timings so far say the
    # next one fits; the rest stay untimed for a rerun (stop 22: two GPU files had no speeds at all)
    vocab = bench_module("vocab")
    from lmshrink.io import save_model_dir
    from lmshrink.models.lstm_lm import build_from_preset

    torch.manual_seed(0)
    dense = build_from_preset("tiny", 50)
    for key in ("a@5", "b@5"):
        save_model_dir(dense, tmp_path / "models" / key)
    runs = {"a@5": {"status": "done"}, "b@5": {"status": "done"}, "c@5": {"status": "refused"}}
    seen = []

    def one_more(took):
        seen.append(list(took))
        return len(took) < 1

    cpu = torch.device("cpu")
    assert vocab.measure_speeds({"runs": runs}, dense, 50, cpu, tmp_path, lambda *a: None, rounds=1, may_go=one_more) is False
    assert "speed_vs_dense" in runs["a@5"] and "speed_vs_dense" not in runs["b@5"]
    assert len(seen) == 2 and seen[0] == [] and len(seen[1]) == 1 and seen[1][0] > 0
    # the rerun times what is left, and never times a run again
    assert vocab.measure_speeds({"runs": runs}, dense, 50, cpu, tmp_path, lambda *a: None, rounds=1) is True
    assert "speed_vs_dense" in runs["b@5"] and "speed_vs_dense" not in runs["c@5"]
