"""Embedding + softmax compression of LSTM LMs: SVD, pruning, quantization, GroupReduce (+ quantization).

Reproduces the comparison of Chen et al. 2018 ("GroupReduce", Sec. 4): every method compresses the
embedding and the softmax, each to the same ratio (theoretical bits vs dense fp32), then the model is
retrained with SGD, the learning rate divided by 10 whenever validation perplexity stops improving
(``lmshrink.train.lm.finetune_lm``; the first rate is ``--finetune-lr``, default the recipe's lr / 10: on
WikiText-2 medium that rate made GroupReduce's first epoch worse; 6 epochs from 0.01 then met both targets there,
``results/vocab_wikitext2_medium_ft6.json``; an epoch that diverges counts as not improving).
``--cuda-graph`` replays each retraining step from a captured CUDA graph (models with training hooks, such as
``prune_agp``'s first epoch, and CSR-stored pruned layers train eagerly; each run records which under
``finetune_cuda_graph``). Each run records test
(and valid) perplexity before and after retraining, the dense baseline's perplexity from the same run,
bytes on disk, bits, tokens/s and how long compression itself took. Published anchor (OBW, bigLSTM):
GroupReduce 6.6x on embedding + softmax, 26x with quantization. Targets here: GroupReduce >= 6.6x within +1%
test perplexity after retraining, >= 26x with quantization within +3%, and better than SVD and pruning at every
matched rate.

Methods (``--methods``):
  svd            truncated SVD of each matrix
  prune          one-shot magnitude pruning, CSR storage, then retraining of the kept weights
  prune_agp      gradual pruning (AGP, Zhu & Gupta 2017) during the first retraining epoch, then CSR + retraining
  quantize       uniform k-bit codes, k the most bits that meet the rate (2..8; 20x is out of reach)
  groupreduce    GroupReduce (frequency blocks, weighted SVD, refinement), then retraining of the factors
  groupreduce_q  GroupReduce with ranks sized for --gq-bits factors (``plan_bits``), retrained in float,
                 then quantized (quantize after retraining); ``--gq-rates`` are the overall rates
  dense_retrained the control: the uncompressed model through the same retraining (one run, ratio 1). Why: a
                 retraining recipe that regularizes (``--finetune-dropout``) can lift a model trained without
                 it (PTB small) above its own baseline, and then only this row says what compression cost

``--finetune-lr 0.1,0.01`` runs every method at each first rate (keys ``method@rate@lr0.1``) and judges each
(method, rate) at the rate its *validation* perplexity prefers (``done_runs``): one shared rate favours
whichever method likes it (PTB small, CPU, 10x: at 0.01 GroupReduce 123.52 vs pruning 124.23, at 0.1 121.20
vs 120.50). ``--finetune-lr-for svd=0.01`` (repeatable) gives one method its own first rates instead, e.g. each at
the rate validation chose for it at another ratio, at half the cost of running every method at every rate
(``results/vocab_ptb_large_rates.json``); the results' ``setup.finetune_lr_for`` records it.

``--reuse OLD.json`` (repeatable) adopts the finished runs of an earlier result file made from the same
dense model (its in-run dense test perplexity must match this run's to 1e-9 relative) with the same retraining
epochs and method settings, re-keyed as this run would key them; only what is missing runs. That is how runs
made at one first rate join runs at another without redoing either (``setup.reused_from`` names the files).

Results go to ``--results`` (JSON, rewritten after every finished run; a rerun skips finished runs, and a
run cut short resumes after its last finished retraining epoch, kept in ``WORK/finetune/``), plus a Markdown
table (``.md``) and a plot of test perplexity against bytes on disk (``.png``). The file must be this script's:
one retraining recipe (epochs, dropout, patience, distillation) per file, and another JSON there (such as
``results/vocab.json``, the report's) is refused rather than overwritten.

The recipe that met both targets on PTB large (2026-11-23, ``results/vocab_ptb_large_s10_ft10.json``:
GroupReduce 6.6x +0.5%, with quantization 26x +0.5%, SVD +2.5%, pruning +9.3%) was 10 blocks, rank ~
sqrt(frequency), first rate 0.01, 10 epochs; with 5 blocks, rank ~ frequency, first rate 0.1 and 2 epochs
GroupReduce was +4.9% on the same model size (``results/vocab_ptb_large.json``):

    python benchmarks/vocab.py --baseline runs/baselines/ptb-large --data ../shared/data \
        --num-blocks 10 --rank-rule sqrt_frequency --finetune-lr 0.01 --finetune-epochs 10 \
        --methods groupreduce,groupreduce_q,svd,prune --rates 6.6 --gq-rates 26 --jobs 2 \
        --results benchmarks/results/vocab_ptb_large_s10_ft10.json --time-limit 500
    python benchmarks/vocab.py --corpus ptb --preset tiny --data DIR --train-epochs 1 ...   # train in-process
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmshrink.compress import Plan, compress, make_config  # noqa: E402
from lmshrink.data import load_corpus  # noqa: E402
from lmshrink.errors import LmshrinkError, check  # noqa: E402
from lmshrink.io import load_model_dir, save_model_dir, versions, write_json_atomic  # noqa: E402
from lmshrink.layers import CompressedLayer, tensor_bits  # noqa: E402
from lmshrink.measure import bytes_on_disk, lm_tokens_per_second, other_gpu_processes, totals  # noqa: E402
from lmshrink.methods.prune import finalize_pruning_  # noqa: E402
from lmshrink.methods.quantize import quantize_model_  # noqa: E402
from lmshrink.models.lstm_lm import PRESETS, Preset, build_from_preset, preset_dict  # noqa: E402
from lmshrink.train.distill import check_distill
from lmshrink.train.graphed import check_graphable
from lmshrink.train.lm import (  # noqa: E402
    check_finetune_dropout,
    check_finetune_lr,
    check_patience,
    evaluate_ppl,
    finetune_lm,
    resolve_device,
    seed_everything,
    train_lm,
)

METHODS = ("svd", "prune", "prune_agp", "quantize", "groupreduce", "groupreduce_q", "dense_retrained")
GQ_GROUP = 128  # values per fp16 (scale, min) when GroupReduce factors are quantized


def method_config(method: str, rate: float, args) -> dict | None:
    gr = {"num_blocks": args.num_blocks, "refine_iters": args.refine_iters, "rank_rule": args.rank_rule,
          "rank_multiple": args.rank_multiple}
    if method == "svd":
        return {"method": "svd", "ratio": rate}
    if method == "prune":
        return {"method": "prune", "ratio": rate}
    if method == "prune_agp":
        return {"method": "prune", "ratio": rate, "schedule": "agp", "agp_end": 0.75, "prune_every": 20}
    if method == "quantize":
        return {"method": "quantize", "ratio": rate}
    if method == "groupreduce":
        return {"method": "groupreduce", "ratio": rate, **gr}
    if method == "dense_retrained":  # the control: the uncompressed model through the same retraining
        return None
    if method == "groupreduce_q":  # float GroupReduce sized for --gq-bits factors: retrained, then quantized
        return {"method": "groupreduce", "ratio": rate, "plan_bits": args.gq_bits, "group_size": GQ_GROUP, **gr}
    raise LmshrinkError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def vocab_bits(model) -> int:
    """Theoretical bits of the embedding + softmax weights (softmax bias excluded on both sides)."""
    total = 0
    for name in ("encoder", "decoder"):
        m = model.get_submodule(name)
        if isinstance(m, CompressedLayer):
            b = m.bits() - (tensor_bits(m.bias) if getattr(m, "bias", None) is not None else 0)
            total += b
        elif name == "decoder" and getattr(model.config, "get", lambda k: None)("tie_weights"):
            continue  # a dense tied softmax shares the embedding's weight
        else:
            total += tensor_bits(m.weight)
    return total


def speed(model, vocab_size, device) -> float:
    if device.type == "cuda":
        return lm_tokens_per_second(model, vocab_size, device, batch_size=64, repeats=20, warmup=5)["tokens_per_s"]
    return lm_tokens_per_second(model, vocab_size, "cpu", batch_size=1, repeats=10, warmup=3)["tokens_per_s"]


def measure_speeds(results: dict, dense, vocab_size: int, device, work: Path, log, rounds: int = 3,
                   may_go=lambda took: True) -> bool:
    """tokens/s of every finished run next to the dense model, in this (main) process, one model at a time.

    Why here and not in the run: runs go in parallel workers (``--jobs``), and a speed taken while other
    runs share the GPU or cores is not comparable with a dense figure taken alone. Dense and compressed
    are timed in interleaved rounds; the ratio is the median of per-round ratios. ``may_go(took)`` (the wall
    seconds of the timings so far) says whether another may start: also after ``--time-limit`` has stopped new
    runs, the runs that finished get timed in the time left (stop 22: two files had no speeds at all because a
    paused invocation skipped this). Returns False when it stopped with runs left untimed.
    """
    took: list[float] = []
    for key, r in sorted(results["runs"].items()):
        if r.get("status") != "done" or "speed_vs_dense" in r:
            continue
        model_dir = work / "models" / key
        if not (model_dir / "manifest.json").is_file():
            continue
        if not may_go(took):
            log(f"time limit: {key} and later runs not timed; rerun the same command to time them")
            return False
        t0 = time.monotonic()
        model, _ = load_model_dir(model_dir, device="cpu")
        pairs = []
        for _ in range(rounds):
            d = speed(dense, vocab_size, device)
            c = speed(model, vocab_size, device)
            pairs.append((c, d))
        r["tokens_per_s"] = statistics.median(c for c, _ in pairs)
        r["dense_tokens_per_s_beside"] = statistics.median(d for _, d in pairs)
        r["speed_vs_dense"] = statistics.median(c / d for c, d in pairs)
        r["speed_rounds"] = [{"tokens_per_s": c, "dense_tokens_per_s": d} for c, d in pairs]  # what the medians came from
        if str(device).startswith("cuda"):  # another script on the same GPU (a GPU driver's side-by-side jobs) skews it
            r["speed_other_gpu_processes"] = other_gpu_processes({os.getpid()})
        # retraining on a GPU turns TF32 matmuls on (train.lm.autocast_for), and GroupReduce's verdict against the
        # dense softmax flips with it (H100, PTB large shape: 1.19x dense at true fp32, 0.86x with TF32; speed.py)
        r["matmul_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32) if str(device).startswith("cuda") else None
        log(f"{key}: {r['tokens_per_s']:,.0f} tok/s, {r['speed_vs_dense']:.2f}x dense (side by side)")
        took.append(time.monotonic() - t0)
    return True


def evaluate(model, corpus, args, device) -> dict:
    return {s: evaluate_ppl(model, corpus.splits[s], args.eval_batch, args.bptt_eval, device) for s in ("valid", "test")}


def load_or_train_baseline(args, device, work: Path, log):
    if args.baseline:
        model, manifest = load_model_dir(args.baseline)
        corpus = load_corpus(manifest.get("corpus") or args.corpus, args.data, verify=not args.no_verify)
        if "vocab_sha256" in manifest:
            check(corpus.vocab.fingerprint() == manifest["vocab_sha256"], "the baseline's vocabulary does not match the corpus")
        recipe_d = manifest.get("config", {}).get("recipe")
        recipe = Preset(**recipe_d) if recipe_d else PRESETS[args.preset]
        return model, corpus, recipe, {"baseline": str(args.baseline), "corpus": corpus.name,
                                       "preset": manifest.get("config", {}).get("preset")}
    corpus = load_corpus(args.corpus, args.data, verify=not args.no_verify)
    recipe = PRESETS[args.preset]
    out = work / f"baseline-{args.corpus}-{args.preset}"
    if (out / "manifest.json").exists():
        model, _ = load_model_dir(out)
        log(f"baseline: loaded {out}")
    else:
        log(f"baseline: training {args.preset} on {args.corpus} in-process ({args.train_epochs or recipe.epochs} epochs)")
        seed_everything(args.seed)  # the initial weights follow --seed
        model = build_from_preset(args.preset, len(corpus.vocab))
        res = train_lm(model, corpus, recipe, out_dir=out, device=device, epochs=args.train_epochs,
                       max_steps=args.max_steps, seed=args.seed, progress=args.progress, precision=args.precision, log=log)
        model = res["model"].cpu()
        save_model_dir(model, out, vocab=corpus.vocab, extra={
            "corpus": corpus.name, "data_checksums": corpus.checksums,
            "config": {"preset": args.preset, "recipe": preset_dict(args.preset), "epochs": args.train_epochs}})
    return model, corpus, recipe, {"baseline": str(out), "corpus": corpus.name, "preset": args.preset}


def parse_lrs(text: str | None) -> list[float | None]:
    """``--finetune-lr``: None (the recipe's lr / 10) or a comma list of positive rates, each checked."""
    if text is None:
        return [None]
    try:
        lrs = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise LmshrinkError(f"finetune learning rate: --finetune-lr takes numbers separated by commas, got {text!r}") from None
    check(lrs and len(set(lrs)) == len(lrs), f"finetune learning rate: --finetune-lr needs distinct rates, got {text!r}")
    for lr in lrs:
        check_finetune_lr(lr)
    return lrs


def parse_lrs_for(items: list[str]) -> dict[str, list[float | None]]:
    """``--finetune-lr-for METHOD=RATES`` (repeatable): a method's own first rates, each checked like
    ``--finetune-lr``'s. Why: the first rate a method's validation prefers differs by method (PTB large, 6.6x:
    SVD 0.01, GroupReduce and pruning 0.1), and running every method at every rate doubles the cost."""
    out = {}
    for item in items:
        method, sep, rates = item.partition("=")
        check(sep and method in METHODS, f"--finetune-lr-for takes METHOD=RATES with METHOD one of {', '.join(METHODS)}, "
                                         f"got {item!r}")
        check(method not in out, f"--finetune-lr-for {method} given twice")
        out[method] = parse_lrs(rates)
    return out


def lrs_for(method: str, args) -> list[float | None]:
    """The first retraining rates ``method`` runs at: its ``--finetune-lr-for`` list, else ``--finetune-lr``'s."""
    return args.method_lrs.get(method, args.finetune_lrs)


def run_key(method: str, rate: float, lr: float | None, several_lrs: bool) -> str:
    """``method@rate``, plus ``@lrX`` when ``--finetune-lr`` lists several first rates (one run per rate)."""
    return f"{method}@{rate:g}" + (f"@lr{lr:g}" if several_lrs else "")


def asked_rates(method: str, args) -> list[float]:
    """The rates this run asks of ``method`` (``--gq-rates`` for groupreduce_q, else ``--rates``)."""
    if method == "dense_retrained":
        return [1.0]
    return [float(x) for x in (args.gq_rates if method == "groupreduce_q" else args.rates).split(",")]


def load_reuse(paths: list[str]) -> list[tuple[str, dict]]:
    """Read the ``--reuse`` files up front (before any work) so that a bad one fails fast."""
    out = []
    for p in paths:
        try:
            old = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise LmshrinkError(f"--reuse {p}: cannot read it as JSON ({e.__class__.__name__})") from None
        check(isinstance(old, dict) and isinstance(old.get("runs"), dict) and "test_ppl" in old.get("dense", {}),
              f"--reuse {p}: not a vocab.py result (no runs or dense model)")
        out.append((p, old))
    return out


def reuse_runs(results: dict, reuse: list[tuple[str, dict]], methods: list[str], args, several: bool, log) -> None:
    """Adopt the finished runs of earlier files of the same dense model (see the module docstring)."""
    dense = results["dense"]["test_ppl"]
    for p, old in reuse:
        od = old["dense"]["test_ppl"]
        check(abs(od - dense) <= 1e-9 * dense, f"--reuse {p}: its dense model tested {od:.6f}, this run's {dense:.6f}: "
                                               "not the same baseline")
        theirs, mine = recorded_retraining(old.get("setup", {})), retraining_of(args)
        for what in mine:
            check(theirs[what] == mine[what], f"--reuse {p}: retrained with {what} {theirs[what]}, this run {mine[what]}")
        n = 0
        for r in old["runs"].values():
            lr = r.get("finetune_lr")
            if (r.get("status") not in ("done", "refused") or r.get("method") not in methods or lr not in lrs_for(r["method"], args)
                    or r.get("rate") not in asked_rates(r["method"], args)):
                continue  # not asked for in this run
            want = method_config(r["method"], r["rate"], args) or {}
            if r["status"] == "done" and any(saved_setting(r.get("config"), k, want) != v for k, v in want.items()):
                continue  # other blocks, rank rule, bits...: not this run's recipe
            key = run_key(r["method"], r["rate"], lr, several)
            if key not in results["runs"]:
                results["runs"][key] = r
                n += 1
        log(f"--reuse {p}: {n} finished run(s) adopted")
    if reuse:
        results["setup"]["reused_from"] = sorted({p for p, _ in reuse})


def saved_setting(config: dict | None, key: str, want: dict):
    """A finished run's ``key`` setting; a key its config lacks was saved before that option existed, when the run
    had the option's default (``rank_multiple`` came in stop 14: older GroupReduce runs are rank_multiple=1)."""
    config = config or {}
    if key in config:
        return config[key]
    defaults = {f.name: f.default for f in dataclasses.fields(type(make_config(**want)))}
    return defaults.get(key)


def distill_setting(args) -> dict | None:
    """How retraining used the dense model as a teacher (None: it did not), as results record it."""
    return None if not args.distill else {"weight": args.distill, "temperature": args.distill_temperature}


def retraining_of(args) -> dict:
    """This run's retraining settings that runs of one results file must share, by the name errors give them."""
    return {"epochs": args.finetune_epochs, "dropout": args.finetune_dropout, "patience": args.finetune_patience,
            "distillation": distill_setting(args)}


def read_results(path: Path) -> dict:
    """An earlier ``--results`` file to continue ({} when there is none). Anything else there (another script's
    JSON, such as ``vocab_report.py``'s ``vocab.json``, or a file that does not parse) is refused, not overwritten."""
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LmshrinkError(f"--results {path}: cannot read it as JSON ({e.__class__.__name__}): give another --results") from None
    check(isinstance(results, dict) and isinstance(results.get("runs"), dict) and isinstance(results.get("setup"), dict),
          f"--results {path}: exists and is not a vocab.py result (no runs and setup): give another --results")
    return results


def recorded_retraining(setup: dict) -> dict:
    """The same settings as a results file's ``setup`` records them (a file from before patience existed: 0, the
    paper's rule)."""
    return {"epochs": setup.get("finetune_epochs"), "dropout": setup.get("finetune_dropout"),
            "patience": setup.get("finetune_patience", 0), "distillation": setup.get("finetune_distill")}


def run_one(method, rate, lr, key, dense, corpus, recipe, args, device, work: Path, log) -> dict:
    counts = corpus.vocab.counts_tensor()
    spec = method_config(method, rate, args)
    cfg = make_config(**spec) if spec is not None else None  # None: dense_retrained, nothing compressed
    config = cfg.to_dict() if cfg else None
    model = copy.deepcopy(dense).cpu()
    names = [n for n in ("encoder", "decoder")]
    t0 = time.perf_counter()
    if cfg is not None:
        compress(model, Plan({n: cfg for n in names}), {"word_counts": counts})
    compress_s = time.perf_counter() - t0
    model.to(device)
    before_model = model
    if method == "groupreduce_q":  # quantized without retraining, for the "before" column
        before_model = copy.deepcopy(model)
        quantize_model_(before_model, args.gq_bits, GQ_GROUP)
    if method == "prune_agp":  # before retraining the AGP layer is still dense: report one-shot at the final mask
        before_model = copy.deepcopy(model)
        for m in before_model.modules():
            if hasattr(m, "prune_to_keep"):
                m.prune_to_keep(m.final_keep)
        finalize_pruning_(before_model)
    before = evaluate(before_model, corpus, args, device)
    del before_model
    ft_hist, ft_graph, t_ft = [], None, time.perf_counter()
    epochs = args.finetune_epochs
    if method == "prune_agp" and epochs > 0:
        # AGP runs inside one epoch (train_lm's progress goes 0 -> 1 over it), at the retraining LR
        train_lm(model, corpus, recipe, device=device, epochs=1, seed=args.seed + 1, progress=args.progress,
                 precision=args.precision,
                 lr_fn=lambda e: recipe.lr / 10, log=lambda *_: None)
        epochs -= 1
    finalize_pruning_(model)
    if epochs > 0:
        # kept per epoch: a run cut by --time-limit's SIGINT (or a lost machine) resumes after its last epoch
        ft = finetune_lm(model, corpus, recipe, epochs, lr=lr, device=device, progress=args.progress,
                         seed=args.seed, precision=args.precision, log=log, checkpoint_dir=work / "finetune" / key,
                         cuda_graph=args.cuda_graph, dropout=args.finetune_dropout,
                         teacher=copy.deepcopy(dense) if args.distill else None, distill=args.distill,
                         distill_temperature=args.distill_temperature, patience=args.finetune_patience)
        model, ft_hist, ft_graph = ft["model"], ft["history"], ft["cuda_graph"]
    finetune_s = time.perf_counter() - t_ft
    if method == "groupreduce_q":
        quantize_model_(model, args.gq_bits, GQ_GROUP)
    after = evaluate(model, corpus, args, device)
    out_dir = work / "models" / key
    save_model_dir(model.cpu(), out_dir, vocab=corpus.vocab, extra={"corpus": corpus.name, "compression": {
        "method": method, "rate": rate, "config": config}})
    model.to(device)
    tot = totals(model)
    return {"method": method, "rate": rate, "config": config, "status": "done",
            "vocab_ratio": args._dense_vocab_bits / vocab_bits(model),
            "test_ppl_before": before["test"], "valid_ppl_before": before["valid"],
            "test_ppl_after": after["test"], "valid_ppl_after": after["valid"],
            "params": tot["params"], "bits": tot["bits"], "bytes_on_disk": bytes_on_disk(out_dir)["total"],
            "compress_s": compress_s,  # speed: measure_speeds, afterwards, alone
            "finetune_s": finetune_s, "finetune_epochs": args.finetune_epochs, "finetune_lr": lr,
            "finetune_history": ft_hist, **({"finetune_cuda_graph": ft_graph} if ft_graph is not None else {}),
            "layers": {n: getattr(model.get_submodule(n), "spec", lambda: "dense")() for n in names}}


def run_guarded(m, r, lr, key, dense, corpus, recipe, args, device, work, log) -> dict:
    """run_one, with a refused setting (a rate the method cannot meet) recorded instead of raised."""
    t0 = time.monotonic()
    try:
        row = run_one(m, r, lr, key, dense, corpus, recipe, args, device, work, log)
    except LmshrinkError as e:
        row = {"method": m, "rate": r, "finetune_lr": lr, "status": "refused", "error": str(e)}
    row["wall_s"] = time.monotonic() - t0
    return row


def _worker(m: str, r: float, lr: float | None, key: str, ns: dict) -> dict:
    """One run in a worker process: it loads the baseline and corpus itself (only names cross processes)."""
    args = argparse.Namespace(**ns)
    # parallel workers share the cores: oversubscribed OpenMP threads slow every CPU SVD many times over
    torch.set_num_threads(args.cpu_threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1)))
    device = resolve_device(args.device)
    quiet = lambda *a, **k: None  # noqa: E731 - the parent logs each finished run
    dense, corpus, recipe, _ = load_or_train_baseline(args, device, Path(args.work), quiet)
    return run_guarded(m, r, lr, key, dense.to(device).eval(), corpus, recipe, args, device, Path(args.work), quiet)


