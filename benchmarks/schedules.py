"""Learning-rate schedules for sentence classification, each at its own best learning rate (chosen on dev).

``benchmarks/textcls.py`` compares CALR (Acharya et al. 2019, Sec. 3.3) with constant, cosine and one-cycle
schedules at one shared peak learning rate. A schedule's best peak rate differs from another's (CALR spends
most of its time far below its peak), so that comparison can say more about the rate than about the
schedule. Here every schedule gets a small grid of peak rates; for each (data set, schedule) the rate with
the best mean *dev* accuracy is chosen, and the *test* accuracy at that rate is reported (mean ± std over
seeds, MR: folds). Same model (DAN over GloVe 6B 50d), Adam (eps 0.01), batch 50, epochs and CALR settings
as ``textcls.py``; weights of the best dev epoch.

CALR has a knob the others lack: how fast its upper bound decays (``--calr-decay``, the paper's 0.1 per
epoch; 0.5 here by default). Given several decays, CALR's (peak rate, decay) pair is chosen on dev, and the
table says CALR had that extra knob tuned. ``--reuse FILE`` keeps the runs a former result already holds
(same model, epochs and Adam eps), so adding decays reruns only CALR.

    python benchmarks/schedules.py --data ../shared/data --out benchmarks/results/schedules.json
    python benchmarks/schedules.py --schedules calr --calr-decay 0.1,0.3,0.5,0.7 --lrs 0.003,0.01,0.03,0.1,0.3 \
        --reuse benchmarks/results/schedules.json --out benchmarks/results/schedules_calr_decay.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = {"trec": "textcls/trec", "sst2": "textcls/sst2", "mr": "textcls/mr"}
SCHEDULES = ["calr", "constant", "cosine", "onecycle"]


def job(spec: dict) -> list[dict]:
    """Every (schedule, rate, CALR decay) of ``todo`` for one (set, seed): the data and vectors are loaded once."""
    import torch

    torch.set_num_threads(1)
    from lmshrink.data.textcls import embedding_matrix, resolve_vectors
    from lmshrink.models.classifier import build_classifier
    from lmshrink.train.classify import evaluate_accuracy, prepare_data, train_classifier
    from lmshrink.train.lm import seed_everything

    name, seed = spec["set"], spec["seed"]
    cv = name == "mr"  # no standard split: fold `seed` of a seeded 10-fold CV
    ds, vocab, enc = prepare_data(Path(spec["data"]) / SETS[name], seed=0 if cv else seed, folds=10 if cv else None,
                                  fold=seed if cv else 0)
    E, _ = embedding_matrix(vocab, resolve_vectors("glove", spec["data"]), seed)
    V, d = E.shape
    rows = []
    for sched, lr, decay in spec["todo"]:  # (schedule, peak rate, CALR decay or None)
        seed_everything(seed)
        model = build_classifier(spec["model"], V, ds.num_classes, d)
        model.load_embedding(E)
        t0 = time.monotonic()
        res = train_classifier(model, enc["train"], enc["dev"], epochs=spec["epochs"], schedule=sched, seed=seed,
                               batch_size=50, lr=lr, adam_eps=spec["adam_eps"], log=lambda *_: None,
                               calr_options={"step_size": "half_epoch", "decay": decay or 0.5})  # decay: CALR rows only
        rows.append({"set": name, "seed": seed, "model": spec["model"], "schedule": sched, "lr": lr, "calr_decay": decay,
                     "dev_accuracy": res["best_dev_accuracy"],
                     "test_accuracy": evaluate_accuracy(model, enc["test"])["accuracy"],
                     "wall_s": time.monotonic() - t0})
    print(f"[{name} seed {seed}] {len(rows)} runs done", flush=True)
    return rows


def select(rows: list[dict]) -> dict:
    """Per set and schedule: the setting (peak rate, and CALR's decay) with the best mean dev accuracy, and test
    accuracy there."""
    out: dict = {}
    for name in sorted({r["set"] for r in rows}):
        out[name] = {}
        for sched in SCHEDULES:
            by_cfg: dict = {}
            for r in rows:
                if r["set"] == name and r["schedule"] == sched:
                    by_cfg.setdefault((r["lr"], r.get("calr_decay")), []).append(r)
            if not by_cfg:
                continue
            best = max(by_cfg, key=lambda c: statistics.mean(r["dev_accuracy"] for r in by_cfg[c]))
            test = [r["test_accuracy"] for r in by_cfg[best]]
            decays = sorted({c[1] for c in by_cfg if c[1] is not None})
            out[name][sched] = {"lr": best[0], "dev_mean": statistics.mean(r["dev_accuracy"] for r in by_cfg[best]),
                                "test_mean": statistics.mean(test), "test_std": statistics.pstdev(test), "seeds": len(test),
                                "test_mean_by_lr": {cfg_label(lr, d, len(decays) > 1): statistics.mean(
                                    r["test_accuracy"] for r in rs) for (lr, d), rs in sorted(by_cfg.items())}}
            if sched == "calr":
                out[name][sched].update(decay=best[1], decays_tried=decays)
        sch = {s: v["test_mean"] for s, v in out[name].items()}
        if "calr" in sch and len(sch) > 1:
            other = max(v for s, v in sch.items() if s != "calr")
            out[name]["_target_calr_at_least_best_other"] = {"met": sch["calr"] >= other, "calr": sch["calr"],
                                                             "best_other": other}
            rival = max((s for s in sch if s != "calr"), key=sch.get)
            out[name]["_paired_calr_vs_best_other"] = paired(rows, name, out[name]["calr"], rival, out[name][rival])
    return out


def paired(rows: list[dict], name: str, calr: dict, rival: str, rv: dict) -> dict:
    """CALR at its chosen setting minus the best other schedule at its own, seed by seed (the same data split and
    initial embedding per seed): mean difference, its standard error and wins, over the seeds both ran. Seed
    noise shared by both runs cancels, so this says more than two means +- std."""
    def at(sched, lr, decay):
        return {r["seed"]: r["test_accuracy"] for r in rows
                if r["set"] == name and r["schedule"] == sched and r["lr"] == lr and r.get("calr_decay") == decay}
    c, o = at("calr", calr["lr"], calr.get("decay")), at(rival, rv["lr"], None)
    diffs = [c[k] - o[k] for k in sorted(set(c) & set(o))]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return {"rival": rival, "seeds": len(diffs), "mean_diff": statistics.mean(diffs) if diffs else None,
            "se": se, "calr_wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs)}


def cfg_label(lr: float, decay: float | None, several: bool) -> str:
    return f"{lr}/{decay}" if several else str(lr)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = ["# Learning-rate schedules at their own best rate (DAN over GloVe 6B 50d)", "",
             f"Generated by `benchmarks/schedules.py`; {s['epochs']} epochs, Adam eps {s['adam_eps']}, batch 50, "
             f"peak rates {s['lrs']} (chosen per set and schedule by mean dev accuracy), seeds {s['seeds']} "
             f"(MR: folds of a seeded 10-fold CV), CALR step half an epoch, decay {s['calr_decay']} per epoch"
             + (" (chosen on dev with the rate: one knob more than the other schedules get; 'test acc at each lr' "
                "lists rate/decay)" if "," in str(s["calr_decay"]) else "") + "; "
             f"{result['wall_s'] / 60:.1f} min on {s['jobs']} process(es)"
             + (f" for the new runs; {s['reused_runs']} runs reused from `{Path(s['reuse']).name}`" if s.get("reused_runs") else "")
             + ".", "",
             "| set | schedule | chosen peak lr | dev acc % | test acc % | test acc % at each lr |", "|---|---|---|---|---|---|"]
    for name, per in result["selected"].items():
        for sched, v in per.items():
            if sched.startswith("_"):
                continue
            at = ", ".join(f"{lr}: {100 * a:.1f}" for lr, a in v["test_mean_by_lr"].items())
            chosen = f"{v['lr']}, decay {v['decay']}" if len(v.get("decays_tried") or []) > 1 else f"{v['lr']}"
            lines.append(f"| {name} | {sched} | {chosen} | {100 * v['dev_mean']:.2f} | "
                         f"{100 * v['test_mean']:.2f} ± {100 * v['test_std']:.2f} | {at} |")
    lines.append("")
    for name, per in result["selected"].items():
        pr = per.get("_paired_calr_vs_best_other")
        if pr and pr["seeds"] > 1:
            lines.append(f"- {name}, paired by seed: CALR minus {pr['rival']} {100 * pr['mean_diff']:+.2f} points "
                         f"(standard error {100 * pr['se']:.2f}) over {pr['seeds']} seeds; CALR ahead on "
                         f"{pr['calr_wins']}, tied on {pr['ties']}")
        t = per.get("_target_calr_at_least_best_other")
        if t:
            lines.append(f"- {name}: CALR {100 * t['calr']:.2f}% vs best other {100 * t['best_other']:.2f}%: "
                         f"**{'met' if t['met'] else 'not met'}** (CALR at least as good as the best other schedule)")
    return "\n".join(lines) + "\n"


def reused_rows(path: str, a) -> list[dict]:
    """The runs of a former result made the same way (model, epochs, Adam eps), each with its CALR decay."""
    try:
        res = json.loads(Path(path).read_text())
        old, rows = res["settings"], res["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"schedules.py: cannot reuse {path}: not a schedules.py result ({e})")
    for key in ("model", "epochs", "adam_eps"):
        if old.get(key) != getattr(a, key):
            raise SystemExit(f"schedules.py: cannot reuse {path}: its {key} is {old.get(key)!r}, this run's {getattr(a, key)!r}")
    decay = old.get("calr_decay")  # results from before the decay list: one decay for all their CALR runs
    return [{**r, "calr_decay": r.get("calr_decay", decay if r["schedule"] == "calr" else None)} for r in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("LMSHRINK_DATA") or str(ROOT.parent / "shared" / "data"),
                   help="data folder with textcls/ and glove-6b-50d/ (default $LMSHRINK_DATA or ../shared/data)")
    p.add_argument("--sets", default="trec,sst2,mr")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--model", default="dan")
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--lrs", default="0.001,0.003,0.01,0.03", help="peak learning rates to choose from")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--adam-eps", type=float, default=0.01)
    p.add_argument("--calr-decay", default="0.5", help="CALR decay per epoch; a comma list is chosen on dev with the rate")
    p.add_argument("--reuse", default=None, help="a former schedules.py result whose runs are kept, not rerun")
    p.add_argument("--grid-only", action="store_true",
                   help="with --reuse: keep only the former runs this command's sets, seeds, schedules, rates and "
                        "decays ask for (default: keep them all, so new runs join the former comparison)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "schedules.json"))
    a = p.parse_args(argv)
    from lmshrink.io import write_json_atomic

    t0 = time.monotonic()
    lrs = [float(x) for x in a.lrs.split(",")]
    try:
        decays = [float(x) for x in a.calr_decay.split(",")]
    except ValueError:
        raise SystemExit(f"schedules.py: --calr-decay takes numbers, got {a.calr_decay!r}")
    if not all(0 < d < 1 for d in decays):
        raise SystemExit(f"schedules.py: every CALR decay must be in (0, 1), got {a.calr_decay}")
    # the grid this command asks for: (set, seed, schedule, rate, CALR decay)
    grid = [(s, k, sched, lr, d) for s in a.sets.split(",") for k in range(a.seeds) for sched in a.schedules.split(",")
            for lr in lrs for d in (decays if sched == "calr" else [None])]
    kept = reused_rows(a.reuse, a) if a.reuse else []
    if a.grid_only:
        asked = set(grid)
        kept = [r for r in kept if (r["set"], r["seed"], r["schedule"], r["lr"], r["calr_decay"]) in asked]
    have = {(r["set"], r["seed"], r["schedule"], r["lr"], r.get("calr_decay")) for r in kept}
    specs = []
    for s in a.sets.split(","):
        for k in range(a.seeds):
            todo = [key[2:] for key in grid if key[:2] == (s, k) and key not in have]
            if todo:
                specs.append({"set": s, "seed": k, "model": a.model, "todo": todo, "data": a.data, "epochs": a.epochs,
                              "adam_eps": a.adam_eps})
    rows: list[dict] = list(kept)
    with ProcessPoolExecutor(a.jobs) as pool:
        for r in pool.map(job, specs):
            rows += r
    settings = {**vars(a), "lrs": lrs, "calr_decay": decays[0] if len(decays) == 1 else a.calr_decay,
                "reused_runs": len(kept)}
    result = {"settings": settings, "wall_s": time.monotonic() - t0, "rows": rows, "selected": select(rows)}
    write_json_atomic(a.out, result)
    md = markdown(result)
    Path(a.out).with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
