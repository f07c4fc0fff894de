"""Compress the LSTM layers of a word-level LSTM language model: doped Kronecker products and rivals.

Reproduces the comparison of Thakker et al. 2020 ("Compressing Language Models using Doped Kronecker
Products", arXiv:2001.08896: PTB medium 2x650, LSTM layers ~25 MB, 25x: doped KP +1.4% perplexity,
pruning +7.9%, HMD +15%, LMF +27%) and a Grachev, Ignatov & Savchenko (2019, Applied Soft Computing)
style table (method x perplexity, size, CPU latency at batch 1, GPU throughput) for any preset.

Every figure comes from this run: the dense baseline (trained here or loaded) is evaluated in the
same run and every compressed model is compared with it. Each (method, ratio) run compresses the
LSTM maps ``rnn.layers.*.ih`` / ``.hh`` of the baseline, retrains ``--epochs`` epochs (one SGD run,
so the doping schedule spans the whole retraining), packs, saves, evaluates and measures bytes on
disk. Speeds are measured afterwards one model at a time, so parallel runs do not disturb them.

Resumable: results are written to the JSON after every run; finished runs are skipped, unfinished
ones resume from their training checkpoint; ``--time-limit`` stops cleanly (checkpoints saved) so a
sequence of short calls finishes the work.

    # the headline (GPU, calls of <= 9 min): trains the dense medium baseline in-process (39 epochs,
    # checkpointed), then six methods at 25x; repeat the same command until it exits 0 (3 = paused)
    python benchmarks/recurrent.py --preset medium --corpus ptb --data ../shared/data \
        --methods doped_kp,kp,prune,hmd,lmf,tt --ratios 25 --epochs 6 --jobs 6 --time-limit 480
    # the curve: the same with --ratios 10,50 (finished 25x runs are kept); CMR ablation: doped_kp:cmr=0
    # Grachev-style table for another size: --preset small (or large), results merged into the same files
    # CPU smoke test on a tiny corpus (tests/test_recurrent.py::test_benchmark_script_end_to_end_on_a_tiny_corpus)
    python benchmarks/recurrent.py --preset tiny --corpus ptb --data DIR --no-verify --max-steps 20 --device cpu ...

Fairness: every method gets the same retraining (``--epochs``, SGD, LR ``--lr`` held for half the
epochs then decayed geometrically to ``--lr-end``, Zaremba's dropout and clipping); doped KP's S and
pruning's mask (AGP, Zhu & Gupta 2017) both reach their final density at ``--anneal-end`` of it.
Sizes count every stored bit (sparse indices and row pointers included); ``--ratio-of lstm`` (default)
sizes the LSTM layers as a whole, the dense biases every method keeps included.

Methods (``NAME[:key=value;...]``, options go to the method's config; ``ratio`` is added per ratio):
doped_kp (doped_kronecker), kp (kronecker), hmd, lmf (svd: low-rank factorisation, gates jointly), tt,
prune / quantize (when registered), or any registered method name. Two options are the run's retraining rate,
not the method's: ``lr`` and ``lr_end`` replace ``--lr`` / ``--lr-end`` for that entry, so one invocation can give
each method the rate it prefers (``lmf:lr=0.2;lr_end=0.005,doped_kp``). Why: on PTB medium and large the
factorised methods retrained best from 0.2 and doped KP and pruning from 1, and a second invocation on a lent GPU
means a second dense baseline. A third, ``cell_clip``, is the model's: the compressed model retrains and is
evaluated with its carried cell state clamped (``LSTMLanguageModel.cell_clip``; saved in its manifest), e.g.
``tt:cell_clip=50``. Why: stop 18 found a runaway cell in a 25x TT model on PTB large (``eval_windows.py``).
A fourth, ``distill``, a weight in [0, 1], is the training's: it trains on ``(1 - w) CE + w KL(dense || model)``
with the dense baseline as teacher (``lmshrink.train.distill``, Hinton et al. 2015), e.g. ``doped_kp:distill=1``.

Seeds: ``--seed 0,1,2`` runs every entry once per seed in the same invocation (keys of seeds other than 0 end in
``|sN``; the tables label them "(seed N)"). Why: on PTB medium at 25x one recipe's test perplexity moved by 0.4-0.8
points between seeds (stop 24), as much as the gaps between methods, and ``recurrent_report.py`` ranks a recipe by
its mean over seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lmshrink.errors import LmshrinkError, check  # noqa: E402
from lmshrink.train.distill import check_distill

ALIASES = {"doped_kp": "doped_kronecker", "kp": "kronecker", "lmf": "svd", "dkp": "doped_kronecker"}
DEFAULT_METHODS = "doped_kp,kp,prune,hmd,lmf,tt"
LSTM_PATTERNS = ("rnn.layers.*.ih", "rnn.layers.*.hh")


# --------------------------------------------------------------------------- small helpers
def log(*a):
    print(*a, flush=True)


class Deadline(KeyboardInterrupt):
    """Raised by the alarm at --time-limit; train_lm checkpoints on KeyboardInterrupt."""


def arm_deadline(deadline: float | None) -> None:
    if deadline is None:
        return

    def fire(*_):
        raise Deadline()

    signal.signal(signal.SIGALRM, fire)
    left = deadline - time.time()
    if left <= 1:
        raise Deadline()
    signal.setitimer(signal.ITIMER_REAL, left)


def split_methods(text: str) -> list[str]:
    """``--methods`` split at top-level commas: a JSON list inside an option (``a_shape=[2600,1]``) stays whole."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c in "[{") - (c in "]}")
        check(depth >= 0, f"--methods: unbalanced bracket at character {i + 1} of {text!r}")
        if c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    check(depth == 0, f"--methods: unclosed bracket in {text!r}")
    items.append(text[start:])
    return [m.strip() for m in items if m.strip()]