def run_parallel(todo, args, record, out_of_time, log) -> bool:
    """``--jobs`` runs at a time in worker processes (one GPU holds several batch-20 LSTMs); returns whether the
    time limit left runs undone. Tokens/s are then measured while other runs share the device."""
    import concurrent.futures as cf
    import multiprocessing as mp

    ns = dict(vars(args))
    pending, paused = list(todo), False
    with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        running = {}
        try:
            while pending or running:
                while pending and len(running) < args.jobs and not out_of_time():
                    run = pending.pop(0)
                    running[pool.submit(_worker, *run, ns)] = run
                if pending and out_of_time():
                    log(f"time limit reached with {len(pending)} run(s) not started; rerun the same command to continue")
                    paused, pending = True, []
                if not running:
                    break
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    key = running.pop(f)[3]
                    try:
                        row = f.result()
                    except Exception as e:  # noqa: BLE001 - one worker's crash must not lose the runs still in flight
                        # not recorded, so the same command runs it again (a refused run is recorded and skipped)
                        log(f"{key}: failed in its worker ({e.__class__.__name__}: {e}); rerun the same command to retry it")
                        paused = True
                        continue
                    record(key, row)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return paused


# (method, largest allowed test-ppl increase after retraining, ratio to reach): the targets
TARGETS = (("groupreduce", 0.01, 6.6), ("groupreduce_q", 0.03, 26.0))
RIVALS = ("svd", "prune", "prune_agp")  # GroupReduce must beat each at every matched rate
UNCONVERGED = 0.98  # a retrained run below this share of dense perplexity: the baseline was not converged
# a win by less than this share of dense perplexity is reported as within noise: the same PTB small recipe and seed
# trained three times gave test 112.51, 112.55 and 113.31 (baselines.json), a 0.7% spread
NOISE = 0.005


