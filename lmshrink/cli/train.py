from __future__ import annotations

from pathlib import Path

from ._common import add_data_arg, add_json_arg, emit_json

HELP = "train an LSTM language model (Zaremba et al. 2014 recipe)"


def add_arguments(p) -> None:
    p.add_argument("--corpus", default="ptb", help="ptb or wikitext-2 (default: ptb)")
    add_data_arg(p)
    p.add_argument("--preset", default="small", help="tiny, small, medium or large (default: small)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--epochs", type=int, default=None, help="cut the preset's schedule to N epochs")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--precision", default="auto", help="auto (bf16 autocast on GPU), fp32 (TF32 matmuls on GPU) or bf16")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the training step as a CUDA graph and replay it (CUDA, --precision fp32, dense models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tie-weights", action="store_true", help="share the embedding and softmax weights")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-verify", action="store_true",
                   help="accept corpus files whose sha256 differs from the canonical release (your own text)")
    add_json_arg(p)


def run(args) -> int:
    from ..errors import check
    from ..workflows import train_and_save

    check(args.overwrite or not (Path(args.out) / "manifest.json").exists(),
          f"{args.out} already holds a model; pass --overwrite to replace it")
    result = train_and_save(corpus=args.corpus, data_dir=args.data, preset=args.preset, out=args.out,
                            epochs=args.epochs, max_steps=args.max_steps, device=args.device, precision=args.precision,
                            seed=args.seed, tie_weights=args.tie_weights, resume=not args.no_resume,
                            progress=not args.no_progress, log=_stderr_log if args.json else print,
                            cuda_graph=args.cuda_graph, verify=not args.no_verify)
    if args.json:
        emit_json(result["metrics"])
    else:
        m = result["metrics"]
        print(f"wrote {args.out}: valid ppl {m['valid_ppl']:.2f}, test ppl {m['test_ppl']:.2f}, "
              f"{m['params']:,} params, {m['bytes_on_disk']:,} bytes, {m['wall_s']:.0f} s")
    return 0


def _stderr_log(*parts) -> None:
    """With --json, stdout carries only the JSON; progress lines go to stderr."""
    import sys

    print(*parts, file=sys.stderr, flush=True)