def parse_method(spec: str) -> tuple[str, str, dict]:
    """``name[:k=v;k=v]`` -> (label, registry name, options). Values are JSON where they parse."""
    name, _, rest = spec.partition(":")
    opts = {}
    for item in filter(None, rest.split(";")):
        k, eq, v = item.partition("=")
        check(bool(eq), f"method option {item!r} in {spec!r} is not key=value")
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v
    return spec, ALIASES.get(name, name), opts


def takes_ratio(method: str) -> bool:
    from lmshrink.compress import get_method

    return "ratio" in {f.name for f in fields(get_method(method).config_cls)}


def slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)


def write_json(path: Path, data) -> None:
    from lmshrink.io import write_json_atomic

    write_json_atomic(path, data)


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return default


def tensor_bytes_on_disk(model_dir: Path, prefix: str = "") -> int:
    """Bytes the safetensors file spends on tensors whose name starts with ``prefix`` (read from its header)."""
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k != "__metadata__" and k.startswith(prefix))


def lstm_sizes(model) -> dict:
    """Theoretical bits/params of the LSTM layers (``rnn.``) and of the whole model (lmshrink.measure)."""
    from lmshrink.measure import layer_rows

    rows = layer_rows(model)
    lstm = [r for r in rows if r["name"].startswith("rnn.")]
    return {"lstm_bits": sum(r["bits"] for r in lstm), "lstm_params": sum(r["params"] for r in lstm),
            "model_bits": sum(r["bits"] for r in rows), "model_params": sum(r["params"] for r in rows)}


def retrain_lr(lr0: float, lr_end: float, hold: int, epochs: int):
    """Hold ``lr0`` for ``hold`` epochs (the doping anneal runs there), then decay geometrically to
    ``lr_end`` at the last epoch. The same schedule for every method."""

    def fn(e: int) -> float:
        if e < hold or epochs - 1 <= hold:
            return lr0
        frac = (e - hold + 1) / (epochs - hold)
        return lr0 * (lr_end / lr0) ** frac

    return fn


def finalize(model) -> int:
    """Turn training-time forms into their stored forms: doped KP -> CSR, AGP masks -> sparse layers."""
    from lmshrink.layers.kronecker import pack_doped

    n = pack_doped(model)
    try:
        from lmshrink.methods.prune import finalize_pruning_
    except ImportError:  # pruning not installed in this checkout
        return n
    return n + len(finalize_pruning_(model) or [])


RETRAIN_OPTIONS = ("lr", "lr_end")  # per-entry retraining rates, taken out of the method's options (module doc)


def retrain_options(label: str, opts: dict, args) -> tuple[dict, float, float]:
    """(method options without ``lr``/``lr_end``, first rate, last rate) of one ``--methods`` entry."""
    opts = dict(opts)
    lr, lr_end = opts.pop("lr", args.lr), opts.pop("lr_end", args.lr_end)
    checks = [("lr", lr), ("lr_end", lr_end)] + ([("cell_clip", opts["cell_clip"])] if "cell_clip" in opts else [])
    for name, v in checks:
        check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
              f"{label}: {name} must be a positive number, got {v!r}")
    if "distill" in opts:
        try:
            check_distill(opts["distill"])
        except LmshrinkError as e:
            raise LmshrinkError(f"{label}: {e}") from None
    return opts, float(lr), float(lr_end)  # cell_clip and distill stay in opts until the run's spec takes them out


def method_defaults(method: str, opts: dict, args) -> dict:
    """Same gradual schedule for every method that anneals: doped KP's S and AGP pruning's mask reach
    their final density at ``--anneal-end`` of the retraining (while the LR is still high)."""
    opts = dict(opts)
    if method == "doped_kronecker":
        opts.setdefault("anneal_end", args.anneal_end)
    if method == "prune" and opts.get("schedule", "agp") == "agp" and "schedule" not in opts:
        opts.update(schedule="agp", agp_end=args.anneal_end)
    return opts


