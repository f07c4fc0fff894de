from __future__ import annotations

from ._common import add_json_arg, dense_comparison_rows, emit_json, human_bytes, print_table

HELP = "per-layer table of a model directory: kind, params, bits, bytes"


def add_arguments(p) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    add_json_arg(p)


def run(args) -> int:
    from ..workflows import model_info

    info = model_info(args.model_dir)
    if args.json:
        emit_json(info)
        return 0
    rows = [[r["name"], r["kind"], f"{r['params']:,}", f"{r['bits']:,}", human_bytes(r["bytes"])] for r in info["layers"]]
    t = info["total"]
    rows.append(["total", "", f"{t['params']:,}", f"{t['bits']:,}", human_bytes(t["bits"] / 8)])
    m = info.get("metrics", {})
    footer = f"bytes on disk: {info['bytes_on_disk']['total']:,} (weights {info['bytes_on_disk']['weights']:,}, " \
             f"manifest {info['bytes_on_disk']['manifest']:,}, vocabulary {info['bytes_on_disk'].get('vocab', 0):,})"
    if m:
        footer += "  |  " + ", ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float))
    print_table(f"{args.model_dir} ({info['architecture']['kind']})", ["layer", "kind", "params", "bits", "bytes"], rows, footer)
    if info.get("dense"):
        this = {**m, "params": t["params"], "bits": t["bits"], "bytes_on_disk": info["bytes_on_disk"]["total"]}
        print_table("beside its dense source (measured by `lmshrink compress` on the same machine)",
                    ["", "dense", "this model", "this/dense"], dense_comparison_rows(this, info["dense"]))
    return 0
