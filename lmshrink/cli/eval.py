from __future__ import annotations

from ._common import add_data_arg, add_json_arg, dense_comparison_rows, emit_json, print_table

HELP = "perplexity of a model directory on a corpus split"


def add_arguments(p) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    add_data_arg(p)
    p.add_argument("--corpus", default=None, help="corpus (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=["valid", "test", "both"])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1, help="evaluation batch (default 1, as Zaremba et al.)")
    p.add_argument("--speed", action="store_true", help="also measure tokens/s (CPU batch 1, GPU batch 64)")
    p.add_argument("--speed-window", type=int, default=35, metavar="T",
                   help="with --speed: tokens per timed call (default 35, scoring text; 1: generation, one token "
                        "at a time)")
    p.add_argument("--cell-clip", type=float, default=None, metavar="C",
                   help="clamp the LSTM cell state carried between BPTT windows to [-C, C] (stops a runaway unit "
                        "on long streams; no effect on a model whose cells stay inside)")
    add_json_arg(p)


def run(args) -> int:
    from ..workflows import evaluate_model_dir

    res = evaluate_model_dir(args.model_dir, data_dir=args.data, corpus=args.corpus, split=args.split,
                             device=args.device, batch_size=args.batch_size, speed=args.speed,
                             cell_clip=args.cell_clip, speed_window=args.speed_window)
    if args.json:
        emit_json(res)
    else:
        parts = [f"{k} {res[k]:.2f}" for k in ("valid_ppl", "test_ppl") if k in res]
        parts += [f"cell clip {res['cell_clip']:g}"] if "cell_clip" in res else []
        parts += [f"params {res['params']:,}", f"bytes on disk {res['bytes_on_disk']:,}"]
        if "tokens_per_s" in res:
            sp = res["speed"]
            parts.append(f"{res['tokens_per_s']:,.0f} tok/s ({sp['device']}, batch {sp['batch_size']}, "
                         f"{sp['seq_len']} token(s) a call)")
        print(f"{args.model_dir}: " + ", ".join(parts))
        if res.get("dense"):
            print_table("beside its dense source (measured by `lmshrink compress` on the same machine)",
                        ["", "dense", "this model", "this/dense"], dense_comparison_rows(res, res["dense"]))
    return 0
