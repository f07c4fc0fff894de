"""What the commands do, as library functions: train and save, evaluate, inspect, compress.

Every function returns plain dicts (the ``--json`` output) and records config, versions, data
checksums and metrics in the model directory's manifest.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from .data import Vocabulary, load_corpus
from .errors import check
from .io import load_model_dir, read_manifest, save_model_dir
from .measure import bytes_on_disk, layer_rows, lm_tokens_per_second, totals
from .models.lstm_lm import PRESETS, Preset, build_from_preset, check_cell_clip, preset_dict
from .train.lm import (
    check_patience,
    evaluate_ppl,
    finetune_lm,
    remove_checkpoint,
    resolve_device,
    seed_everything,
    train_lm,
)


def speed_of(model, vocab_size: int, device: torch.device, window: int = 35) -> dict:
    """tokens/s at batch 1 on CPU (what one user waits for) or batch 64 on GPU (serving), ``window`` tokens per call
    (35: scoring text in BPTT windows; 1: generating, one token per call -- a compressed LSTM takes another path
    on the GPU then, ``models.lstm_lm.rebuild_at_inference``)."""
    if device.type == "cuda":
        return lm_tokens_per_second(model, vocab_size, device, batch_size=64, seq_len=window, repeats=20, warmup=5)
    return lm_tokens_per_second(model, vocab_size, "cpu", batch_size=1, seq_len=window, repeats=10, warmup=3)


SPEED_ROUNDS = 3  # interleaved dense/compressed timings in `lmshrink compress`


def paired_speed(dense, compressed, vocab_size: int, device: torch.device, rounds: int = SPEED_ROUNDS) -> dict:
    """tokens/s of a dense model and its compressed twin timed in interleaved rounds (dense, compressed, dense, ...):
    the median of each and the median of the per-round ratios. Why: one timing each, minutes apart (compression and
    retraining run in between), let the demo's ratio wander from 1.7x to 2.4x between runs of the same models."""
    d, c = [], []
    for _ in range(rounds):
        d.append(speed_of(dense, vocab_size, device)["tokens_per_s"])
        c.append(speed_of(compressed, vocab_size, device)["tokens_per_s"])
    return {"dense": statistics.median(d), "compressed": statistics.median(c),
            "ratio": statistics.median(b / a for a, b in zip(d, c)), "rounds": rounds}


def _corpus_for(manifest: dict, data_dir, corpus: str | None = None):
    name = corpus or manifest.get("corpus")
    check(name is not None, "the model's manifest names no corpus; pass --corpus")
    c = load_corpus(name, data_dir)
    if "vocab_sha256" in manifest:
        check(c.vocab.fingerprint() == manifest["vocab_sha256"],
              f"the vocabulary of corpus {name!r} ({len(c.vocab)} words) does not match the model's "
              f"({len(manifest.get('vocab', {}).get('words', []))} words); evaluate on the corpus it was trained on")
    return c