def may_start(elapsed: float, time_limit: float, took: list[float]) -> bool:
    """Whether a new run may start ``elapsed`` seconds in (``--time-limit``; 0: no limit): not after the limit, nor
    when the runs finished so far in this invocation (their median wall time, taken under the same load of parallel
    jobs) say it would end after it. Why: a run cut at the end of a lent machine is lost with the machine, and a
    fixed margin either wastes the machine's last minutes (stop 21: 4 idle minutes) or starts runs that cannot end."""
    if not time_limit:
        return True
    if elapsed > time_limit:
        return False
    return not took or elapsed + statistics.median(took) <= time_limit


def win_note(margin: float, dense_ppl: float) -> str:
    """'' for a clear win; a warning when GroupReduce's lead over its best rival is within run-to-run noise."""
    return f", by only {margin:.2f}: within run-to-run noise" if margin < NOISE * dense_ppl else ""


def done_runs(results: dict) -> list[dict]:
    """Finished runs, one per (method, rate): where several first retraining rates ran, the one with the best
    *validation* perplexity after retraining (each method at its own rate, chosen without looking at test)."""
    best: dict[tuple, dict] = {}
    for r in results["runs"].values():
        if r.get("status") != "done":
            continue
        k = (r["method"], r["rate"])
        if k not in best or r["valid_ppl_after"] < best[k]["valid_ppl_after"]:
            best[k] = r
    return list(best.values())


