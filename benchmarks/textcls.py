"""Online low-rank embedding compression for text classification (Acharya et al. 2019), with its baselines.

For each model (LSTM, DAN), data set (TREC, SST-2, MR) and seed, in one run:
- dense classifiers trained with each learning-rate schedule (CALR, constant, cosine, one-cycle; same Adam,
  same peak learning rate, same epochs) -- for the models in ``--schedule-models`` (default: DAN only, to
  fit the CPU budget; the others train with CALR only); the CALR model is the dense reference that gets
  compressed;
- a control: the dense reference retrained for as many epochs as the compressed models (no compression),
  so that "online low rank beats dense" cannot come from extra training alone; the targets compare
  with the better of the two dense rows;
- for each kept share p of the embedding's parameters: truncated SVD to rank k = int(p V d / (V + d))
  evaluated without retraining ("offline SVD") and after retraining factors + network ("online");
- fixed-point quantization of the embedding (8, 4, 2 bits, per-row fp16 scale and offset, bit-packed) via
  ``lmshrink.make_config("quantize", bits=B)``, no retraining;
- fastText supervised (dim 100, word bigrams, otherwise defaults) then quantize (qnorm, retrain,
  cutoff 10000), i.e. fastText.zip, trained on the same train split; its .ftz file size is its bytes.

Sizes: ``embedding_bytes`` / ``model_bytes`` are theoretical (bits / 8 of stored tensors, as
``lmshrink.measure`` counts them); ``bytes_on_disk`` is the model directory (safetensors + manifest + the
gzip'd vocabulary file) or the .ftz file. Accuracy is test accuracy of the best-dev epoch; mean and std over
seeds. MR has no standard split: seed s tests fold s of a seeded (seed 0) 10-fold CV. TREC has no dev
split: 10% of train (seeded) is held out as dev for every method, fastText included.

    python benchmarks/textcls.py --data ../shared/data --out benchmarks/results/textcls.json

Runs jobs (data set x seed) in ``--jobs`` processes with one torch thread each (2 CPU cores: 2 jobs).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = {"trec": "textcls/trec", "sst2": "textcls/sst2", "mr": "textcls/mr", "sst1": "textcls/sst1"}
SCHEDULES = ["calr", "constant", "cosine", "onecycle"]


def job(spec: dict) -> list[dict]:
    """One (model, set, seed); a failure is printed with its traceback and the job is tried once more
    (a shared working tree can be mid-edit when a method module is first imported)."""
    import traceback

    for attempt in (1, 2):
        try:
            return _job(spec)
        except Exception:  # noqa: BLE001 - report, retry once, then give up loudly
            print(f"[{spec['model']} {spec['set']} seed {spec['seed']}] attempt {attempt} failed:\n{traceback.format_exc()}",
                  flush=True)
            if attempt == 2:
                raise
            time.sleep(10)
    return []


def _job(spec: dict) -> list[dict]:
    import torch

    import lmshrink.methods  # noqa: F401 - import every method now, not in the middle of the job

    torch.set_num_threads(spec["threads"])
    from lmshrink import compress, make_config
    from lmshrink.data.textcls import embedding_matrix, resolve_vectors
    from lmshrink.models.classifier import build_classifier
    from lmshrink.train.classify import (compress_embedding, evaluate_accuracy, paper_rank, prepare_data, save_classifier,
                                         size_of, train_classifier)
    from lmshrink.train.lm import seed_everything

    name, seed = spec["set"], spec["seed"]
    folder = Path(spec["data"]) / SETS[name]
    cv = name == "mr"
    ds, vocab, enc = prepare_data(folder, seed=0 if cv else seed, folds=10 if cv else None, fold=seed if cv else 0)
    wv = resolve_vectors(spec["vectors"], spec["data"])
    E, coverage = embedding_matrix(vocab, wv, seed)
    V, d = E.shape
    base = {"set": name, "seed": seed, "model": spec["model"], "split_info": ds.split_info, "vocab": V, "dim": d,
            "train_examples": len(enc["train"]), "test_examples": len(enc["test"]),
            "word_coverage": coverage["word_coverage"], "checksums": ds.checksums}
    work = Path(spec["work"]) / f"{spec['model']}_{name}_{seed}"
    rows: list[dict] = []
    quiet = lambda *_: None  # noqa: E731
    # each schedule's peak rate: one --lr for all, or the one schedules.py chose on dev for this set (--lrs-from);
    # retraining (compressed models, the retrained control) runs CALR at CALR's rate
    lr_of = {sched: (spec.get("lrs") or {}).get(name, {}).get(sched, spec["lr"]) for sched in [*spec["schedules"], "calr"]}
    # CALR's decay: --calr-decay, or the one schedules.py chose on dev with CALR's rate for this set
    decay = (spec.get("calr_decays") or {}).get(name, spec["calr_decay"])
    tcfg = dict(batch_size=50, lr=lr_of["calr"], adam_eps=spec["adam_eps"],
                calr_options={"step_size": "half_epoch", "decay": decay})
    # retraining against the dense CALR model (--distill): the compressed models and the retrained control alike
    kd = {"distill": spec.get("distill") or None}
    textcls_meta = {"dataset": ds.summary(), "labels": ds.labels, "seed": seed, "model": spec["model"]}

    def measured(model, tag: str, training=None) -> dict:
        """Sizes, and bytes on disk of the model saved as an lmshrink model directory."""
        m = save_classifier(model, work / tag, vocab, textcls_meta, training, {})
        s = size_of(model)
        return {"embedding_params": s["embedding_params"], "embedding_bytes": s["embedding_bytes"],
                "model_params": s["params"], "model_bytes": s["bytes"], "bytes_on_disk": m["bytes_on_disk"]}

    def log(msg):
        print(f"[{name} seed {seed} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # 1. dense models, one per schedule
    dense_ref = None
    for sched in spec["schedules"]:
        seed_everything(seed)
        model = build_classifier(spec["model"], V, ds.num_classes, d)
        model.load_embedding(E)
        t0 = time.monotonic()
        res = train_classifier(model, enc["train"], enc["dev"], epochs=spec["epochs"], schedule=sched, seed=seed,
                               log=quiet, **{**tcfg, "lr": lr_of[sched]})
        acc = evaluate_accuracy(model, enc["test"])["accuracy"]
        row = {**base, "variant": "dense", "schedule": sched, "lr": lr_of[sched], "test_accuracy": acc, "dev_accuracy": res["best_dev_accuracy"],
               "epochs": spec["epochs"], "wall_s": time.monotonic() - t0,
               "dev_curve": [h["dev_accuracy"] for h in res["history"]], **measured(model, f"dense_{sched}")}
        rows.append(row)
        log(f"dense {sched}: test {acc:.4f} ({row['wall_s']:.0f} s)")
        if sched == "calr":
            dense_ref = (model, acc)
    assert dense_ref is not None, "the calr schedule is the dense reference and must be run"
    dense, dense_acc = dense_ref

    # 2. control: the dense model retrained as long as the compressed ones are (no compression), so the
    # online rows are compared with a model that had the same total training
    model = copy.deepcopy(dense)
    seed_everything(seed)
    res = train_classifier(model, enc["train"], enc["dev"], epochs=spec["retrain_epochs"], schedule="calr", seed=seed,
                           log=quiet, teacher=copy.deepcopy(dense) if kd["distill"] else None, **kd, **tcfg)
    acc = evaluate_accuracy(model, enc["test"])["accuracy"]
    rows.append({**base, "variant": "dense_retrained", "schedule": "calr", "test_accuracy": acc,
                 "dev_accuracy": res["best_dev_accuracy"], "retrain_epochs": spec["retrain_epochs"],
                 "dense_test_accuracy": dense_acc, **measured(model, "dense_retrained")})
    log(f"dense + {spec['retrain_epochs']} epochs: {acc:.4f}")

    # 3. offline and online low rank
    for keep in spec["keeps"]:
        k = paper_rank(V, d, keep)
        model = copy.deepcopy(dense)
        row0 = compress_embedding(model, keep, vocab)
        assert row0["params"] == k * (V + d)
        off = evaluate_accuracy(model, enc["test"])["accuracy"]
        common = {**base, "keep": keep, "rank": k, "dense_test_accuracy": dense_acc}
        rows.append({**common, "variant": "offline_svd", "test_accuracy": off, **measured(model, f"svd_{keep}")})
        seed_everything(seed)
        t0 = time.monotonic()
        res = train_classifier(model, enc["train"], enc["dev"], epochs=spec["retrain_epochs"], schedule="calr", seed=seed,
                               log=quiet, teacher=copy.deepcopy(dense) if kd["distill"] else None, **kd, **tcfg)
        on = evaluate_accuracy(model, enc["test"])["accuracy"]
        rows.append({**common, "variant": "online_low_rank", "schedule": "calr", "test_accuracy": on,
                     "dev_accuracy": res["best_dev_accuracy"], "retrain_epochs": spec["retrain_epochs"],
                     "wall_s": time.monotonic() - t0, **measured(model, f"online_{keep}")})
        log(f"keep {keep} rank {k}: offline {off:.4f}, online {on:.4f}")

    # 4. fixed-point quantization of the embedding (no retraining)
    for bits in spec["bits"]:
        model = copy.deepcopy(dense)
        compress(model, {"encoder": make_config("quantize", bits=bits, group_size=None)})
        acc = evaluate_accuracy(model, enc["test"])["accuracy"]
        rows.append({**base, "variant": "quantize", "bits": bits, "test_accuracy": acc, "dense_test_accuracy": dense_acc,
                     **measured(model, f"quant_{bits}")})
        log(f"quantize {bits} bits: {acc:.4f}")

    # 5. fastText.zip on the same train/test split (once per set and seed: it does not depend on our model)
    if spec["fasttext"]:
        rows.append({**base, "model": "fasttext", **fasttext_row(ds, work, seed, spec), "dense_test_accuracy": dense_acc})
        log(f"fasttext: {rows[-1].get('test_accuracy')}")
    (Path(spec["work"]) / f"rows_{spec['model']}_{name}_{seed}.json").write_text(json.dumps(rows))
    return rows


def warn_if_no_fasttext() -> bool:
    """Say before the run, not only in its table, that fastText.zip will be skipped: without it the
    '+3 points over fastText.zip' target cannot be judged. True where the package is missing."""
    if importlib.util.find_spec("fasttext") is not None:
        return False
    print("textcls: warning: the fasttext package is not installed (pip install -e .[bench]); "
          "the fastText.zip rows will be skipped", file=sys.stderr, flush=True)
    return True


def fasttext_row(ds, work: Path, seed: int, spec: dict) -> dict:
    try:
        import fasttext
    except ImportError:
        return {"variant": "fasttext_zip", "skipped": "the fasttext package is not installed (pip install fasttext)"}
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("train", "test"):
        files[split] = work / f"fasttext.{split}.txt"
        with open(files[split], "w", encoding="utf-8") as f:
            for e in ds.splits[split]:
                f.write(f"__label__{e.label} {' '.join(e.tokens)}\n")
    t0 = time.monotonic()
    model = fasttext.train_supervised(str(files["train"]), dim=100, wordNgrams=2, thread=1, seed=seed, verbose=0)
    dense_acc = model.test(str(files["test"]))[1]  # precision@1 = accuracy with one label per example
    model.quantize(input=str(files["train"]), qnorm=True, retrain=True, cutoff=10000)
    acc = model.test(str(files["test"]))[1]
    path = work / "model.ftz"
    model.save_model(str(path))
    return {"variant": "fasttext_zip", "test_accuracy": acc, "fasttext_unquantized_accuracy": dense_acc,
            "bytes_on_disk": path.stat().st_size, "model_bytes": path.stat().st_size, "wall_s": time.monotonic() - t0,
            "fasttext": {"version": getattr(fasttext, "__version__", "0.9.x"), "dim": 100, "wordNgrams": 2,
                         "epoch": 5, "lr": 0.1, "quantize": {"qnorm": True, "retrain": True, "cutoff": 10000}}}


# --------------------------------------------------------------------------- aggregation
def _key(r: dict) -> tuple:
    v, m = r["variant"], r["model"]
    if v == "dense":
        return (r["set"], m, v, f"schedule={r['schedule']}")
    if v in ("offline_svd", "online_low_rank"):
        return (r["set"], m, v, f"keep={r['keep']}")
    if v == "quantize":
        return (r["set"], m, v, f"bits={r['bits']}")
    return (r["set"], m, v, "")


def _ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "skipped" in r:
            continue
        groups.setdefault(_key(r), []).append(r)
    out = []
    for (s, m, v, cfg), rs in groups.items():
        acc, sd = _ms([r["test_accuracy"] for r in rs])
        ent = {"set": s, "model": m, "variant": v, "config": cfg, "seeds": len(rs), "accuracy_mean": acc, "accuracy_std": sd}
        for f in ("embedding_bytes", "model_bytes", "bytes_on_disk", "embedding_params", "model_params", "rank"):
            vals = [r[f] for r in rs if r.get(f) is not None]
            if vals:
                ent[f] = statistics.fmean(vals)
        out.append(ent)
    return out


def paired_gap(rows: list[dict], a: tuple, b: tuple) -> dict | None:
    """Accuracy points of rows ``a`` minus rows ``b`` (each ``(set, model, variant, config)`` as :func:`_key`
    makes), paired by seed (MR: fold): mean, standard error and the seeds paired. Why: seed-to-seed spread
    (1-2 points on MR) dwarfs the 0.5-point target, while paired differences cancel what both runs share."""
    by = {}
    for r in rows:
        if "skipped" not in r and r.get("test_accuracy") is not None:
            by[(_key(r), r["seed"])] = r["test_accuracy"]
    diffs = [100 * (by[(a, sd)] - by[(b, sd)]) for (k, sd) in by if k == a and (b, sd) in by]
    if not diffs:
        return None
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return {"mean": statistics.fmean(diffs), "se": se, "seeds": len(diffs)}


def targets(summary: list[dict], rows: list[dict] | None = None) -> dict:
    """Each target's verdict from the summary (means); with ``rows``, the keep-0.1 gap also paired by seed."""
    res = {}
    ft_of = {e["set"]: e for e in summary if e["variant"] == "fasttext_zip"}
    for s, model in sorted({(e["set"], e["model"]) for e in summary if e["model"] != "fasttext"}):
        S = {(e["variant"], e["config"]): e for e in summary if e["set"] == s and e["model"] == model}
        # the dense reference is the best dense row: any schedule, or the CALR model retrained as long as the
        # compressed ones (same total training), so neither extra epochs nor a weak schedule flatter compression
        dense = max((e for (v, _), e in S.items() if v in ("dense", "dense_retrained")),
                    key=lambda e: e["accuracy_mean"], default=None)
        t = {}
        on10 = S.get(("online_low_rank", "keep=0.1"))
        if dense and on10:
            gap = 100 * (dense["accuracy_mean"] - on10["accuracy_mean"])
            t["online_keep0.1_within_0.5pt_of_dense"] = {"dense": dense["accuracy_mean"],
                                                        "dense_variant": f"{dense['variant']} {dense['config']}".strip(),
                                                        "online": on10["accuracy_mean"], "gap_points": gap, "met": gap <= 0.5}
            pg = paired_gap(rows or [], (s, model, dense["variant"], dense["config"]),
                            (s, model, "online_low_rank", "keep=0.1"))
            if pg is not None:  # dense minus online, per seed: the same gap with its standard error
                t["online_keep0.1_within_0.5pt_of_dense"]["paired_gap_points"] = pg
        ft = ft_of.get(s)
        if ft:
            ours = [e for (v, _), e in S.items() if v not in ("fasttext_zip",) and e.get("bytes_on_disk") is not None
                    and e["bytes_on_disk"] <= ft["bytes_on_disk"]]
            best = max(ours, key=lambda e: e["accuracy_mean"], default=None)
            t["plus_3pt_over_fasttext_zip_at_le_bytes"] = {
                "fasttext_accuracy": ft["accuracy_mean"], "fasttext_bytes": ft["bytes_on_disk"],
                "best_ours": None if best is None else {"variant": best["variant"], "config": best["config"],
                                                        "accuracy": best["accuracy_mean"], "bytes_on_disk": best["bytes_on_disk"]},
                "met": best is not None and 100 * (best["accuracy_mean"] - ft["accuracy_mean"]) >= 3}
        sch = {e["config"].split("=")[1]: e["accuracy_mean"] for (v, _), e in S.items() if v == "dense"}
        if "calr" in sch and len(sch) > 1:
            other = max(a for k, a in sch.items() if k != "calr")
            t["calr_at_least_best_other_schedule"] = {"schedules": sch, "met": sch["calr"] >= other}
        res[f"{s}/{model}"] = t
    return res