# --------------------------------------------------------------------------- one compressed run (a worker process)
def run_one(spec: dict) -> dict:
    """Compress, retrain, pack, save, evaluate. ``spec`` holds everything (written by the main process)."""
    from lmshrink.compress import compress, make_config
    from lmshrink.io import load_model_dir, save_model_dir
    from lmshrink.models import build_model
    from lmshrink.models.lstm_lm import Preset
    from lmshrink.train.graphed import graph_ready
    from lmshrink.train.lm import evaluate_ppl, remove_checkpoint, seed_everything, train_lm

    t0 = time.time()
    device = torch.device(spec["device"])
    if spec.get("threads"):
        # on GPU too: compression (SVDs) runs on the CPU, and six workers of 16 threads each on 16 cores spent
        # whole 9-minute calls compressing (oversubscribed OpenMP threads; 20-40x slower in a CPU test)
        torch.set_num_threads(spec["threads"])
    corpus = load_corpus_from(spec)
    recipe = Preset(**spec["recipe"])
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    base, manifest = load_model_dir(spec["baseline_dir"], device="cpu")
    seed_everything(spec["seed"])
    if spec["mode"] == "scratch":  # the compressed structure trained from a fresh initialisation
        model = build_model(manifest["architecture"])
    else:
        model = base
    opts = dict(spec["options"])
    if spec["ratio"] is not None:
        opts["ratio"] = spec["ratio"]
    cfg = make_config(spec["method"], **opts)
    report = compress(model, {p: cfg for p in LSTM_PATTERNS})
    if spec.get("cell_clip") is not None:
        model.cell_clip = float(spec["cell_clip"])
    model.to(device)
    result = {"key": spec["key"], "preset": spec["preset"], "corpus": spec["corpus"], "label": spec["label"],
              "method": spec["method"], "options": opts, "config": cfg.to_dict(), "mode": spec["mode"],
              "ratio_target": spec.get("ratio_target", spec["ratio"]), "ratio_of": spec.get("ratio_of"),
              "weight_ratio": spec["ratio"], "epochs": spec["epochs"], "seed": spec["seed"], "layers": report,
              "cell_clip": spec.get("cell_clip"), "distill": spec.get("distill")}
    train_dir = run_dir / "train"
    before = run_dir / "before_retrain.json"  # kept across a pause, so a resumed run does not redo it
    if spec["mode"] == "retrain":
        if not before.is_file():
            write_json(before, {"valid_ppl": evaluate_ppl(model, corpus.splits["valid"], spec["eval_batch"], recipe.bptt,
                                                          device)})
        result["valid_ppl_before_retrain"] = read_json(before, {}).get("valid_ppl")
    if spec.get("deadline"):  # leave time for the final evaluation and saving after training stops
        arm_deadline(spec["deadline"] - spec.get("reserve", 0))
    epochs = spec["epochs"]
    if epochs > 0:
        lr_fn = None if spec["mode"] == "scratch" else retrain_lr(spec["lr"], spec["lr_end"], spec["lr_hold"], epochs)
        # --cuda-graph: hook-free structures (LMF, KP, HMD, TT) replay each step from a graph, which removes the
        # launch cost of their step-by-step LSTM; doped KP (doping / CMR hooks) and pruning (AGP hooks, CSR storage)
        # train eagerly
        why_not = graph_ready(model) if spec.get("cuda_graph") else "not asked"
        teacher = None
        if spec.get("distill"):
            from lmshrink.train.distill import Teacher

            teacher = Teacher(load_model_dir(spec["baseline_dir"], device="cpu")[0], spec["distill"])
        out = train_lm(model, corpus, recipe, out_dir=train_dir, device=device, epochs=epochs,
                       max_steps=spec.get("max_steps"), seed=spec["seed"], precision=spec["precision"],
                       progress=False, lr_fn=lr_fn, log=log, cuda_graph=why_not is None, teacher=teacher)
        result["cuda_graph"] = out.get("cuda_graph") or {"captured": False, "why_not": why_not}
        model = out["model"]
        result.update(history=out["history"], train_wall_s=out["wall_s"], train_tokens_per_s=out["train_tokens_per_s"],
                      steps=out["steps"])
        if lr_fn is not None:
            result["lr_schedule"] = [lr_fn(e) for e in range(epochs)]
    signal.setitimer(signal.ITIMER_REAL, 0)
    packed = finalize(model)
    model.eval()
    result.update(evaluate_splits(model, corpus, spec["eval_batch"], recipe.bptt, device))
    model_dir = run_dir / "model"
    save_model_dir(model.cpu(), model_dir, vocab=corpus.vocab,
                   extra={"benchmark": "recurrent", "run": spec["key"], "test_ppl": result["test_ppl"]})
    remove_checkpoint(train_dir)
    result.update(lstm_sizes(model))
    result.update(model_dir=str(model_dir), packed_layers=packed,
                  lstm_bytes_on_disk=tensor_bytes_on_disk(model_dir, "rnn."),
                  model_weights_bytes_on_disk=(model_dir / "model.safetensors").stat().st_size,
                  model_dir_bytes_on_disk=sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file()),
                  wall_s=time.time() - t0, status="ok", device=str(device))
    return result


def load_corpus_from(spec: dict):
    from lmshrink.data import load_corpus

    return load_corpus(spec["corpus"], spec["data"], verify=spec["verify"])


# --------------------------------------------------------------------------- the dense baseline
def ensure_baseline(args, corpus, recipe, group: str, work: Path, deadline) -> Path:
    """The baseline model directory: given, already trained here, or trained now (resumable)."""
    from lmshrink.io import save_model_dir
    from lmshrink.models.lstm_lm import build_from_preset
    from lmshrink.train.lm import remove_checkpoint, seed_everything, train_lm

    if args.baseline:
        return Path(args.baseline)
    bdir = work / "baseline"
    if (bdir / "manifest.json").is_file():
        return bdir
    log(f"[{group}] training the dense baseline ({args.baseline_epochs or recipe.epochs} epochs) -> {bdir}")
    seed_everything(args.seed)
    model = build_from_preset(args.preset, len(corpus.vocab))
    arm_deadline(None if deadline is None else deadline - args.reserve / 2)
    out = train_lm(model, corpus, recipe, out_dir=bdir, device=args.device, epochs=args.baseline_epochs,
                   max_steps=args.max_steps, seed=args.seed, precision=args.precision, progress=args.progress, log=log)
    signal.setitimer(signal.ITIMER_REAL, 0)
    save_model_dir(out["model"].cpu(), bdir, vocab=corpus.vocab,
                   extra={"benchmark": "recurrent", "preset": args.preset, "history": out["history"],
                          "train_wall_s": out["wall_s"], "train_tokens_per_s": out["train_tokens_per_s"],
                          "data_checksums": corpus.checksums})
    remove_checkpoint(bdir)
    return bdir


def evaluate_splits(model, corpus, batch: int, bptt: int, device) -> dict:
    """valid and test perplexity, and per layer the largest carried |c| on each (``max_abs_cell``, runaway_note):
    how every model of a run, dense or compressed, is evaluated."""
    from lmshrink.train.lm import evaluate_ppl

    cells = {"valid": [], "test": []}
    ppl = {f"{s}_ppl": evaluate_ppl(model, corpus.splits[s], batch, bptt, device, cell_max=cells[s]) for s in cells}
    return {**ppl, "max_abs_cell": cells}