def best_ratio_within(done: list[dict], dense_ppl: float, method: str, tol: float) -> float | None:
    """The largest ratio ``method`` reached within ``tol`` (relative) of the dense test perplexity."""
    ok = [r["vocab_ratio"] for r in done if r["method"] == method and r["test_ppl_after"] <= dense_ppl * (1 + tol)]
    return max(ok) if ok else None


def reference_ppl(results: dict) -> tuple[float, str]:
    """The test perplexity the verdicts compare with: the ``dense_retrained`` control's where it ran (the
    uncompressed model through the same retraining -- with ``--finetune-dropout`` on PTB small it drops from
    112.6 to 100.1, so "within +1% of the baseline" would credit compression with what the retraining did),
    else the dense baseline's, both evaluated in this run."""
    ctrl = next((r for r in done_runs(results) if r["method"] == "dense_retrained"), None)
    if ctrl is not None:
        return ctrl["test_ppl_after"], "dense_retrained"
    return results["dense"]["test_ppl"], "dense"


def targets(results: dict) -> list[str]:
    """The issue's targets, checked on this run's numbers (never hard-coded)."""
    d, ref = reference_ppl(results)
    done = done_runs(results)

    out = []
    if ref == "dense_retrained":
        out.append(f"- verdicts against dense_retrained (test ppl {d:.2f}): the uncompressed model retrained the same way")
    below = [r for r in done if r["test_ppl_after"] < UNCONVERGED * d]
    if below:  # retraining went on training an unconverged baseline: "within +1% of dense" is then no achievement
        out.append(f"- CAUTION: {len(below)} run(s) ended more than 2% below the dense test perplexity: the baseline "
                   "is not converged, and the verdicts below say little about compression")
    when = "after retraining" if results["setup"].get("finetune_epochs") else "WITHOUT retraining (this run retrains nothing)"
    for method, tol, goal in TARGETS:
        b = best_ratio_within(done, d, method, tol)
        verdict = "no run" if not any(r["method"] == method for r in done) else (
            f"{b:.1f}x" + (" (met)" if b >= goal else " (NOT met)") if b else "none within tolerance (NOT met)")
        out.append(f"- {method}: largest ratio within +{100 * tol:.0f}% test ppl {when}: {verdict}; target >= {goal}x")
    for rate in sorted({r["rate"] for r in done if r["method"] == "groupreduce"}):
        g = next(r for r in done if r["method"] == "groupreduce" and r["rate"] == rate)
        rivals = [r for r in done if r["method"] in RIVALS and r["rate"] == rate]
        if not rivals:
            out.append(f"- {rate:g}x: groupreduce {g['test_ppl_after']:.2f} (no SVD or pruning run at this rate)")
            continue
        worse = [r["method"] for r in rivals if r["test_ppl_after"] <= g["test_ppl_after"]]
        margin = min(r["test_ppl_after"] for r in rivals) - g["test_ppl_after"]
        out.append(f"- {rate:g}x: groupreduce {g['test_ppl_after']:.2f} vs " + ", ".join(
            f"{r['method']} {r['test_ppl_after']:.2f}" for r in rivals)
            + (f" (better than all{win_note(margin, d)})" if not worse else f" (not better than {', '.join(worse)})"))
    return out


