"""End to end: benchmarks/vocab.py on a made-up tiny corpus, CPU, tiny preset (slow: run with -m slow)."""

from __future__ import annotations

import importlib.util
import json
import random
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
def test_vocab_benchmark_end_to_end(tmp_path, jobs):
    spec = importlib.util.spec_from_file_location("vocab_bench", ROOT / "benchmarks" / "vocab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = tiny_corpus(tmp_path / "data")
    res = tmp_path / "res" / "vocab.json"
    argv = ["--corpus", "ptb", "--preset", "tiny", "--data", str(data), "--no-verify", "--train-epochs", "1",
            "--device", "cpu", "--cpu-threads", "1", "--finetune-epochs", "1", "--rates", "4",
            "--gq-rates", "10", "--methods", "svd,prune,prune_agp,quantize,groupreduce,groupreduce_q",
            "--work", str(tmp_path / "work"), "--results", str(res), "--jobs", str(jobs)]
    threads = torch.get_num_threads()

    def run() -> int:
        if jobs == 1:
            return mod.main(argv)
        # worker processes import the script's functions by module name: run it as the script it is
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vocab.py"), *argv], cwd=ROOT).returncode

    try:
        assert run() == 0
        out = json.loads(res.read_text())
        assert len(out["runs"]) == 6 and all(r["status"] == "done" for r in out["runs"].values())
        for r in out["runs"].values():
            assert r["vocab_ratio"] >= 0.95 * min(r["rate"], 4) and r["bytes_on_disk"] < out["dense"]["bytes_on_disk"]
        assert res.with_suffix(".md").exists() and res.with_suffix(".png").exists()
        # speeds are taken afterwards in the main process, next to dense (never inside parallel workers)
        for r in out["runs"].values():
            assert r["tokens_per_s"] > 0 and r["dense_tokens_per_s_beside"] > 0
            assert r["speed_vs_dense"] == pytest.approx(r["tokens_per_s"] / r["dense_tokens_per_s_beside"], rel=0.5)
        mtime = res.stat().st_mtime
        assert run() == 0  # resumes: nothing redone
        assert all(json.loads(res.read_text())["runs"][k]["wall_s"] == out["runs"][k]["wall_s"] for k in out["runs"])
        assert res.stat().st_mtime >= mtime
    finally:
        torch.set_num_threads(threads)