def evaluate_baseline(args, corpus, recipe, bdir: Path, group: str) -> dict:
    from lmshrink.io import load_model_dir

    model, manifest = load_model_dir(bdir, device=args.device)
    check(manifest.get("vocab_sha256") in (None, corpus.vocab.fingerprint()),
          f"baseline {bdir} was trained on another vocabulary than {args.corpus}")
    check(not manifest.get("compressed_layers"), f"baseline {bdir} is already compressed")
    res = {"group": group, "model_dir": str(bdir), "architecture": manifest["architecture"],
           **evaluate_splits(model, corpus, args.eval_batch, recipe.bptt, args.device),
           "train_wall_s": manifest.get("train_wall_s"), "history": manifest.get("history"),
           "lstm_bytes_on_disk": tensor_bytes_on_disk(bdir, "rnn."),
           "model_weights_bytes_on_disk": (bdir / "model.safetensors").stat().st_size,
           "model_dir_bytes_on_disk": sum(p.stat().st_size for p in bdir.iterdir() if p.is_file()),
           "eval_batch": args.eval_batch, "status": "ok"}
    res.update(lstm_sizes(model))
    res["lstm_weight_bits"] = sum(32 * m.weight.numel() for n, m in model.named_modules()
                                  if n.startswith("rnn.") and isinstance(m, torch.nn.Linear))
    return res


def weight_ratio(lstm_ratio: float, base: dict, where: str) -> float:
    """The per-weight ratio that makes the LSTM layers as a whole (weights + the biases every method
    keeps dense) ``lstm_ratio`` times smaller than dense."""
    W, total = base["lstm_weight_bits"], base["lstm_bits"]
    left = total / lstm_ratio - (total - W)
    check(left > 0, f"{where}: at {lstm_ratio:g}x the dense LSTM biases alone exceed the budget; use a lower ratio")
    return W / left


# --------------------------------------------------------------------------- speed (serial, after the runs)
def measure_speed(model_dir: str, vocab_size: int, args) -> dict:
    from lmshrink.io import load_model_dir
    from lmshrink.measure import lm_tokens_per_second

    out = {}
    if args.device != "cpu" and torch.cuda.is_available():
        model, _ = load_model_dir(model_dir, device=args.device)
        # the compact maps step by step (fused=False: the "auto" default would rebuild at 35 steps on CUDA)
        r = lm_tokens_per_second(model, vocab_size, args.device, batch_size=args.gpu_batch, seq_len=35, fused=False)
        out["gpu_tokens_per_s"] = r["tokens_per_s"]
        # the other way to serve it on a GPU: dense weights rebuilt per window, fused kernel
        r = lm_tokens_per_second(model, vocab_size, args.device, batch_size=args.gpu_batch, seq_len=35, fused=True)
        out["gpu_tokens_per_s_fused"] = r["tokens_per_s"]
        out["gpu_batch"] = args.gpu_batch
        out["gpu_name"] = torch.cuda.get_device_name()
    if args.cpu_latency:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.cpu_threads)
        try:
            model, _ = load_model_dir(model_dir, device="cpu")
            r = lm_tokens_per_second(model, vocab_size, "cpu", batch_size=1, seq_len=35, repeats=args.cpu_repeats)
        finally:
            torch.set_num_threads(threads)
        out.update(cpu_ms_per_token=r["ms_per_token"], cpu_threads=args.cpu_threads)
    return out


# --------------------------------------------------------------------------- reporting
def fmt(v, spec="{:.2f}", none="-"):
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else spec.format(v)


# a run whose test perplexity ends above this multiple of the dense model's has not been compressed with a loss, it
# has stopped modelling the language (TT at 25x on PTB large, lr 1: train ppl 2e6 in its first epoch); the tables
# name it and the plot draws it at its top edge, where it does not flatten every other point into the axis
DIVERGED_X = 3.0


def diverged(r: dict, base: dict) -> bool:
    return r["test_ppl"] > DIVERGED_X * base["test_ppl"]


def diverged_note(r: dict, base: dict) -> str:
    first = (r.get("history") or [{}])[0]
    seen = []  # what the run's record shows of how it went, where it has it
    if r.get("valid_ppl_before_retrain"):
        seen.append(f"valid ppl {fmt(r['valid_ppl_before_retrain'])} before retraining")
    if "train_ppl" in first:
        seen.append(f"train ppl {first['train_ppl']:.3g} in epoch 1" + (f" at lr {first['lr']:g}" if "lr" in first else ""))
    return (f"- {r['label']} @{fmt(r.get('ratio_target'), '{:g}x')} ({r['mode']}): test ppl {fmt(r['test_ppl'])}, over "
            f"{DIVERGED_X:g}x the dense model's: it diverged" + (f" ({'; '.join(seen)})" if seen else "") + ".")


# A compressed model whose carried cell state grows past this multiple of the dense model's largest has a runaway
# cell: stop 18's TT model on PTB large reached 3052 on one validation stream against the dense model's 36.
RUNAWAY_X = 10.0


def runaway_note(r: dict, base: dict) -> str | None:
    """A line for the report when a run's carried cell state ran away on some split (None otherwise or unrecorded)."""
    mine, dense = r.get("max_abs_cell") or {}, base.get("max_abs_cell") or {}
    seen = [f"{split} {max(mine[split]):,.0f} against the dense model's {max(dense[split]):,.1f}"
            for split in ("valid", "test") if mine.get(split) and dense.get(split)
            and max(mine[split]) > RUNAWAY_X * max(dense[split])]
    if not seen:
        return None
    return (f"- {r['label']} @{fmt(r.get('ratio_target'), '{:g}x')} ({r['mode']}): a runaway cell, largest carried |c| "
            + "; ".join(seen) + f" (valid ppl {fmt(r.get('valid_ppl'))}, test {fmt(r['test_ppl'])}). "
            "`benchmarks/eval_windows.py` shows where; a `cell_clip` entry option retrains with the state clamped.")