def _peak_rates(cfg: dict) -> str:
    tuned = cfg.get("lrs_from")
    if not tuned:
        return str(cfg["lr"])
    per_set = "; ".join(f"{s}: " + ", ".join(f"{k} {v:g}" for k, v in lrs.items()) for s, lrs in tuned["lrs"].items())
    decays = tuned.get("calr_decays")
    decay_txt = ("; CALR's decay per epoch also chosen there: " + ", ".join(f"{s} {d:g}" for s, d in decays.items())
                 if decays else "")
    return (f"per set and schedule as chosen on dev in {tuned['file']} for {tuned['model'].upper()} ({per_set}; "
            f"retraining runs CALR at CALR's rate{decay_txt}), {cfg['lr']} for other models")


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [f"# Online low-rank embedding compression for text classification ({', '.join(cfg['models']).upper()} over GloVe 6B 50d)", "",
             f"Generated by `{result['command']}` on {result['machine']}; {result['wall_s'] / 60:.1f} min wall time.",
             f"Seeds {cfg['seeds']}; dense {cfg['epochs']} epochs, retraining {cfg['retrain_epochs']} epochs; Adam "
             f"(eps {cfg['adam_eps']}), batch 50, peak lr {_peak_rates(cfg)}; CALR: step = half an epoch, decay "
             + ("per set as chosen on dev (above; for DAN)" if (cfg.get("lrs_from") or {}).get("calr_decays")
                else f"{cfg['calr_decay']} per epoch")
             + ", lr_low = lr_high * decay^5"
             + (f"; retraining (compressed models and the retrained control) against the dense CALR model, "
                f"distillation weight {cfg['distill']:g}" if cfg.get("distill") else "")
             + ". Test accuracy of the best-dev epoch, "
             "mean ± std over seeds (MR: seed s = fold s of a seeded 10-fold CV; TREC: dev = 10% of train). "
             "Bytes: embedding and whole model theoretical (stored bits / 8), on disk = model directory "
             "(safetensors + JSON manifest + gzip'd vocabulary file) or the fastText .ftz file.", ""]
    for s in sorted({e["set"] for e in result["summary"]}):
        rows = [e for e in result["summary"] if e["set"] == s]
        order = {"dense": 0, "dense_retrained": 1, "online_low_rank": 2, "offline_svd": 3, "quantize": 4, "fasttext_zip": 5}
        rows.sort(key=lambda e: (e["model"] == "fasttext", e["model"], order.get(e["variant"], 9), e["config"]))
        lines += [f"## {s}", "", "| model | method | config | accuracy % | embedding KB | model KB | on disk KB |",
                  "|---|---|---|---|---|---|---|"]
        for e in rows:
            kb = lambda k: "-" if e.get(k) is None else f"{e[k] / 1000:,.1f}"  # noqa: E731
            cfgs = e["config"] + (f" (rank {int(e['rank'])})" if e.get("rank") else "")
            lines.append(f"| {e['model']} | {e['variant']} | {cfgs} | {100 * e['accuracy_mean']:.2f} ± {100 * e['accuracy_std']:.2f} | "
                         f"{kb('embedding_bytes')} | {kb('model_bytes')} | {kb('bytes_on_disk')} |")
        lines.append("")
        for (sm, ts) in result["targets"].items():
            if sm.split("/")[0] != s:
                continue
            for name, t in ts.items():
                lines.append(f"- {sm} target `{name}`: **{'met' if t['met'] else 'not met'}** — "
                         + json.dumps({k: v for k, v in t.items() if k != "met"}, default=str))
        lines.append("")
    skipped = [r for r in result["rows"] if "skipped" in r]
    if skipped:
        lines.append(f"fastText skipped: {skipped[0]['skipped']}")
    return "\n".join(lines) + "\n"


