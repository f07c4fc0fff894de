"""Inference speed of compressed layers inside a whole LSTM LM: tokens/s compressed vs dense, side by side.

``--target vocab``: a PTB-large-shaped model (V = 10000, H = 1500, 2 layers, untied) gets its embedding and
softmax compressed by each method at ``--rate``. ``--target lstm``: a PTB-medium-shaped model (H = 650) gets
its LSTM maps (``rnn.layers.*.ih`` / ``.hh``) compressed at ``--rate`` in their inference form (doped KP
packed at its final density, pruning one-shot). Weights are random -- speed does not depend on training.
Every model is timed with :func:`lmshrink.measure.lm_tokens_per_second` on CPU at batch 1 and, when CUDA is
there, on GPU at batch 64 (``--gpu-batch``; 35-token windows, ``--seq-len``; hidden state carried, median of
repeats, interleaved rounds). With ``--target lstm`` the plain rows step through the compact maps on every device
and length (``fused=False``: a user's model on CUDA rebuilds dense weights from 4 steps per call,
``lmshrink.models.lstm_lm.rebuild_at_inference``), and ``--rebuilt`` adds each model's rebuilt-dense row; the
rule's threshold was read off ``--seq-len 1, 2, 4, 8, 35`` on an H100 (``results/recurrent_speed_gpu_steps.md``).
Word counts are a synthetic Zipf law (GroupReduce needs some; the ranks it picks depend on them, the speed barely).
``--group-gemms 2,3`` also times each GroupReduce model with its block softmax run as at most 2 (then 3) batched
GEMMs (:func:`lmshrink.layers.block_low_rank.set_group_gemms`), as rows ``groupreduce[g2]`` etc. in the same rounds.
``--bag-lookup`` also times each GroupReduce model with its embedding lookup as one weighted ``embedding_bag``
(``layer.lookup = "bag"``, :func:`lmshrink.layers.block_low_rank.set_lookup`) instead of scatter + GEMM, as rows
``groupreduce[bag]`` etc. in the same rounds.
``--blocks-path`` also times each GroupReduce model with its block-diagonal inference path off (``layer.blockdiag =
"off"``, :func:`lmshrink.layers.block_low_rank.set_blockdiag`: per-block softmax GEMMs and the scatter lookup), as rows
``groupreduce[blocks]`` etc.; the plain rows run the default (``"auto"``: block-diagonal on CUDA where it is smaller
than dense).
Every row records the tensor memory its model holds after being timed on each device
(:func:`lmshrink.measure.resident_bytes`: ``{dev}_resident_bytes`` = state + caches, ``{dev}_cache_bytes`` the
inference operands its layers keep between calls, e.g. GroupReduce's block-diagonal operands on CUDA or the int4
kernel's packed copy on CPU); the table shows them in MiB.
``--float-int4`` also times each 4-bit quantized model with torch's int4 CPU kernel off (our dequantize-a-chunk
path), as rows ``quantize-4bit[float]`` etc. in the same rounds.
``--cuda-graph`` also times every row on CUDA devices by replaying one captured CUDA graph of the whole forward
(``lm_tokens_per_second(cuda_graph=True)``), as rows ``dense[graph]``, ``groupreduce[graph]``,
``groupreduce[g2][graph]`` etc. in the same interleaved rounds; their speed-up is against ``dense[graph]`` (graph vs
graph, eager vs eager). Why: GroupReduce's softmax is one small GEMM per block and a compressed LSTM launches a
few kernels per time step, so eager timing may charge the compressed models for launches rather than arithmetic;
graph replay is how a serving stack would run a fixed-shape decoder (torch.compile's "reduce-overhead" does the
same). Measured on an H100 at the PTB-large shape, TF32 (``results/vocab_speed_gpu_graph.md``): GroupReduce 0.90x
``dense[graph]``, SVD 1.04x -- the GroupReduce gap is in its kernels, not launches. On CPU the graph rows are skipped.

    python benchmarks/speed.py --devices cpu --cpu-threads 1 --out benchmarks/results/vocab_speed_cpu.json
    python benchmarks/speed.py --target lstm --hidden 650 --rate 25 --devices cpu --cpu-threads 1 --rebuilt \
        --out benchmarks/results/recurrent_speed_cpu.json
    for T in 1 2 4 8 35; do python benchmarks/speed.py --target lstm --hidden 650 --rate 25 --devices cuda --rounds 3 \
        --rebuilt --seq-len $T --out recurrent_speed_gpu_T$T.json; done
    python benchmarks/speed.py --devices cuda --rate 6.6 --rounds 3 --methods groupreduce,svd,groupreduce+q8 --cuda-graph \
        --matmul-precision high --out benchmarks/results/vocab_speed_gpu_graph.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmshrink.compress import Plan, compress, make_config  # noqa: E402
from lmshrink.io import versions, write_json_atomic  # noqa: E402
from lmshrink.layers import quantized
from lmshrink.layers.base import DerivedCaches
from lmshrink.layers.block_low_rank import set_blockdiag, set_group_gemms, set_lookup  # noqa: E402
from lmshrink.measure import lm_forward_breakdown, lm_tokens_per_second, resident_bytes  # noqa: E402
from lmshrink.models import LSTMLanguageModel  # noqa: E402


LSTM_MAPS = ("rnn.layers.*.ih", "rnn.layers.*.hh")


def method_configs(rate: float, gq_rate: float, target: str = "vocab", num_blocks: int = 10,
                   rank_rule: str = "sqrt_frequency") -> dict[str, dict]:
    if target == "lstm":  # the inference forms of Thakker et al.'s and Grachev et al.'s methods
        return {
            "doped_kp": {"method": "doped_kronecker", "ratio": rate, "anneal": False},
            "kp": {"method": "kronecker", "ratio": rate},
            "prune": {"method": "prune", "ratio": rate},
            "hmd": {"method": "hmd", "ratio": rate},
            "lmf": {"method": "svd", "ratio": rate},
            "tt": {"method": "tt", "ratio": rate},
            "quantize-4bit": {"method": "quantize", "bits": 4},
        }
    gr = {"num_blocks": num_blocks, "rank_rule": rank_rule, "refine_iters": 2}  # the benchmarks' recipe by default
    gr8 = {**gr, "rank_multiple": 8}  # ranks rounded to multiples of 8: every block GEMM operand aligned
    return {
        "svd": {"method": "svd", "ratio": rate},
        "groupreduce": {"method": "groupreduce", "ratio": rate, **gr},
        "groupreduce-r8": {"method": "groupreduce", "ratio": rate, **gr8},
        "groupreduce+q8": {"method": "quantize", "bits": 8, "ratio": gq_rate, "base": {"method": "groupreduce", **gr}},
        "groupreduce-r8+q8": {"method": "quantize", "bits": 8, "ratio": gq_rate, "base": {"method": "groupreduce", **gr8}},
        "prune": {"method": "prune", "ratio": rate},
        "quantize-8bit": {"method": "quantize", "bits": 8},
        "quantize-4bit": {"method": "quantize", "bits": 4},
    }


def write_table(out_json: str) -> str:
    """Markdown table next to the JSON (``.md``), from the JSON alone; returns it."""
    res = json.loads(Path(out_json).read_text())
    devices, rows, m, st = res["devices"], res["rows"], res["model"], res["setting"]
    what = "LSTM maps" if res.get("target") == "lstm" else "emb+softmax"
    head = ["method", f"ratio ({what})", "compress s"] + [f"{d} tok/s" for d in devices] + [f"{d} vs dense" for d in devices]
    parts = [d for d in devices if f"{d}_ms_parts" in rows[0]]  # --breakdown
    head += [f"{d} ms {p}" for d in parts for p in ("encoder", "rnn", "decoder")]
    mems = [d for d in devices if any(f"{d}_resident_bytes" in r for r in rows)]
    head += [f"{d} {k} MiB" for d in mems for k in ("resident", "of it caches")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r.get('vocab_ratio', 1.0):.1f}x", f"{r['compress_s']:.1f}"]
        # graph rows (--cuda-graph) are timed on CUDA devices only: blank on the others
        cells += [f"{r[f'{d}_tokens_per_s']:,.0f}" if f"{d}_tokens_per_s" in r else "" for d in devices]
        cells += [f"{r.get(f'{d}_vs_dense', 1.0):.2f}" if f"{d}_tokens_per_s" in r else "" for d in devices]
        cells += [f"{r[f'{d}_ms_parts'][p]:.3f}" if f"{d}_ms_parts" in r else "" for d in parts
                  for p in ("encoder", "rnn", "decoder")]
        cells += [f"{r[f'{d}_{k}_bytes'] / 2**20:.1f}" if f"{d}_{k}_bytes" in r else "" for d in mems
                  for k in ("resident", "cache")]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"V={m['vocab']}, H={m['hidden']}, {m['layers']} layers, random weights; CPU batch {st['batch']['cpu']} "
            f"({res['threads']} thread(s)), GPU batch {st['batch']['cuda']}; {st['seq_len']}-token windows; median over "
            f"{st.get('rounds', '?')} interleaved rounds of {st.get('repeats', '?')} timed passes; float32 matmul precision "
            f"{st.get('matmul_precision', 'highest (not recorded)')}; "
            + (f"LSTM maps each compressed to {st.get('rate', '?')}x (weights; dense biases kept); plain rows step "
               "through the compact maps; 'rebuilt dense' rows rebuild each LSTM weight from the compact maps once "
               "per window and run the fused kernel (same model, other path)."
               if what == "LSTM maps" else
               f"embedding and softmax each compressed to {st.get('rate', '?')}x (GroupReduce+q8: {st.get('gq_rate', '?')}x overall).")
            + (" Rows marked [graph] are timed as replays of one captured CUDA graph of the whole forward (kernel-launch "
               "overhead removed, as a fixed-shape serving stack runs), on CUDA only; their 'vs dense' is against "
               "dense[graph] (graph vs graph, eager vs eager)." if any(r.get("cuda_graph") for r in rows) else ""))
    table = "\n".join(lines) + "\n\n" + note + "\n"
    Path(out_json).with_suffix(".md").write_text(table)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("vocab", "lstm"), default="vocab", help="which layers to compress")
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--hidden", type=int, default=1500)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=10.0, help="compression ratio of embedding and softmax (each)")
    ap.add_argument("--gq-rate", type=float, default=26.0, help="overall ratio of GroupReduce + 8-bit")
    ap.add_argument("--methods", default="all", help="comma list from: " + ", ".join(method_configs(10, 26)) + " (vocab); "
                    + ", ".join(method_configs(10, 26, "lstm")) + " (lstm)")
    ap.add_argument("--devices", default="auto", help="cpu, cuda, or auto (cpu + cuda if available)")
    ap.add_argument("--cpu-threads", type=int, default=0, help="torch threads on CPU (0: leave as is)")
    ap.add_argument("--repeats", type=int, default=10, help="timed forward passes per measurement (median)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds over all models")
    ap.add_argument("--num-blocks", type=int, default=10, help="GroupReduce blocks (vocab target)")
    ap.add_argument("--rank-rule", default="sqrt_frequency", help="GroupReduce rank rule (vocab target)")
    ap.add_argument("--matmul-precision", choices=("highest", "high"), default="highest",
                    help="torch float32 matmul precision: highest (true fp32, PyTorch's default) or high (TF32 on GPU, as "
                         "lmshrink's GPU training turns on); the verdict on the GPU can flip with it")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time encoder, LSTM and softmax separately (ms per window) on every device")
    ap.add_argument("--rebuilt", action="store_true",
                    help="--target lstm: also time each model with its LSTM weights rebuilt dense per window (fused kernel)")
    ap.add_argument("--group-gemms", default=None, metavar="N[,N...]",
                    help="also time GroupReduce models with their block softmax as at most N batched GEMMs, one row per N")
    ap.add_argument("--bag-lookup", action="store_true",
                    help="also time GroupReduce models with their embedding lookup as one weighted embedding_bag (rows NAME[bag])")
    ap.add_argument("--blocks-path", action="store_true",
                    help="also time GroupReduce models with the block-diagonal inference path off (rows NAME[blocks])")
    ap.add_argument("--float-int4", action="store_true",
                    help="also time 4-bit quantized models with torch's int4 CPU kernel off, i.e. our dequantize-a-chunk "
                         "path (rows NAME[float]; lmshrink.layers.quantized.INT4_CPU_KERNEL)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="on CUDA devices also time every row as CUDA graph replays (rows NAME[graph], compared with "
                         "dense[graph]); skipped on CPU")
    ap.add_argument("--seq-len", type=int, default=35,
                    help="tokens per timed window (35: evaluation's BPTT windows; 1: generation, one token per call)")
    ap.add_argument("--gpu-batch", type=int, default=64, help="batch on CUDA devices (CPU: always 1)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/{vocab,recurrent}_speed.json)")
    args = ap.parse_args(argv)

    if args.seq_len < 1 or args.gpu_batch < 1:
        print(f"speed.py: --seq-len and --gpu-batch must be >= 1, got {args.seq_len} and {args.gpu_batch}",
              file=sys.stderr)
        return 2
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else args.devices.split(",")
    args.out = args.out or f"benchmarks/results/{'recurrent' if args.target == 'lstm' else 'vocab'}_speed.json"
    cfgs = method_configs(args.rate, args.gq_rate, args.target, args.num_blocks, args.rank_rule)
    names = list(cfgs) if args.methods == "all" else args.methods.split(",")
    unknown = [n for n in names if n not in cfgs]
    if unknown:
        print(f"speed.py: unknown method(s) {', '.join(unknown)}; choose from {', '.join(cfgs)}", file=sys.stderr)
        return 2
    try:
        group_gemms = [int(x) for x in args.group_gemms.split(",")] if args.group_gemms else []
    except ValueError:
        group_gemms = [0]
    if any(g < 1 for g in group_gemms):
        print(f"speed.py: --group-gemms wants positive integers, e.g. 2,3; got {args.group_gemms!r}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    V = args.vocab
    dense = LSTMLanguageModel(V, hidden=args.hidden, layers=args.layers, init_scale=0.04).eval()
    counts = torch.round(V * 5.0 / torch.arange(1, V + 1)) + 1  # Zipf-like
    setting = {"batch": {"cpu": 1, "cuda": args.gpu_batch}, "seq_len": args.seq_len, "rounds": args.rounds,
               "repeats": args.repeats, "rate": args.rate, "gq_rate": args.gq_rate, "matmul_precision": args.matmul_precision,
               "cuda_graph": args.cuda_graph}

    def batch(dev: str) -> int:
        return setting["batch"]["cuda" if dev.startswith("cuda") else "cpu"]

    memory: dict[tuple[str, str], dict] = {}  # (row, device) -> resident_bytes of its model after timing there

    def speed(model, dev, fused=False, cuda_graph=False, row=None):
        # rows may share one model object (knob rows): start each timing without the caches another row left, so
        # its memory is its own (the warm-up passes rebuild them before anything is timed)
        for m in model.modules():
            if isinstance(m, DerivedCaches):
                m.clear_caches()
        r = lm_tokens_per_second(model, V, dev, batch_size=batch(dev), seq_len=args.seq_len, repeats=args.repeats, warmup=3,
                                 fused=fused, cuda_graph=cuda_graph)["tokens_per_s"]
        memory[(row, dev)] = resident_bytes(model)  # before .cpu(), which drops device caches
        model.cpu()
        return r

    models = {"dense": dense}
    fused = set()  # rows timed with the LSTM weights rebuilt dense per window (--rebuilt)
    # row -> GroupReduce runtime knobs (--group-gemms: group_gemms; --bag-lookup: lookup): the same model object as
    # its plain row, the knobs set before each timing
    knobs: dict[str, dict] = {}

    int4_default = quantized.INT4_CPU_KERNEL

    def set_knobs(model, row: str) -> None:
        k = knobs.get(row, {})
        set_group_gemms(model, k.get("group_gemms"))
        set_lookup(model, k.get("lookup", "scatter"))
        set_blockdiag(model, k.get("blockdiag", "auto"))
        quantized.INT4_CPU_KERNEL = k.get("int4", int4_default)

    graphed = set()  # rows timed as CUDA graph replays (--cuda-graph), on CUDA devices only
    rows = {"dense": {"method": "dense", "config": None, "vocab_ratio": 1.0, "compress_s": 0.0}}
    for name in names:
        model = copy.deepcopy(dense)
        cfg = make_config(**cfgs[name])
        t0 = time.perf_counter()
        targets = LSTM_MAPS if args.target == "lstm" else ("encoder", "decoder")
        report = compress(model, Plan({t: cfg for t in targets}), {"word_counts": counts})
        cs = time.perf_counter() - t0
        ratio = sum(r["dense_bits"] for r in report) / sum(r["bits"] for r in report)
        models[name] = model.eval()
        rows[name] = {"method": name, "config": cfg.to_dict(), "vocab_ratio": ratio, "compress_s": cs}
        print(f"{name}: compressed in {cs:.1f} s, ratio {ratio:.1f}x", flush=True)
        if args.rebuilt and args.target == "lstm":
            models[f"{name}, rebuilt dense"] = model
            rows[f"{name}, rebuilt dense"] = {**rows[name], "method": f"{name}, rebuilt dense", "fused": True}
            fused.add(f"{name}, rebuilt dense")
        if args.float_int4 and any(isinstance(m, quantized.PackedMatrix) and m.nbits == 4 for m in model.modules()):
            models[f"{name}[float]"] = model  # the same model, the int4 kernel off while it is timed
            rows[f"{name}[float]"] = {**rows[name], "method": f"{name}[float]", "int4_kernel": False}
            knobs[f"{name}[float]"] = {"int4": False}
        if set_group_gemms(model, None):  # a GroupReduce model (or one built on it): rows with grouped GEMMs
            for g in group_gemms:
                models[f"{name}[g{g}]"] = model
                rows[f"{name}[g{g}]"] = {**rows[name], "method": f"{name}[g{g}]", "group_gemms": g}
                knobs[f"{name}[g{g}]"] = {"group_gemms": g}
            if args.blocks_path:
                models[f"{name}[blocks]"] = model
                rows[f"{name}[blocks]"] = {**rows[name], "method": f"{name}[blocks]", "blockdiag": "off"}
                knobs[f"{name}[blocks]"] = {"blockdiag": "off"}
            if args.bag_lookup:
                models[f"{name}[bag]"] = model
                rows[f"{name}[bag]"] = {**rows[name], "method": f"{name}[bag]", "lookup": "bag"}
                knobs[f"{name}[bag]"] = {"lookup": "bag"}
    cuda_devices = [d for d in devices if d.startswith("cuda")]
    if args.cuda_graph and not cuda_devices:
        print(f"--cuda-graph: no CUDA device among {','.join(devices)}; graph rows skipped", flush=True)
    if args.cuda_graph and cuda_devices:  # every row again, as graph replays: the same model object and knobs
        for n in list(models):
            models[f"{n}[graph]"] = models[n]
            rows[f"{n}[graph]"] = {**rows[n], "method": f"{n}[graph]", "cuda_graph": True}
            graphed.add(f"{n}[graph]")
            if n in fused:
                fused.add(f"{n}[graph]")
            if n in knobs:
                knobs[f"{n}[graph]"] = knobs[n]
    # Interleaved rounds (dense, m1, m2, ..., dense, m1, ...): load drift hits every model alike;
    # each model's figure is the median over rounds, its speed-up the median of per-round ratios
    # (graph rows against dense[graph]: graph vs graph, eager vs eager).
    for d in devices:
        timed = [n for n in models if n not in graphed or d.startswith("cuda")]  # no graph rows on CPU
        per_round = {n: [] for n in timed}
        for k in range(args.rounds):
            for n in timed:
                set_knobs(models[n], n)
                per_round[n].append(speed(models[n], d, n in fused, n in graphed, n))
            print(f"{d} round {k + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in per_round.items()), flush=True)
        for n in timed:
            ref = per_round["dense[graph]" if n in graphed else "dense"]
            rows[n][f"{d}_tokens_per_s"] = statistics.median(per_round[n])
            rows[n][f"{d}_vs_dense"] = statistics.median(a / b for a, b in zip(per_round[n], ref))
            rows[n][f"{d}_rounds"] = per_round[n]
            mem = memory[(n, d)]  # the last round's (each timing starts without caches and builds its own)
            rows[n][f"{d}_resident_bytes"], rows[n][f"{d}_cache_bytes"] = mem["total"], mem["caches"]
        if args.breakdown:  # after the whole-model rounds, so it never disturbs them
            for n, model in models.items():
                if n in fused or n in graphed:  # the breakdown is eager: a graph row's is its eager row's
                    continue
                set_knobs(model, n)
                # the plain rows' path: the compact maps (the "auto" default would rebuild on CUDA at 35 steps)
                rows[n][f"{d}_ms_parts"] = lm_forward_breakdown(model, V, d, batch_size=batch(d), seq_len=args.seq_len,
                                                                repeats=args.repeats, fused=False)
                model.cpu()
                print(f"{d} {n}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in rows[n][f"{d}_ms_parts"].items()), flush=True)
    rows = list(rows.values())
    base = {d: rows[0][f"{d}_tokens_per_s"] for d in devices}
    out = {"target": args.target, "model": {"vocab": V, "hidden": args.hidden, "layers": args.layers, "tied": False, "weights": "random"},
           "setting": setting, "threads": torch.get_num_threads(), "devices": devices,
           "gpu": torch.cuda.get_device_name(0) if "cuda" in devices else None, "versions": versions(),
           "dense": base, "rows": rows}
    write_json_atomic(args.out, out)
    print("\n" + write_table(args.out) + f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