def fmt_speed(r: dict) -> str:
    """Compressed / dense tokens/s, measured side by side; '-' where no such measurement exists (runs timed
    inside parallel workers before 2026-11-23 kept that figure as ``tokens_per_s_in_worker``, not shown);
    marked where other processes shared the GPU while it was timed (or nvidia-smi could not tell)."""
    if "speed_vs_dense" not in r:
        return "-"
    others = r.get("speed_other_gpu_processes", 0)
    note = " (GPU shared)" if others else " (GPU sharing unknown)" if others is None else ""
    return f"{r['speed_vs_dense']:.2f}{note}"


def write_outputs(results: dict, path: Path) -> str:
    write_json_atomic(path, results)
    d = results["dense"]
    lines = [f"Dense baseline ({results['setup'].get('corpus')}, {results['setup'].get('preset')}): test ppl "
             f"{d['test_ppl']:.2f}, {d['bytes_on_disk']:,} bytes on disk, {d['tokens_per_s']:,.0f} tok/s "
             f"({results['setup']['device']}).", "",
             *([(f"Retrained with distillation from the dense model: weight {kd['weight']:g}, temperature "
                 f"{kd['temperature']:g} ((1 - w) CE + w T^2 KL(dense || compressed))."), ""]
               if (kd := results["setup"].get("finetune_distill")) else []),
             "| method | target rate | emb+softmax ratio | test ppl before | test ppl after | vs dense | bytes on disk | tok/s vs dense | compress s |",
             "|---|---|---|---|---|---|---|---|---|"]
    several = len({r.get("finetune_lr") for r in results["runs"].values()}) > 1
    chosen = {id(r) for r in done_runs(results)}
    for key, r in sorted(results["runs"].items(), key=lambda kv: (kv[1]["method"], kv[1]["rate"], kv[0])):
        name = r["method"]
        if several:  # which first rate, and whether validation chose this run for the verdicts
            lr = r.get("finetune_lr")
            name += f" (first rate {'default' if lr is None else f'{lr:g}'}{', chosen' if id(r) in chosen else ''})"
        if r["status"] != "done":
            lines.append(f"| {name} | {r['rate']:g}x | refused: {r.get('error', '')} | | | | | | |")
            continue
        lines.append(f"| {name} | {r['rate']:g}x | {r['vocab_ratio']:.1f}x | {r['test_ppl_before']:.2f} | "
                     f"{r['test_ppl_after']:.2f} | {100 * (r['test_ppl_after'] / d['test_ppl'] - 1):+.1f}% | "
                     f"{r['bytes_on_disk']:,} | {fmt_speed(r)} | {r['compress_s']:.1f} |")
    lines += ["", *targets(results)]
    if results.get("speed_note"):
        lines += ["", f"Speed: {results['speed_note']}"]
    table = "\n".join(lines)
    path.with_suffix(".md").write_text(table + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        by: dict[str, list] = {}
        for r in done_runs(results):
            by.setdefault(r["method"], []).append((r["bytes_on_disk"], r["test_ppl_after"]))
        for m, pts in sorted(by.items()):
            pts.sort()
            ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.scatter([d["bytes_on_disk"] / 1e6], [d["test_ppl"]], marker="*", s=150, color="k", label="dense", zorder=5)
        ax.set_xscale("log")
        ax.set_xlabel("bytes on disk (MB, whole model)")
        ax.set_ylabel("test perplexity after retraining")
        ax.set_title(f"embedding + softmax compression, {results['setup'].get('corpus')} {results['setup'].get('preset')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=120)
        plt.close(fig)
    except Exception as e:  # the plot is a convenience; the JSON and table are the record
        print(f"plot skipped: {e}", file=sys.stderr)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="trained dense model directory (lmshrink train)")
    ap.add_argument("--corpus", default="ptb")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--data", default=None, help="data directory holding ptb/ and wikitext-2/")
    ap.add_argument("--no-verify", action="store_true", help="skip corpus checksums (tests with made-up corpora)")
    ap.add_argument("--train-epochs", type=int, default=None, help="in-process baseline: epochs (default: preset's)")
    ap.add_argument("--max-steps", type=int, default=None, help="in-process baseline: stop after N steps")
    ap.add_argument("--methods", default=",".join(("svd", "prune", "quantize", "groupreduce", "groupreduce_q")))
    ap.add_argument("--rates", default="5,10,20", help="target ratios of embedding and softmax (each)")
    ap.add_argument("--gq-rates", default="26,52", help="overall ratios for groupreduce_q")
    ap.add_argument("--gq-bits", type=int, default=8)
    ap.add_argument("--num-blocks", type=int, default=5)
    ap.add_argument("--refine-iters", type=int, default=3)
    ap.add_argument("--rank-rule", default="frequency")
    ap.add_argument("--rank-multiple", type=int, default=1,
                    help="GroupReduce ranks rounded to multiples of this (8: aligned GPU GEMMs; 1: as the rule gives)")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-lr", default=None,
                    help="retraining's first learning rate (default: the recipe's lr / 10); divided by 10 on each "
                         "epoch that does not improve validation perplexity. A comma list (0.1,0.01) runs every "
                         "method at each rate and judges each at the rate its validation perplexity prefers")
    ap.add_argument("--finetune-lr-for", action="append", default=[], metavar="METHOD=RATES",
                    help="first rates for one method instead of --finetune-lr's (repeatable), e.g. svd=0.01 or "
                         "svd=0.1,0.01; where methods run at different rates every run key carries its rate")
    ap.add_argument("--finetune-patience", type=int, default=0,
                    help="epochs in a row that may fail to improve validation perplexity before the rate drops, "
                         "training going on from the latest weights (finetune_lm's patience; default 0, the paper's "
                         "rule: each such epoch is undone and drops the rate)")
    ap.add_argument("--finetune-dropout", type=float, default=None,
                    help="dropout rate during retraining only (default: the recipe's; PTB small has none)")
    ap.add_argument("--distill", type=float, default=None, metavar="WEIGHT",
                    help="retrain against the dense model too (knowledge distillation, Hinton et al. 2015): the "
                         "objective is (1 - WEIGHT) * cross-entropy + WEIGHT * KL(dense || compressed); 0..1")
    ap.add_argument("--distill-temperature", type=float, default=1.0)
    ap.add_argument("--eval-batch", type=int, default=10)
    ap.add_argument("--bptt-eval", type=int, default=35)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="retraining: auto (bf16 autocast on GPU), fp32 or bf16")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="retrain each epoch from a captured CUDA graph (CUDA, --precision fp32; models with "
                         "training hooks, e.g. prune_agp's first epoch, train eagerly)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/vocab", help="where baseline and compressed models are written")
    ap.add_argument("--results", default="runs/vocab.json",
                    help="this run's results (continued when rerun); benchmarks/results/vocab.json is vocab_report.py's")
    ap.add_argument("--time-limit", type=float, default=0,
                    help="seconds; no new run starts after this, nor one that the runs finished so far (their median "
                         "wall time) say would end after it (0: none)")
    ap.add_argument("--redo", action="store_true", help="rerun finished runs")
    ap.add_argument("--reuse", action="append", default=[], metavar="OLD.json",
                    help="adopt the finished runs of an earlier result of the same dense model (repeatable)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    ap.add_argument("--cpu-threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)

    t_start = time.monotonic()
    device = resolve_device(args.device)
    work = Path(args.work)
    results_path = Path(args.results)
    log = print
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"vocab.py: unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    try:
        args.finetune_lrs = parse_lrs(args.finetune_lr)  # before the baseline loads
        args.finetune_lr = args.finetune_lrs[0] if len(args.finetune_lrs) == 1 else args.finetune_lrs
        args.method_lrs = parse_lrs_for(args.finetune_lr_for)
        reuse = load_reuse(args.reuse)
        earlier = read_results(results_path)
        if args.cuda_graph:
            check_graphable(device, args.precision)
        check_finetune_dropout(args.finetune_dropout)
        check_patience(args.finetune_patience)
        check_distill(args.distill, args.distill_temperature)
        args.distill = args.distill or None  # 0 is no teacher
        for m in methods:  # every method's settings (--num-blocks, --rank-rule, --rank-multiple...) before any work
            for r in asked_rates(m, args):
                spec = method_config(m, r, args)
                if spec is not None:
                    make_config(**spec)
    except LmshrinkError as e:
        print(f"vocab.py: {e}", file=sys.stderr)
        return 2
    try:
        dense, corpus, recipe, setup = load_or_train_baseline(args, device, work, log)
    except LmshrinkError as e:
        print(f"vocab.py: error: {e}", file=sys.stderr)
        return 2
    dense = dense.to(device).eval()
    args._dense_vocab_bits = vocab_bits(dense)
    results = earlier
    if results.get("setup", {}).get("baseline") != setup["baseline"]:
        results = {}  # a different baseline: start over
    made, want = recorded_retraining(results.get("setup", {})), retraining_of(args)
    for what in made:  # a file's finished runs would be skipped as if they were this run's
        if results.get("runs") and made[what] != want[what]:
            print(f"vocab.py: {results_path} holds runs retrained with {what} {made[what]}, this run asks "
                  f"{want[what]}: give another --results", file=sys.stderr)
            return 2
    setup.update(device=str(device), gpu=torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                 finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                 finetune_lr_for={m: v for m, v in args.method_lrs.items() if m in methods} or None,
                 finetune_dropout=args.finetune_dropout, finetune_distill=distill_setting(args),
                 finetune_patience=args.finetune_patience,
                 eval_batch=args.eval_batch,
                 jobs=args.jobs, cuda_graph=args.cuda_graph, precision=args.precision, versions=versions(),
                 data_checksums=corpus.checksums, recipe=recipe.__dict__)
    results["setup"] = setup
    results.setdefault("runs", {})
    # the dense baseline, evaluated in this same run
    dd = work / "dense"
    save_model_dir(dense.cpu(), dd, vocab=corpus.vocab)
    dense.to(device)
    ev = evaluate(dense, corpus, args, device)
    results["dense"] = {"test_ppl": ev["test"], "valid_ppl": ev["valid"], "bytes_on_disk": bytes_on_disk(dd)["total"],
                        "bits": totals(dense)["bits"], "vocab_bits": args._dense_vocab_bits,
                        "tokens_per_s": speed(dense, len(corpus.vocab), device)}
    log(f"dense: test ppl {ev['test']:.2f}, valid {ev['valid']:.2f}")
    several = len({lr for m in methods for lr in lrs_for(m, args)}) > 1
    try:
        reuse_runs(results, reuse, methods, args, several, log)
    except LmshrinkError as e:
        print(f"vocab.py: {e}", file=sys.stderr)
        return 2
    write_outputs(results, results_path)

    todo = []  # (method, rate, first retraining rate, key)
    for m in methods:
        for r in asked_rates(m, args):
            for lr in lrs_for(m, args):
                key = run_key(m, r, lr, several)
                if not args.redo and results["runs"].get(key, {}).get("status") in ("done", "refused"):
                    log(f"{key}: finished earlier, skipped")
                else:
                    todo.append((m, r, lr, key))

    def record(key: str, row: dict) -> None:
        results["runs"][key] = row
        if row.get("wall_s"):
            took.append(row["wall_s"])
        write_outputs(results, results_path)
        if row["status"] == "done":
            log(f"{key}: ratio {row['vocab_ratio']:.1f}x, test ppl {row['test_ppl_before']:.2f} -> {row['test_ppl_after']:.2f} "
                f"(dense {results['dense']['test_ppl']:.2f}), {row['bytes_on_disk']:,} bytes, compress {row['compress_s']:.1f} s")
        else:
            log(f"{key}: refused: {row['error']}")

    took: list[float] = []  # wall seconds of the runs finished in this invocation, under this run's load

    def out_of_time() -> bool:
        return not may_start(time.monotonic() - t_start, args.time_limit, took)

    paused = interrupted = False
    try:
        if args.jobs > 1:
            paused = run_parallel(todo, args, record, out_of_time, log)
        else:
            for m, r, lr, key in todo:
                if out_of_time():
                    log(f"time limit reached before {key}; rerun the same command to continue")
                    paused = True
                    break
                record(key, run_guarded(m, r, lr, key, dense, corpus, recipe, args, device, work, log))
    except KeyboardInterrupt:  # finished runs are in the JSON; the ones in flight resume after their last epoch
        log("interrupted; rerun the same command to continue")
        paused = interrupted = True
    if not interrupted:
        try:
            timed_all = measure_speeds(results, dense, len(corpus.vocab), device, work, log,
                                       may_go=lambda took: may_start(time.monotonic() - t_start, args.time_limit, took))
            paused = paused or not timed_all
        except KeyboardInterrupt:
            log("interrupted while timing; rerun the same command to time the rest")
            paused = True
    table = write_outputs(results, results_path)
    print()
    print(table)
    return 3 if paused else 0  # 3: stopped at the time limit with runs left


if __name__ == "__main__":
    sys.exit(main())
