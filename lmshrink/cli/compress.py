from __future__ import annotations

import sys

from ._common import add_data_arg, add_json_arg, emit_json, print_table

HELP = "compress a model directory with a plan (or one method on the vocabulary layers)"
DESCRIPTION = (
    "Compress MODEL_DIR into OUT_DIR. Either --plan PLAN.toml (one [layers.\"PATTERN\"] table per module "
    "pattern, with method and options) or --method NAME --ratio R (the vocabulary layers, tying respected). "
    "Optionally retrain with --finetune-epochs N."
)


def add_arguments(p) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--out", required=True, metavar="OUT_DIR")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--plan", metavar="PLAN_TOML", help="TOML plan file")
    g.add_argument("--method", help="method for the vocabulary layers, e.g. groupreduce, svd, prune, quantize (an unknown "
                   "name lists every registered one)")
    p.add_argument("--ratio", type=float, default=None, help="with --method: make each layer R times smaller")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="with --method: extra method option (repeatable), e.g. --option num_blocks=5")
    p.add_argument("--finetune-epochs", type=int, default=0, help="retrain for N epochs on the model's corpus")
    p.add_argument("--finetune-lr", type=float, default=None)
    p.add_argument("--finetune-patience", type=int, default=0, metavar="N",
                   help="epochs in a row that may fail to improve validation perplexity before the retraining rate "
                        "drops tenfold, training then going on from the latest weights (default 0: the first one "
                        "drops it and is undone)")
    p.add_argument("--distill", type=float, default=None, metavar="WEIGHT",
                   help="retrain against the dense model too (knowledge distillation): (1 - WEIGHT) * cross-entropy "
                        "+ WEIGHT * KL(dense || compressed), WEIGHT in [0, 1]")
    add_data_arg(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    add_json_arg(p)


def _parse_options(items: list[str]) -> dict:
    import json

    from ..errors import check

    out = {}
    for item in items:
        check("=" in item, f"--option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def run(args) -> int:
    from ..workflows import compress_model_dir

    res = compress_model_dir(args.model_dir, args.out, plan_path=args.plan, method=args.method, ratio=args.ratio,
                             options=_parse_options(args.option), finetune_epochs=args.finetune_epochs,
                             finetune_lr=args.finetune_lr, data_dir=args.data, device=args.device, distill=args.distill,
                             finetune_patience=args.finetune_patience,
                             overwrite=args.overwrite, log=(lambda *_: None) if args.json else print)
    for w in res["warnings"]:  # on stderr, so that --json output stays one JSON document
        print(f"lmshrink compress: warning: {w}", file=sys.stderr)
    if args.json:
        emit_json(res)
        return 0
    rows = [[r["module"], r["method"], f"{r['dense_params']:,}", f"{r['params']:,}",
             f"{r['dense_bits'] / max(r['bits'], 1):.1f}x"] for r in res["report"]]
    print_table(f"compressed {args.model_dir} -> {args.out}", ["module", "method", "dense params", "params", "bits ratio"], rows)
    side = res["side_by_side"]
    rows = [[k, *[_fmt(side[w].get(k)) for w in ("dense", "compressed")]] for k in side["dense"]]
    print_table("dense vs compressed", ["", "dense", "compressed"], rows)
    return 0


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


