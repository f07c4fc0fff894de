from __future__ import annotations

import sys

from ._common import add_data_arg, dense_comparison_rows, print_table

HELP = "the built-in default job: train a small PTB model on this machine, compress it, compare"
DESCRIPTION = ("Train the `small` LSTM LM of Zaremba et al. on Penn Treebank for a short CPU budget, compress its "
               "vocabulary layers with GroupReduce, and print dense and compressed side by side.")


def add_arguments(p) -> None:
    add_data_arg(p)
    p.add_argument("--out", default="demo-out", help="folder for the two model directories (default demo-out)")
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=1200, help="cap on training steps (keeps the demo short on CPU)")
    p.add_argument("--method", default="groupreduce", help="vocabulary-layer method (default groupreduce)")
    p.add_argument("--ratio", type=float, default=8.0, help="compression ratio of embedding and softmax")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--device", default="auto")


def run(args) -> int:
    from pathlib import Path

    from ..compress import METHODS, get_method
    from ..workflows import compress_model_dir, train_and_save

    out = Path(args.out)
    dense_dir, comp_dir = out / f"ptb-{args.preset}", out / f"ptb-{args.preset}-{args.method}"
    method = args.method
    try:
        get_method(method)
    except Exception:
        print(f"method {method!r} not available yet; falling back to svd (have: {', '.join(sorted(METHODS))})")
        method = "svd"
    train_and_save("ptb", args.data, args.preset, dense_dir, epochs=args.epochs, max_steps=args.max_steps,
                   device=args.device, resume=True)
    res = compress_model_dir(dense_dir, comp_dir, method=method, ratio=args.ratio,
                             finetune_epochs=args.finetune_epochs, data_dir=args.data, device=args.device, overwrite=True)
    rows = dense_comparison_rows(res["side_by_side"]["compressed"], res["side_by_side"]["dense"])
    print_table(f"PTB {args.preset}: dense vs {method} x{args.ratio:g} on embedding+softmax",
                ["", "dense", "compressed", "compressed/dense"], rows,
                footer=f"model directories: {dense_dir}  {comp_dir}")
    for w in res["warnings"]:
        print(f"lmshrink demo: warning: {w}", file=sys.stderr)
    return 0