def train_and_save(corpus: str, data_dir, preset: str, out, epochs=None, max_steps=None, device="auto",
                   precision="auto", seed=0, tie_weights=False, resume=True, progress=True, log=print,
                   cuda_graph=False, verify=True) -> dict:
    check(preset in PRESETS, f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    dev = resolve_device(device)
    if cuda_graph:  # before any data is read: a wrong flag should cost nothing
        from .train.graphed import check_graphable

        check_graphable(dev, precision)
    c = load_corpus(corpus, data_dir, verify=verify)
    recipe: Preset = PRESETS[preset]
    seed_everything(seed)  # the initial weights follow --seed too, not whatever drew random numbers before
    model = build_from_preset(preset, len(c.vocab), tie_weights=tie_weights)
    log(f"training {preset} LSTM LM on {corpus} ({len(c.vocab)} words, {c.train.numel():,} train tokens) on {dev}")
    res = train_lm(model, c, recipe, out_dir=out, device=dev, epochs=epochs, max_steps=max_steps, seed=seed,
                   precision=precision, progress=progress, resume=resume, log=log, cuda_graph=cuda_graph)
    model = res["model"]
    valid = evaluate_ppl(model, c.splits["valid"], 1, recipe.bptt, dev)
    test = evaluate_ppl(model, c.splits["test"], 1, recipe.bptt, dev)
    speed = speed_of(model, len(c.vocab), dev)
    tot = totals(model)
    metrics = {"valid_ppl": valid, "test_ppl": test, "params": tot["params"], "bits": tot["bits"],
               "epochs": res["epochs"], "steps": res["steps"], "wall_s": res["wall_s"],
               "train_tokens_per_s": res["train_tokens_per_s"], "tokens_per_s": speed["tokens_per_s"], "speed": speed}
    config = {"corpus": corpus, "preset": preset, "recipe": preset_dict(preset), "epochs": epochs,
              "max_steps": max_steps, "seed": seed, "precision": precision, "cuda_graph": cuda_graph, "device": str(dev),
              "tie_weights": tie_weights, "command": " ".join(sys.argv)}
    save_model_dir(model.cpu(), out, vocab=c.vocab, extra={
        "corpus": corpus, "data_checksums": c.checksums, "config": config, "metrics": metrics,
        "history": res["history"], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    remove_checkpoint(out)
    metrics["bytes_on_disk"] = bytes_on_disk(out)["total"]
    return {"metrics": metrics, "model": model}


def evaluate_model_dir(model_dir, data_dir=None, corpus=None, split="test", device="auto", batch_size=1,
                       speed=False, cell_clip=None, speed_window=35) -> dict:
    """``cell_clip`` evaluates with the carried LSTM cell state clamped (``LSTMLanguageModel``), whatever the
    model's own setting; the output records the value used. ``speed_window``: tokens per timed call (see
    :func:`speed_of`)."""
    check_cell_clip(cell_clip, "--cell-clip")  # before anything is loaded
    check(isinstance(speed_window, int) and not isinstance(speed_window, bool) and speed_window >= 1,
          f"--speed-window must be a whole number of tokens >= 1, got {speed_window!r}")
    dev = resolve_device(device)
    model, manifest = load_model_dir(model_dir, device=dev)
    if cell_clip is not None:
        check(hasattr(model, "cell_clip"), f"--cell-clip applies to LSTM language models, not {manifest['architecture'].get('kind')!r}")
        model.cell_clip = cell_clip
    c = _corpus_for(manifest, data_dir, corpus)
    bptt = manifest.get("config", {}).get("recipe", {}).get("bptt", 35)
    out: dict = {"model_dir": str(model_dir), "corpus": c.name}
    if getattr(model, "cell_clip", None) is not None:
        out["cell_clip"] = model.cell_clip
    for s in (("valid", "test") if split == "both" else (split,)):
        out[f"{s}_ppl"] = evaluate_ppl(model, c.splits[s], batch_size, bptt, dev)
    tot = totals(model)
    out.update(params=tot["params"], bits=tot["bits"], bytes_on_disk=bytes_on_disk(model_dir)["total"])
    if speed:
        sp = speed_of(model, len(c.vocab), dev, speed_window)
        out.update(tokens_per_s=sp["tokens_per_s"], speed=sp)
    if manifest.get("dense_metrics"):  # a compressed model: its dense source as measured at compression time
        out["dense"] = manifest["dense_metrics"]
    return out


def model_info(model_dir) -> dict:
    model, manifest = load_model_dir(model_dir)
    rows = layer_rows(model)
    return {"model_dir": str(model_dir), "architecture": manifest["architecture"], "layers": rows,
            "total": totals(model), "bytes_on_disk": bytes_on_disk(model_dir),
            "metrics": {k: v for k, v in manifest.get("metrics", {}).items() if isinstance(v, (int, float))},
            "compressed_layers": manifest.get("compressed_layers", {}),
            # the dense source as measured by `lmshrink compress` on the same machine (absent for dense models)
            "dense": manifest.get("dense_metrics")}


def compress_model_dir(model_dir, out, plan_path=None, method=None, ratio=None, options=None, finetune_epochs=0,
                       finetune_lr=None, data_dir=None, device="auto", overwrite=False, evaluate=True,
                       progress=True, log=print, distill=None, finetune_patience=0) -> dict:
    from .compress import load_plan, make_config, vocab_plan
    from .compress import compress as compress_

    check(overwrite or not (Path(out) / "manifest.json").exists(), f"{out} already holds a model; pass --overwrite")
    check(Path(out).resolve() != Path(model_dir).resolve(), "--out must differ from MODEL_DIR")
    from .train.distill import check_distill

    check_distill(distill)
    check(not distill or finetune_epochs > 0, "--distill needs --finetune-epochs")
    check_patience(finetune_patience)
    dev = resolve_device(device)
    model, manifest = load_model_dir(model_dir, device="cpu")
    if plan_path:
        plan = load_plan(plan_path)
    else:
        opts = dict(options or {})
        if ratio is not None:
            opts["ratio"] = ratio
        plan = vocab_plan(model, make_config(method, **opts))
    vocab = Vocabulary.from_json(manifest["vocab"]) if "vocab" in manifest else None
    stats = {"word_counts": vocab.counts_tensor()} if vocab is not None else {}
    need_corpus = evaluate or finetune_epochs > 0
    c = _corpus_for(manifest, data_dir) if need_corpus and manifest.get("corpus") else None
    check(finetune_epochs == 0 or c is not None, "--finetune-epochs needs the model's corpus")
    recipe_d = manifest.get("config", {}).get("recipe")
    recipe = Preset(**recipe_d) if recipe_d else PRESETS["small"]

    side: dict = {"dense": {}, "compressed": {}}

    def measure(m, key):
        m = m.to(dev)
        tot = totals(m)
        side[key].update(params=tot["params"], bits=tot["bits"])
        if c is not None:
            side[key]["test_ppl"] = evaluate_ppl(m, c.splits["test"], 1 if dev.type == "cpu" else 10, recipe.bptt, dev)

    if evaluate:
        measure(model, "dense")
    side["dense"]["bytes_on_disk"] = bytes_on_disk(model_dir)["total"]
    model = model.cpu()
    # copied on the CPU (not on the device measure() used): timed beside the compressed model at the end
    dense_twin = copy.deepcopy(model) if evaluate else None
    # the teacher is the dense model before compression swaps its layers; it is only read (eval, no gradients), so
    # the timing twin serves as it where there is one instead of a second copy
    teacher = (dense_twin if dense_twin is not None else copy.deepcopy(model)) if distill else None
    t0 = time.monotonic()
    report = compress_(model, plan, stats=stats)
    compress_s = time.monotonic() - t0
    log(f"compressed {len(report)} module(s) in {compress_s:.1f} s")
    ft = None
    if finetune_epochs > 0:
        ft = finetune_lm(model, c, recipe, finetune_epochs, lr=finetune_lr, device=dev, progress=progress, log=log,
                         teacher=teacher, distill=distill or None, patience=finetune_patience)
        del teacher
        model = ft["model"]
        side["compressed"]["test_ppl_before_finetune"] = None
    if evaluate:
        measure(model, "compressed")
        sp = paired_speed(dense_twin.to(dev), model, model.config["vocab_size"], dev)
        side["dense"]["tokens_per_s"], side["compressed"]["tokens_per_s"] = sp["dense"], sp["compressed"]
        side["compressed"]["tokens_per_s_vs_dense"] = sp["ratio"]
        del dense_twin
    metrics = {k: v for k, v in side["compressed"].items() if v is not None}
    save_model_dir(model.cpu(), out, vocab=vocab, extra={
        "corpus": manifest.get("corpus"), "data_checksums": manifest.get("data_checksums"),
        "config": manifest.get("config"), "metrics": metrics,
        "compression": {"source": str(model_dir), "source_sha256": manifest["weights"]["sha256"],
                        "plan": plan.to_dict(), "report": report, "compress_seconds": compress_s,
                        "finetune": {"epochs": finetune_epochs, "lr": finetune_lr, "distill": distill or None,
                                     "patience": finetune_patience,
                                     "history": ft["history"] if ft else None}},
        "dense_metrics": side["dense"]})
    side["compressed"]["bytes_on_disk"] = bytes_on_disk(out)["total"]
    side["compressed"].pop("test_ppl_before_finetune", None)
    warnings = shrink_warnings(side, dev.type)
    return {"report": report, "side_by_side": side, "compress_seconds": compress_s, "out": str(out), "warnings": warnings}


def shrink_warnings(side: dict, device: str = "cpu", slower_below: float = 0.9) -> list[str]:
    """What a user should hear about a "compressed" model that is not smaller on disk, or clearly slower than its
    dense source (tokens/s below ``slower_below`` x dense: the paired ratio of interleaved rounds where there is one;
    small gaps are left alone as noise). Why: a compressed model that is neither smaller nor faster is what users of
    peer tools complain of."""
    d, c = side["dense"], side["compressed"]
    out = []
    if d.get("bytes_on_disk") is not None and c.get("bytes_on_disk") is not None and c["bytes_on_disk"] >= d["bytes_on_disk"]:
        out.append(f"the compressed model is not smaller on disk than its dense source ({c['bytes_on_disk']:,} vs "
                   f"{d['bytes_on_disk']:,} bytes): the compressed layers hold too small a share of this model, or its "
                   "manifest outweighs what they save")
    ratio = c.get("tokens_per_s_vs_dense")
    if ratio is None and d.get("tokens_per_s") and c.get("tokens_per_s"):
        ratio = c["tokens_per_s"] / d["tokens_per_s"]
    if ratio is not None and ratio < slower_below:
        how = ("median of interleaved rounds" if "tokens_per_s_vs_dense" in c else "each timed once")
        out.append(f"the compressed model ran at {ratio:.2f}x its dense source's tokens/s on {device} here ({how}; "
                   "`benchmarks/speed.py` times methods side by side)")
    return out


def manifest_of(model_dir) -> dict:
    return read_manifest(model_dir)