def group_rows(results: dict, group: str):
    base = results["baselines"].get(group)
    runs = [r for r in results["runs"].values() if r.get("group") == group and r.get("status") == "ok"]
    # the tables' and the plot's label names a seed other than 0 (one label may run with several, --seed 0,1,2)
    runs = [dict(r, label=f"{r['label']} (seed {r['seed']})") if r.get("seed") else r for r in runs]
    runs.sort(key=lambda r: (r.get("ratio_target") or 0, r["label"], r["mode"]))
    return base, runs


def markdown(results: dict) -> str:
    lines = ["# Recurrent (LSTM) layer compression", "",
             "Generated by `benchmarks/recurrent.py`; every compressed model is compared with the dense baseline "
             "evaluated in the same run. Ratio = dense fp32 LSTM bits / compressed LSTM bits (theoretical, "
             "indices included); LSTM bytes = bytes the safetensors file spends on `rnn.*` tensors. GPU tok/s (batch 64) "
             "runs the compact maps step by step; 'rebuilt dense' rebuilds each LSTM weight from them once per 35-token "
             "window and runs the fused kernel ('-' where not measured). A compressed model in eval mode takes the "
             "rebuilt path on CUDA by itself from 4 steps per call (`lmshrink.models.lstm_lm.CUDA_REBUILD_MIN_STEPS`), so "
             "'rebuilt dense' is its speed at these windows; one token per call steps through the compact maps "
             "(`recurrent_speed_gpu_steps.md`).", ""]
    for group in sorted(results["baselines"]):
        base, runs = group_rows(results, group)
        if base is None:
            continue
        lines += [f"## {group}", "",
                  f"Dense baseline: test ppl {fmt(base['test_ppl'])}, valid ppl {fmt(base['valid_ppl'])}, LSTM "
                  f"{base['lstm_bytes_on_disk'] / 2**20:.2f} MiB on disk, model {base['model_weights_bytes_on_disk'] / 2**20:.2f} MiB"
                  + (f", trained in {base['train_wall_s'] / 60:.1f} min" if base.get("train_wall_s") else "") + ".", "",
                  "| method | mode | target | ratio | LSTM MiB (disk) | model MiB (disk) | test ppl | Δ ppl % | "
                  "GPU tok/s | GPU tok/s, rebuilt dense | CPU ms/tok (b=1) | retrain epochs | train min |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines.append(f"| dense | - | 1x | 1.0 | {base['lstm_bytes_on_disk'] / 2**20:.3f} | "
                     f"{base['model_weights_bytes_on_disk'] / 2**20:.2f} | {fmt(base['test_ppl'])} | 0.00 | "
                     f"{fmt(base.get('gpu_tokens_per_s'), '{:,.0f}')} | {fmt(base.get('gpu_tokens_per_s_fused'), '{:,.0f}')} | "
                     f"{fmt(base.get('cpu_ms_per_token'), '{:.3f}')} | - | "
                     f"{fmt((base.get('train_wall_s') or float('nan')) / 60, '{:.1f}')} |")
        for r in runs:
            ratio = base["lstm_bits"] / r["lstm_bits"]
            delta = 100 * (r["test_ppl"] / base["test_ppl"] - 1)
            lines.append(f"| {r['label']} | {r['mode']} | {fmt(r.get('ratio_target'), '{:g}x')} | {ratio:.1f} | "
                         f"{r['lstm_bytes_on_disk'] / 2**20:.3f} | {r['model_weights_bytes_on_disk'] / 2**20:.2f} | "
                         f"{fmt(r['test_ppl'])} | {delta:+.2f}{' (diverged)' if diverged(r, base) else ''} | "
                         f"{fmt(r.get('gpu_tokens_per_s'), '{:,.0f}')} | "
                         f"{fmt(r.get('gpu_tokens_per_s_fused'), '{:,.0f}')} | "
                         f"{fmt(r.get('cpu_ms_per_token'), '{:.3f}')} | {r['epochs']} | "
                         f"{fmt((r.get('train_wall_s') or float('nan')) / 60, '{:.1f}')} |")
        gone = [diverged_note(r, base) for r in runs if diverged(r, base)]
        gone += [note for note in (runaway_note(r, base) for r in runs if not diverged(r, base)) if note]
        if gone:
            lines += [""] + gone
        lines += ["", f"Grachev et al. (2019) style, {group}:", "",
                  "| method | perplexity | size MB (LSTM, disk) | ms/token CPU b=1 | tokens/s GPU |", "|---|---|---|---|---|"]
        lines.append(f"| dense | {fmt(base['test_ppl'])} | {base['lstm_bytes_on_disk'] / 1e6:.2f} | "
                     f"{fmt(base.get('cpu_ms_per_token'), '{:.3f}')} | {fmt(base.get('gpu_tokens_per_s'), '{:,.0f}')} |")
        for r in runs:
            lines.append(f"| {r['label']} @{fmt(r.get('ratio_target'), '{:g}x')} ({r['mode']}) | {fmt(r['test_ppl'])}"
                         f"{' (diverged)' if diverged(r, base) else ''} | "
                         f"{r['lstm_bytes_on_disk'] / 1e6:.2f} | {fmt(r.get('cpu_ms_per_token'), '{:.3f}')} | "
                         f"{fmt(r.get('gpu_tokens_per_s'), '{:,.0f}')} |")
        lines.append("")
    for group, settings in sorted(results.get("settings", {}).items()):
        if not isinstance(settings, dict):
            continue
        keep = {k: settings.get(k) for k in ("epochs", "lr", "lr_end", "lr_hold", "anneal_end", "eval_batch", "gpu_batch",
                                             "cpu_threads", "precision", "seed", "ratio_of", "device")}
        lines += [f"Settings of the last invocation for {group}: `" + json.dumps(keep, sort_keys=True) + "`", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in sorted(results["baselines"]) if group_rows(results, g)[0] is not None]
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups):
        base, runs = group_rows(results, group)
        by = {}
        for r in runs:
            by.setdefault(f"{r['label']} ({r['mode']})", []).append(r)
        top = DIVERGED_X * base["test_ppl"]
        for label, rs in sorted(by.items()):
            rs.sort(key=lambda r: r["lstm_bytes_on_disk"])
            ys = [min(r["test_ppl"], top) for r in rs]
            line, = ax.plot([r["lstm_bytes_on_disk"] for r in rs], ys, "o-", label=label)
            for r, y in zip(rs, ys):
                if diverged(r, base):  # drawn at the top edge, its value written beside it
                    ax.plot([r["lstm_bytes_on_disk"]], [y], "^", color=line.get_color(), markersize=10)
                    ax.annotate(f"{r['test_ppl']:.3g} (diverged)", (r["lstm_bytes_on_disk"], y), fontsize=7,
                                xytext=(6, -10), textcoords="offset points")
        ax.plot([base["lstm_bytes_on_disk"]], [base["test_ppl"]], "k*", markersize=12, label="dense")
        ax.axhline(base["test_ppl"] * 1.014, color="gray", ls=":", lw=1, label="dense +1.4%")
        ax.set_xscale("log")
        if any(diverged(r, base) for r in runs):
            ax.set_ylim(top=top * 1.05)
        ax.set_xlabel("LSTM layers, bytes on disk")
        ax.set_ylabel("test perplexity")
        ax.set_title(group)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict) -> None:
    for group in sorted(results["baselines"]):
        base, runs = group_rows(results, group)
        if base is None:
            continue
        log(f"\n{group}: dense test ppl {base['test_ppl']:.2f}, LSTM {base['lstm_bytes_on_disk'] / 2**20:.2f} MiB")
        w = max([28] + [len(r["label"]) + 1 for r in runs])  # whole labels: per-entry options tell runs apart
        log(f"{'method':<{w}}{'mode':<9}{'ratio':>7}{'LSTM KiB':>11}{'test ppl':>10}{'Δppl%':>8}{'GPU tok/s':>11}"
            f"{'CPU ms/t':>10}{'ep':>4}{'min':>6}")
        log(f"{'dense':<{w}}{'-':<9}{1.0:>7.1f}{base['lstm_bytes_on_disk'] / 1024:>11.1f}{base['test_ppl']:>10.2f}{0:>+8.2f}"
            f"{fmt(base.get('gpu_tokens_per_s'), '{:,.0f}'):>11}{fmt(base.get('cpu_ms_per_token'), '{:.3f}'):>10}{'-':>4}"
            f"{fmt((base.get('train_wall_s') or float('nan')) / 60, '{:.1f}'):>6}")
        for r in runs:
            ratio = base["lstm_bits"] / r["lstm_bits"]
            log(f"{r['label']:<{w}}{r['mode']:<9}{ratio:>7.1f}{r['lstm_bytes_on_disk'] / 1024:>11.1f}{r['test_ppl']:>10.2f}"
                f"{100 * (r['test_ppl'] / base['test_ppl'] - 1):>+8.2f}{fmt(r.get('gpu_tokens_per_s'), '{:,.0f}'):>11}"
                f"{fmt(r.get('cpu_ms_per_token'), '{:.3f}'):>10}{r['epochs']:>4}"
                f"{fmt((r.get('train_wall_s') or float('nan')) / 60, '{:.1f}'):>6}")


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="trained dense model directory (else --preset/--corpus/--data train one here)")
    p.add_argument("--preset", default="medium", help="architecture + recipe (tiny, small, medium, large)")
    p.add_argument("--corpus", default="ptb")
    p.add_argument("--data", default=None, help="data directory holding <corpus>/ (default: $LMSHRINK_DATA or the cache)")
    p.add_argument("--no-verify", action="store_true", help="skip corpus checksums (tiny test corpora)")
    p.add_argument("--baseline-epochs", type=int, default=None, help="dense training epochs (default: the preset's)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list (default {DEFAULT_METHODS})")
    p.add_argument("--ratios", default="25", help="comma list of LSTM compression ratios (default 25)")
    p.add_argument("--ratio-of", choices=("lstm", "weights"), default="lstm",
                   help="lstm: the ratio is of the LSTM layers as a whole, biases (kept dense) included; weights: of "
                        "the weight matrices alone (default lstm)")
    p.add_argument("--modes", default="retrain", help="retrain (compress trained, retrain) and/or scratch (train the "
                                                      "compressed structure from a fresh init)")
    p.add_argument("--epochs", type=int, default=6, help="retraining epochs per run (default 6)")
    p.add_argument("--scratch-epochs", type=int, default=None, help="epochs for --modes scratch (default the preset's)")
    p.add_argument("--lr", type=float, default=1.0, help="retraining learning rate, held for --lr-hold epochs")
    p.add_argument("--lr-end", type=float, default=0.02, help="retraining learning rate of the last epoch")
    p.add_argument("--lr-hold", type=int, default=None, help="epochs at --lr (default: half the epochs, rounded up)")
    p.add_argument("--anneal-end", type=float, default=0.5,
                   help="fraction of retraining where doped KP and AGP pruning reach their final density (default 0.5)")
    p.add_argument("--jobs", type=int, default=1, help="method runs in parallel processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto (bf16 autocast on GPU), fp32 or bf16")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay each training step from a captured CUDA graph where the structure allows it (CUDA, "
                        "--precision fp32; doped KP and pruning train eagerly); recorded per run")
    p.add_argument("--eval-batch", type=int, default=10, help="batch size of perplexity evaluation (default 10)")
    p.add_argument("--gpu-batch", type=int, default=64, help="batch size of GPU tokens/s (default 64)")
    p.add_argument("--cpu-latency", action=argparse.BooleanOptionalAction, default=True,
                   help="measure CPU ms/token at batch 1 (Grachev et al.'s latency)")
    p.add_argument("--cpu-threads", type=int, default=1)
    p.add_argument("--cpu-repeats", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None, help="cap training steps (smoke tests)")
    p.add_argument("--seed", default="0",
                   help="random seed of the runs, or a comma list (0,1,2): every run once per seed, so that a recipe's "
                        "spread is measured in one invocation (keys of seeds other than 0 end in |sN); the baseline, "
                        "if trained here, takes the first")
    p.add_argument("--work", default=None, help="models and checkpoints (default runs/recurrent/<preset>-<corpus>)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/recurrent.json"))
    p.add_argument("--time-limit", type=float, default=None, help="seconds; stop cleanly before (resume by re-running)")
    p.add_argument("--reserve", type=float, default=60.0,
                   help="seconds before --time-limit at which training stops, for final evaluation and saving")
    p.add_argument("--remeasure", action="store_true", help="measure speeds again for finished runs")
    p.add_argument("--no-speed", action="store_true",
                   help="train and evaluate only; leave speeds for a later call (invocations side by side on one GPU "
                        "would disturb each other's timings)")
    p.add_argument("--progress", action="store_true", help="progress bars for the baseline training")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def parse_seeds(text: str) -> list[int]:
    """``--seed``: ``"1"`` -> [1]; ``"0,1,2"`` -> [0, 1, 2] (order kept, repeats dropped)."""
    try:
        seeds = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        seeds = []
    check(bool(seeds) and all(x >= 0 for x in seeds),
          f"--seed takes a non-negative integer or a comma list of them, e.g. 0,1,2; got {text!r}")
    return list(dict.fromkeys(seeds))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        try:
            res = run_one(spec)
        except Deadline:
            log("time limit: checkpoint saved, run again to resume")
            return 3
        write_json(Path(spec["run_dir"]) / "result.json", res)
        return 0
    # workers run in the repository root: paths the user gave relative to where they stand must not move
    for name in ("work", "data", "baseline", "out"):
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    try:
        return orchestrate(args)
    except LmshrinkError as e:
        print(f"recurrent.py: error: {e}", file=sys.stderr)
        return 2