def load_tuned_lrs(path: str, sets: list[str]) -> dict:
    """{"model": M, "lrs": {set: {schedule: lr}}} from a schedules.py result; every set asked for must be there."""
    try:
        res = json.loads(Path(path).read_text())
        lrs = {s: {sched: float(v["lr"]) for sched, v in res["selected"][s].items() if not sched.startswith("_")}
               for s in res["selected"]}
        # a result that chose CALR's decay on dev too (schedules.py --calr-decay with several values)
        decays = {s: float(v["calr"]["decay"]) for s, v in res["selected"].items()
                  if len(v.get("calr", {}).get("decays_tried") or []) > 1}
        model = res["settings"]["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"textcls.py: --lrs-from {path}: not a schedules.py result ({e})")
    missing = [s for s in sets if s not in lrs]
    if missing:
        raise SystemExit(f"textcls.py: --lrs-from {path} has no rates for {', '.join(missing)}")
    return {"model": model, "lrs": {s: lrs[s] for s in sets},
            "calr_decays": {s: decays[s] for s in sets if s in decays} or None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("LMSHRINK_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                   help="data folder with textcls/ and glove-6b-50d/ (default $LMSHRINK_DATA or ../shared/data)")
    p.add_argument("--sets", default="trec,sst2,mr")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="lstm,dan", help="comma list of lstm, dan, cnn")
    p.add_argument("--vectors", default="glove")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--retrain-epochs", type=int, default=4)
    p.add_argument("--keeps", default="0.5,0.2,0.1,0.05")
    p.add_argument("--bits", default="8,4,2")
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--schedule-models", default="dan",
                   help="models whose dense training runs every schedule (others run CALR only, to save time)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak rate of every schedule (see --lrs-from)")
    p.add_argument("--lrs-from", default=None, metavar="SCHEDULES_JSON",
                   help="take each schedule's peak rate per set from benchmarks/schedules.py's result (its 'selected', "
                        "chosen on dev) for the model it was tuned on; other models keep --lr")
    p.add_argument("--adam-eps", type=float, default=0.01)
    p.add_argument("--calr-decay", type=float, default=0.5)
    p.add_argument("--distill", type=float, default=None, metavar="WEIGHT",
                   help="retrain the compressed models (and the retrained control) against the dense CALR model too: "
                        "(1 - WEIGHT) CE + WEIGHT KL(dense || model), WEIGHT in [0, 1]")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="scratch folder for model directories (default: a temp dir)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/textcls.json"))
    p.add_argument("--collect", action="store_true", help="only aggregate the rows_*.json files already in --work")
    a = p.parse_args(argv)
    import torch

    t0 = time.monotonic()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="textcls_bench_"))
    seeds = [int(s) for s in a.seeds.split(",")]
    sets = a.sets.split(",")
    for s in sets:
        if s not in SETS:
            p.error(f"unknown set {s}; choose from {', '.join(SETS)}")
    models = a.models.split(",")
    from lmshrink.errors import LmshrinkError
    from lmshrink.train.distill import check_distill

    try:
        check_distill(a.distill)
    except LmshrinkError as e:
        p.error(str(e))
    base = dict(data=a.data, vectors=a.vectors, epochs=a.epochs, retrain_epochs=a.retrain_epochs,
                keeps=[float(x) for x in a.keeps.split(",")], bits=[int(x) for x in a.bits.split(",")],
                schedules=a.schedules.split(","), lr=a.lr, adam_eps=a.adam_eps, calr_decay=a.calr_decay,
                threads=a.threads, work=str(work), distill=a.distill or None)
    size = {"mr": 3, "sst1": 3, "sst2": 2, "trec": 1}
    cost = {"lstm": 3, "cnn": 2, "dan": 1}
    sched_models = a.schedule_models.split(",")
    tuned = load_tuned_lrs(a.lrs_from, sets) if a.lrs_from else None
    if tuned:
        base["lrs_from"] = {"file": Path(a.lrs_from).name, "model": tuned["model"], "lrs": tuned["lrs"],
                            "calr_decays": tuned["calr_decays"]}
    specs = sorted(({**base, "model": m, "fasttext": i == 0, "set": s, "seed": sd,
                     "lrs": tuned["lrs"] if tuned and m == tuned["model"] else None,
                     "calr_decays": tuned["calr_decays"] if tuned and m == tuned["model"] else None,
                     "schedules": base["schedules"] if m in sched_models else ["calr"]} for i, m in enumerate(models)
                    for s in sets for sd in seeds), key=lambda x: -size[x["set"]] * cost[x["model"]])
    rows: list[dict] = []
    if not a.collect:
        warn_if_no_fasttext()
    if a.collect:
        for f in sorted(work.glob("rows_*.json")):
            rows += json.loads(f.read_text())
    elif a.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as ex:
            for r in ex.map(job, specs):
                rows += r
    else:
        for sp in specs:
            rows += job(sp)
    summary = summarize(rows)
    import numpy

    result = {"benchmark": "textcls", "paper": "Acharya et al. 2019, Online Embedding Compression for Text Classification "
                                               "using Low Rank Matrix Factorization (AAAI)",
              "command": "python benchmarks/textcls.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {a.jobs} jobs x {a.threads} torch thread(s)",
              "config": {k: v for k, v in base.items() if k not in ("data", "work")} | {"seeds": seeds, "sets": sets, "models": models,
                                                                                     "schedule_models": sched_models},
              "versions": {"torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version()},
              "wall_s": time.monotonic() - t0, "rows": rows, "summary": summary}
    out = Path(a.out)
    if a.collect and out.is_file():  # keep the run's own command and wall time
        old = json.loads(out.read_text())
        result["command"], result["wall_s"] = old["command"], old["wall_s"]
    result["targets"] = targets(summary, rows)
    from lmshrink.io import write_atomic, write_json_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)  # temporary file, then rename: a crash leaves the old file whole
    md = markdown(result)
    write_atomic(out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
