"""Where a language model's perplexity comes from: per-window losses along a split, with the hidden state
carried or reset, at several evaluation batch sizes, with the LSTM cell-state sizes seen along the way.

Why: stop 17's PTB-large TT model (fast mode order, 25x) had a validation perplexity of 200 at batch 20
(the per-epoch check) and 275 at batch 10 (the final evaluation), while its test perplexity was 151 and
its training curve smooth. A perplexity that depends on how the stream is cut points at the carried
state: this script shows whether a few windows (or one column of the batch) carry the excess, whether
resetting the state removes it, and how large the cell states grow there.

Usage::

    python benchmarks/eval_windows.py MODEL_DIR [MODEL_DIR ...] --data .data --corpus ptb \\
        --batches 1,10,20 --reset-every 0,1,20 --out runs/results/eval_windows.json
    python benchmarks/eval_windows.py --report A.json B.json --out eval_windows.md   # one table of several runs

``--reset-every K`` zeroes the state every K windows (0: never, the usual evaluation). ``--cell-clips``
evaluates with the model's ``cell_clip`` set to each value (0: off), the carried cell state clamped between
windows (``LSTMLanguageModel``). Each model is
evaluated the way ``evaluate_ppl`` does (fused kernel on rebuilt dense weights), and once more step by step
(``--no-fused`` path) at the first batch size, to rule out the weight rebuild.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def window_losses(model, ids: torch.Tensor, batch: int, bptt: int, device, reset_every: int = 0, fused: bool = True):
    """Per-window, per-column mean losses (W, B) and per-window max |c| per layer (W, L)."""
    from lmshrink.data.corpus import batchify, bptt_windows
    from lmshrink.models.lstm_lm import fused_lstm

    model.eval()
    data = batchify(ids.to(device), batch)  # (N, B)
    state = model.init_state(batch, device)
    losses, cells = [], []
    with fused_lstm(model, fused):
        for w, (inputs, targets) in enumerate(bptt_windows(data, bptt)):
            if reset_every and w % reset_every == 0:
                state = model.init_state(batch, device)
            logits, state = model(inputs, state)  # (T, B, V)
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
            losses.append(nll.view_as(targets).mean(0).double().cpu())  # (B,)
            cells.append(torch.stack([c.abs().max() for _, c in state]).float().cpu())  # (L,)
    return torch.stack(losses), torch.stack(cells)


def summarise(losses: torch.Tensor, cells: torch.Tensor, top: int) -> dict:
    W, B = losses.shape
    per_window = losses.mean(1)  # (W,)
    mean = float(losses.mean())
    worst = torch.topk(per_window, min(top, W))
    per_column = losses.mean(0)  # (B,)
    return {"ppl": math.exp(mean) if mean < 709 else math.inf, "windows": W, "columns": B,
            "worst_windows": [{"window": int(i), "loss": float(v), "max_abs_c": [round(float(x), 2) for x in cells[i]]}
                              for v, i in zip(worst.values, worst.indices)],
            "median_window_loss": float(per_window.median()),
            "column_ppl": [round(math.exp(float(v)), 2) if float(v) < 709 else math.inf for v in per_column],
            "max_abs_c_per_layer": [round(float(v), 2) for v in cells.max(0).values],
            "median_max_abs_c_per_layer": [round(float(v), 2) for v in cells.median(0).values],
            # the share of the excess loss over the median window that the worst 5% of windows carry
            "worst_5pct_share_of_excess": _excess_share(per_window)}


def _excess_share(per_window: torch.Tensor) -> float | None:
    excess = (per_window - per_window.median()).clamp_min(0)
    if float(excess.sum()) == 0:
        return None
    k = max(1, len(per_window) // 20)
    return round(float(torch.topk(excess, k).values.sum() / excess.sum()), 3)


def model_name(model_dir: str) -> str:
    parts = Path(model_dir).parts
    return parts[-2] if parts[-1] == "model" and len(parts) > 1 else parts[-1]


def markdown(files: list[str]) -> str:
    """One table over eval_windows JSON files (each row one evaluation)."""
    lines = ["# Where the perplexity comes from: per-window evaluation (`benchmarks/eval_windows.py`)", "",
             "Generated from " + ", ".join(f"`{Path(f).name}`" for f in files) + ". 'reset': the state zeroed every "
             "so many BPTT windows (0: carried all along, the usual evaluation); 'clip': the model's `cell_clip` "
             "(the carried cell state clamped between windows); 'path': the fused kernel on rebuilt weights, or "
             "the compressed maps step by step. 'worst column': the perplexity of the batch column (a contiguous "
             "stream) that fares worst, beside the median column's.", "",
             "| file | model | split | batch | reset | clip | TF32 | path | ppl | max abs c per layer | worst column | median column |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        data = json.loads(Path(f).read_text())
        tf32 = "on" if data["args"].get("tf32") else "off"
        for model_dir, rows in data["models"].items():
            for r in rows:
                cols = sorted(r["column_ppl"])
                lines.append(f"| `{Path(f).name}` | {model_name(model_dir)} | {r['split']} | {r['batch']} | {r['reset_every']} | "
                             f"{r.get('cell_clip') or '-'} | {tf32} | {'fused' if r['fused'] else 'step by step'} | "
                             f"{r['ppl']:.2f} | {', '.join(f'{v:g}' for v in r['max_abs_c_per_layer'])} | "
                             f"{cols[-1]:,.2f} | {cols[len(cols) // 2]:,.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--report":
        r = argparse.ArgumentParser(description="one Markdown table over eval_windows JSON files")
        r.add_argument("--report", nargs="+", required=True)
        r.add_argument("--out", required=True)
        a = r.parse_args(argv)
        from lmshrink.io import write_atomic

        write_atomic(Path(a.out), markdown(a.report).encode())
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model directories (lmshrink's safetensors + manifest)")
    p.add_argument("--data", default=None)
    p.add_argument("--corpus", default="ptb")
    p.add_argument("--splits", default="valid,test")
    p.add_argument("--batches", default="1,10,20")
    p.add_argument("--reset-every", default="0,1,20", help="windows between state resets (0: never)")
    p.add_argument("--cell-clips", default="0", help="cell_clip values to evaluate with (0: off)")
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--device", default="auto")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                   help="TF32 matmuls (GPU training turns them on; default off: true fp32)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from lmshrink.errors import LmshrinkError

    try:
        return evaluate(args)
    except LmshrinkError as e:  # a missing or corrupt model directory, an unknown corpus: one line, as lmshrink says it
        print(f"eval_windows.py: error: {e}", file=sys.stderr)
        return 2


def evaluate(args) -> int:
    from lmshrink.data import load_corpus
    from lmshrink.errors import LmshrinkError, check
    from lmshrink.io import load_model_dir, read_manifest
    from lmshrink.train.lm import resolve_device

    try:
        batches = [int(b) for b in args.batches.split(",")]
        resets = [int(r) for r in args.reset_every.split(",")]
        clips = [float(c) for c in args.cell_clips.split(",")]
    except ValueError as e:
        raise LmshrinkError(f"--batches, --reset-every and --cell-clips take comma lists of numbers ({e})") from None
    check(all(b > 0 for b in batches) and all(r >= 0 for r in resets) and all(c >= 0 for c in clips),
          "--batches must be positive, --reset-every and --cell-clips non-negative (0: off)")
    for model_dir in args.models:  # a wrong directory is reported before the corpus is read
        read_manifest(model_dir)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    corpus = load_corpus(args.corpus, args.data)
    out = {"benchmark": "eval_windows", "args": vars(args), "models": {}}
    for model_dir in args.models:
        model, manifest = load_model_dir(model_dir, device=device)
        rows = out["models"][model_dir] = []
        for split in args.splits.split(","):
            ids = corpus.splits[split]
            for clip, batch, reset in ((c, b, r) for c in clips for b in batches for r in resets):
                t0 = time.time()
                own, model.cell_clip = model.cell_clip, clip or None
                losses, cells = window_losses(model, ids, batch, args.bptt, device, reset)
                model.cell_clip = own
                row = {"split": split, "batch": batch, "reset_every": reset, "cell_clip": clip or None, "fused": True,
                       **summarise(losses, cells, args.top), "seconds": round(time.time() - t0, 1)}
                rows.append(row)
                print(f"{model_dir} {split:5s} batch {batch:3d} reset {reset:3d} clip {clip:g}: ppl {row['ppl']:9.2f}  "
                      f"max|c| {row['max_abs_c_per_layer']} (median {row['median_max_abs_c_per_layer']})  "
                      f"worst 5% carry {row['worst_5pct_share_of_excess']} of the excess", flush=True)
            losses, cells = window_losses(model, ids, batches[0], args.bptt, device, 0, fused=False)
            row = {"split": split, "batch": batches[0], "reset_every": 0, "cell_clip": None, "fused": False,
                   **summarise(losses, cells, args.top)}
            rows.append(row)
            print(f"{model_dir} {split:5s} batch {batches[0]:3d} step by step: ppl {row['ppl']:9.2f}", flush=True)
        tmp = Path(args.out + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