def orchestrate(args) -> int:
    from lmshrink.compress import get_method
    from lmshrink.data import load_corpus
    from lmshrink.io import versions
    from lmshrink.models.lstm_lm import PRESETS
    from lmshrink.train.graphed import check_graphable
    from lmshrink.train.lm import resolve_device

    t_start = time.time()
    deadline = t_start + args.time_limit if args.time_limit else None
    args.device = str(resolve_device(args.device))
    if args.cuda_graph:
        check_graphable(torch.device(args.device), args.precision)
    check(args.preset in PRESETS, f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    check(args.epochs >= 0, "--epochs must be >= 0")
    check(args.jobs >= 1, "--jobs must be >= 1")
    args.seeds = parse_seeds(args.seed)
    args.seed = args.seeds[0]  # the baseline's, if it is trained here
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    check(all(r > 1 for r in ratios), f"--ratios must all be > 1, got {args.ratios}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    check(set(modes) <= {"retrain", "scratch"}, f"--modes takes retrain and/or scratch, got {args.modes}")
    methods = []  # (label, registry name, method options, first rate, last rate); a bad rate fails before any training
    for label, method, opts in (parse_method(m) for m in split_methods(args.methods)):
        methods.append((label, method, *retrain_options(label, opts, args)))
    recipe = PRESETS[args.preset]
    corpus = load_corpus(args.corpus, args.data, verify=not args.no_verify)
    group = f"{args.preset}/{args.corpus}"
    work = Path(args.work) if args.work else ROOT / "runs" / "recurrent" / f"{args.preset}-{args.corpus}"
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    results = read_json(out, {"benchmark": "recurrent", "baselines": {}, "runs": {}})
    # a file made by a --seed N invocation before seeds entered the keys holds seed N's runs under seed 0's key
    results["runs"] = {(k + f"|s{r['seed']}" if r.get("seed") and not k.rsplit("|", 1)[-1].startswith("s") else k): r
                       for k, r in results.get("runs", {}).items()}
    results.setdefault("baselines", {})
    results.setdefault("settings", {})[group] = {k: v for k, v in vars(args).items() if k not in ("worker",)}
    results.setdefault("versions", {})[group] = versions()
    results.setdefault("data_checksums", {})[group] = corpus.checksums

    def save():
        """Merge this group's entries into the file under a lock, so runs of other presets can share it."""
        import fcntl

        out.parent.mkdir(parents=True, exist_ok=True)
        import hashlib
        import tempfile

        lock_path = Path(tempfile.gettempdir()) / f"recurrent-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]}.lock"
        with open(lock_path, "w") as lock:  # outside the results folder: nothing stray to commit
            fcntl.flock(lock, fcntl.LOCK_EX)
            disk = read_json(out, {"benchmark": "recurrent", "baselines": {}, "runs": {}})
            for section in ("baselines", "settings", "versions", "data_checksums"):
                disk.setdefault(section, {})
                if group in results.get(section, {}):
                    disk[section][group] = results[section][group]
            disk.setdefault("runs", {}).update({k: v for k, v in results["runs"].items() if k.startswith(group + "|")})
            disk["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_json(out, disk)
            out.with_suffix(".md").write_text(markdown(disk))
            results["baselines"].update({g: b for g, b in disk["baselines"].items() if g != group})
            results["runs"].update({k: v for k, v in disk["runs"].items() if not k.startswith(group + "|")})

    # 1. baseline (trained here if needed; resumable) and its evaluation in this run
    try:
        bdir = ensure_baseline(args, corpus, recipe, group, work, deadline)
    except Deadline:
        log("time limit reached while training the baseline; checkpoint saved. Run the same command again.")
        save()
        return 3
    base = results["baselines"].get(group)
    if base is None or base.get("model_dir") != str(bdir) or base.get("eval_batch") != args.eval_batch \
            or "lstm_weight_bits" not in base:
        base = evaluate_baseline(args, corpus, recipe, bdir, group)
        results["baselines"][group] = base
        save()
    log(f"[{group}] dense baseline: test ppl {base['test_ppl']:.2f}, LSTM {base['lstm_bytes_on_disk'] / 2**20:.2f} MiB on disk")

    # 2. the runs still to do
    todo = []
    for label, method, opts, lr, lr_end in methods:
        opts = dict(opts)
        cell_clip = opts.pop("cell_clip", None)  # the model's option, not the method's (module doc)
        distill = opts.pop("distill", None) or None  # the training's (module doc); 0 is no teacher
        opts = method_defaults(method, opts, args)
        try:
            get_method(method)
        except LmshrinkError as e:
            log(f"skipping {label}: {e}")
            results["runs"][f"{group}|{label}"] = {"group": group, "label": label, "status": "skipped", "reason": str(e)}
            continue
        for mode in modes:
            epochs = args.epochs if mode == "retrain" else (args.scratch_epochs or recipe.epochs)
            for ratio, seed in itertools.product(ratios if takes_ratio(method) and "ratio" not in opts else [None],
                                                 args.seeds):
                rtxt = "-" if ratio is None else f"{ratio:g}x" + ("w" if args.ratio_of == "weights" else "")
                key = f"{group}|{label}|{rtxt}|{mode}|e{epochs}"
                w_ratio = ratio
                if ratio is not None and args.ratio_of == "lstm":
                    w_ratio = weight_ratio(ratio, base, key)
                key += f"|s{seed}" if seed else ""  # seed 0 keeps the key runs always had
                if results["runs"].get(key, {}).get("status") == "ok":
                    continue
                run_dir = work / "runs" / slug(key.split("|", 1)[1])
                hold = args.lr_hold if args.lr_hold is not None else math.ceil(epochs / 2)
                spec = {"key": key, "group": group, "label": label, "method": method, "options": opts, "ratio": w_ratio,
                        "ratio_target": ratio, "ratio_of": args.ratio_of,
                        "mode": mode, "epochs": epochs, "preset": args.preset, "corpus": args.corpus, "data": args.data,
                        "verify": not args.no_verify, "recipe": dict(vars(recipe)), "baseline_dir": str(bdir),
                        "run_dir": str(run_dir), "device": args.device, "precision": args.precision, "seed": seed,
                        "cuda_graph": args.cuda_graph, "cell_clip": cell_clip, "distill": distill,
                        "lr": lr, "lr_end": lr_end, "lr_hold": hold, "eval_batch": args.eval_batch,
                        "max_steps": args.max_steps, "deadline": deadline, "reserve": args.reserve,
                        "threads": max(1, (os.cpu_count() or 1) // args.jobs)}
                todo.append(spec)
    save()

    # 3. run them, --jobs at a time, each in its own process (results merged as they finish)
    pending, running, partial = list(todo), {}, []
    while pending or running:
        if pending and deadline and time.time() > deadline - args.reserve - 60:
            partial += [sp["key"] for sp in pending]  # too late to start: a run would only pause at once
            log(f"time limit: {len(pending)} run(s) not started, left for the next call")
            pending = []
        while pending and len(running) < args.jobs:
            spec = pending.pop(0)
            Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(spec["run_dir"]) / "result.json").unlink(missing_ok=True)
            spec_path = Path(spec["run_dir"]) / "spec.json"
            write_json(spec_path, spec)
            logf = open(Path(spec["run_dir"]) / "log.txt", "a")
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                                    stdout=logf, stderr=subprocess.STDOUT, cwd=str(ROOT))
            running[proc.pid] = (proc, spec, logf)
            log(f"started {spec['key']} (pid {proc.pid})")
        time.sleep(1.0)
        for pid, (proc, spec, logf) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            logf.close()
            del running[pid]
            res_path = Path(spec["run_dir"]) / "result.json"
            if rc == 0 and res_path.is_file():
                res = json.loads(res_path.read_text())
                res["group"] = group
                results["runs"][spec["key"]] = res
                log(f"finished {spec['key']}: test ppl {res['test_ppl']:.2f} "
                    f"({100 * (res['test_ppl'] / base['test_ppl'] - 1):+.2f}%), {base['lstm_bits'] / res['lstm_bits']:.1f}x")
            elif rc == 3:
                partial.append(spec["key"])
                log(f"paused {spec['key']} at the time limit (checkpoint kept)")
            else:
                tail = (Path(spec["run_dir"]) / "log.txt").read_text()[-2000:]
                results["runs"][spec["key"]] = {"group": group, "label": spec["label"], "status": "failed", "rc": rc,
                                                "log_tail": tail}
                log(f"FAILED {spec['key']} (rc {rc}); log: {Path(spec['run_dir']) / 'log.txt'}\n{tail[-800:]}")
            save()

    # 4. speeds, one model at a time (parallel runs would disturb each other's timings)
    vocab_size = len(corpus.vocab)
    targets = [("baseline", base)] + [(k, r) for k, r in results["runs"].items()
                                      if r.get("group") == group and r.get("status") == "ok"]
    for key, r in ([] if args.no_speed else targets):
        if deadline and time.time() > deadline - 20:
            log("time limit: speeds left for the next call")
            break
        have = ("gpu_tokens_per_s" in r or args.device == "cpu") and ("cpu_ms_per_token" in r or not args.cpu_latency)
        if have and not args.remeasure:
            continue
        r.update(measure_speed(r["model_dir"], vocab_size, args))
        save()

    results["baselines"][group]["wall_s_last_call"] = time.time() - t_start
    save()
    plot(results, out.with_suffix(".png"))
    print_table(results)
    if partial or any(r.get("status") == "failed" for r in results["runs"].values() if r.get("group") == group):
        log(f"\n{len(partial)} run(s) paused at the time limit; run the same command again to finish them.")
        return 3 if partial else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
