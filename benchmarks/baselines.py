"""Dense baselines of Zaremba et al. (2014) on PTB (small, medium, large) and WikiText-2 (medium).

Trains every requested (corpus, preset) as its own process, all at once on one GPU (each uses a
fraction of an H100 at batch 20), with checkpoints: a run stopped by --time-limit (SIGINT) saves its
state and the same command resumes it. Also measures the pluggable LSTM path against the fused
cuDNN path and against ``torch.nn.LSTM`` (tokens/s, training and inference).

    python benchmarks/baselines.py --data DIR --runs ptb:small ptb:medium ptb:large wikitext-2:medium \
        --models runs/baselines --results benchmarks/results/baselines.json --time-limit 540

Published PTB test perplexities (TensorFlow PTB tutorial, Zaremba configs): small 115.91,
medium 82.07, large 78.29.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lmshrink without installing (GPU machines)

PUBLISHED = {("ptb", "small"): 115.91, ("ptb", "medium"): 82.07, ("ptb", "large"): 78.29}

# The peer of issue 2, measured on one H100 here: pytorch/examples word_language_model, PTB 2x650 LSTM, dropout 0.5,
# 39 epochs (its own recipe: lr 20 divided by 4 on a validation plateau, clip 0.25, untied), test ppl 81.18 in 5 min 55 s.
PEER = {"name": "pytorch/examples word_language_model (2x650, dropout 0.5, 39 epochs, untied)", "corpus": "ptb",
        "preset": "medium", "test_ppl": 81.18, "wall_s": 355.0}

PRECISIONS = ("auto", "fp32", "bf16")
RUN_OPTIONS = ("tied", "graph")


def parse_run(spec: str, precision: str) -> dict:
    """``corpus:preset[:option...]``; options: a precision (auto, fp32, bf16), ``tied`` (--tie-weights),
    ``graph`` (--cuda-graph). The run's name is ``corpus-preset`` plus its options, so variants never share a
    model directory."""
    parts = spec.split(":")
    corpus, preset, opts = parts[0], parts[1] if len(parts) > 1 else "", parts[2:]
    bad = [o for o in opts if o not in PRECISIONS + RUN_OPTIONS]
    if not corpus or not preset or bad or len([o for o in opts if o in PRECISIONS]) > 1 or len(set(opts)) != len(opts):
        raise SystemExit(f"bad run {spec!r}: corpus:preset[:option...], options: one of {', '.join(PRECISIONS)}, "
                         f"{', '.join(RUN_OPTIONS)}")
    own = next((o for o in opts if o in PRECISIONS), None)
    return {"corpus": corpus, "preset": preset, "precision": own or precision, "tied": "tied" in opts,
            "graph": "graph" in opts, "name": "-".join([corpus, preset, *opts])}


def lstm_path_speed(device: str, hidden: int = 650, vocab: int = 10000, batch: int = 20, bptt: int = 35,
                    steps: int = 30) -> dict:
    """tokens/s of training steps and of inference for: nn.LSTM, our fused path, our pluggable loop."""
    import torch

    from lmshrink.models.lstm_lm import LSTMLanguageModel, lm_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    out = {}

    class TorchLSTMLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Embedding(vocab, hidden)
            self.rnn = torch.nn.LSTM(hidden, hidden, 2)
            self.decoder = torch.nn.Linear(hidden, vocab)

        def forward(self, x, state=None):
            y, s = self.rnn(self.encoder(x), state)
            return self.decoder(y), s

    def tokens_per_s(step, batch_size: int) -> float:
        """Median tokens/s of ``step()`` over ``steps`` calls after 5 untimed ones (warm-up, graph capture)."""
        times = []
        for i in range(steps + 5):
            torch.cuda.synchronize() if dev.type == "cuda" else None
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize() if dev.type == "cuda" else None
            if i >= 5:
                times.append(time.perf_counter() - t0)
        times.sort()
        return bptt * batch_size / times[len(times) // 2]

    def timed(model, train: bool, batch_size: int):
        x = torch.randint(0, vocab, (bptt, batch_size), device=dev)
        y = torch.randint(0, vocab, (bptt, batch_size), device=dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train(train)

        def step():
            with torch.set_grad_enabled(train):
                logits, _ = model(x)
                if train:
                    loss = lm_loss(logits, y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

        return tokens_per_s(step, batch_size)

    def timed_graph(model, batch_size: int):
        """Training steps of our fused path captured once as a CUDA graph (lmshrink train --cuda-graph)."""
        from lmshrink.train.graphed import StaticLMStep

        x = torch.randint(0, vocab, (bptt, batch_size), device=dev)
        y = torch.randint(0, vocab, (bptt, batch_size), device=dev)
        model.train()
        step = StaticLMStep(model, list(model.parameters()), bptt, batch_size, 5.0, dev, capture=True)
        step.set_lr(0.1)
        return tokens_per_s(lambda: step(x, y), batch_size)

    ours = LSTMLanguageModel(vocab, hidden, 2).to(dev)
    ref = TorchLSTMLM().to(dev)
    if dev.type == "cuda":
        out[f"fused+graph/train_b{batch}"] = timed_graph(LSTMLanguageModel(vocab, hidden, 2).to(dev), batch)
    for train, bs in ((True, batch), (False, 64)):
        key = "train_b%d" % bs if train else "infer_b%d" % bs
        out[f"nn.LSTM/{key}"] = timed(ref, train, bs)
        for l in ours.rnn.layers:
            l.force_loop = False
        out[f"fused/{key}"] = timed(ours, train, bs)
        for l in ours.rnn.layers:
            l.force_loop = True
        out[f"loop/{key}"] = timed(ours, train, bs)
    out["config"] = {"hidden": hidden, "layers": 2, "vocab": vocab, "bptt": bptt, "device": str(dev),
                     "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None}
    return out


def _beside(name: str, run: dict) -> str:
    if "concurrent_runs" not in run:
        return "?"
    parts = [o for o in run["concurrent_runs"] if o != name]
    if "other_gpu_processes" in run:  # recorded since stop 15: processes of other scripts on the same GPU
        others = run["other_gpu_processes"]
        parts.append("other GPU processes: unknown" if others is None else
                     f"up to {others} other GPU process(es)" if others else "")
    return ", ".join(p for p in parts if p) or "nothing"


def markdown(results: dict) -> str:
    """The runs as a Markdown table (written next to the JSON)."""
    lines = [f"# Dense LSTM LM baselines (Zaremba et al. 2014 recipes), {results.get('device', '?')}", "",
             "Generated by `benchmarks/baselines.py` (figures from the JSON beside this file). Published: TensorFlow PTB "
             "tutorial test perplexities of Zaremba's configs. Wall time includes evaluation and checkpoints; "
             "'beside' names the runs that shared the GPU with it in any of its calls, and since stop 15 how many "
             "other processes nvidia-smi saw on the GPU while it trained (then tokens/s are lower than "
             "alone; '?': not recorded).", "",
             "| run | test ppl | published | Δ | valid ppl | epochs | wall min | train tok/s | params | bytes on disk | "
             "CUDA graph | beside |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(results["runs"].items()):
        pub = r.get("published_test_ppl")
        delta = f"{r['test_ppl'] - pub:+.2f}" if pub else "-"
        lines.append(f"| {name} | {r['test_ppl']:.2f} | {pub if pub else '-'} | {delta} | {r['valid_ppl']:.2f} | {r['epochs']} | "
                     f"{r['wall_s'] / 60:.1f} | {r['train_tokens_per_s']:,.0f} | {r['params']:,} | {r['bytes_on_disk']:,} | "
                     f"{'yes' if r.get('cuda_graph') else 'no'} | {_beside(name, r)} |")
    repeats = results.get("repeats") or []
    if repeats:  # the same recipe and seed again: the spread is the run-to-run noise of GPU training, which only
        # CUDA-graph fp32 runs mostly avoid
        head = ("Other runs of the same recipes and seed (their spread is the run-to-run noise of GPU training; "
                "CUDA-graph fp32 runs of one recipe mostly repeat to the last digit):")
        lines += ["", head, "",
                  "| run | when | test ppl | published | Δ | epochs | wall min | train tok/s |", "|---|---|---|---|---|---|---|---|"]
        for r in repeats:
            pub = r.get("published_test_ppl")
            lines.append(f"| {r['name']} | {r.get('when', '-')} | {r['test_ppl']:.2f} | {pub or '-'} | "
                         f"{format(r['test_ppl'] - pub, '+.2f') if pub else '-'} | {r['epochs']} | {r['wall_s'] / 60:.1f} | "
                         f"{r['train_tokens_per_s']:,.0f} |")
    if results.get("note"):
        lines += ["", results["note"]]
    race = sorted((n, r) for n, r in results["runs"].items() if (r["corpus"], r["preset"]) == (PEER["corpus"], PEER["preset"]))
    if race:  # issue 2: match the peer's perplexity in less time
        lines += ["", f"Against the peer, {PEER['name']}: test ppl {PEER['test_ppl']} in {PEER['wall_s'] / 60:.1f} min "
                  "on one H100 (its own recipe; our runs use Zaremba's):", "",
                  "| run | tied | CUDA graph | trained beside | test ppl | vs peer | wall min | vs peer | params |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n, r in race:
            lines.append(f"| {n} | {'yes' if r.get('tied') else 'no'} | {'yes' if r.get('cuda_graph') else 'no'} | "
                         f"{_beside(n, r)} | "
                         f"{r['test_ppl']:.2f} | {r['test_ppl'] - PEER['test_ppl']:+.2f} | {r['wall_s'] / 60:.1f} | "
                         f"{r['wall_s'] / PEER['wall_s']:.2f}x | {r['params']:,} |")
    speed = results.get("lstm_path_speed")
    if speed:
        lines += ["", f"LSTM paths, tokens/s ({speed['config'].get('gpu') or speed['config']['device']}, hidden "
                  f"{speed['config']['hidden']}, 2 layers, 35 steps; training at batch 20, inference at batch 64):", "",
                  "| path | train | vs nn.LSTM | inference | vs nn.LSTM |", "|---|---|---|---|---|"]
        for path in ("nn.LSTM", "fused", "fused+graph", "loop"):
            tr, inf = speed.get(f"{path}/train_b20"), speed.get(f"{path}/infer_b64")
            if tr is None:
                continue  # fused+graph: measured since 2026-11-23 only
            lines.append(f"| {path} | {tr:,.0f} | {tr / speed['nn.LSTM/train_b20']:.2f} | "
                         + (f"{inf:,.0f} | {inf / speed['nn.LSTM/infer_b64']:.2f} |" if inf else "- | - |"))
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="*", default=["ptb:small", "ptb:medium", "ptb:large", "wikitext-2:medium"],
                    help="corpus:preset[:option...] entries; options: auto|fp32|bf16 (precision), tied (--tie-weights), "
                         "graph (--cuda-graph)")
    ap.add_argument("--models", default="runs/baselines", help="where model directories go")
    ap.add_argument("--results", default="benchmarks/results/baselines.json")
    ap.add_argument("--logs", default=None, help="folder for per-run logs (default: next to the models)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--time-limit", type=float, default=540, help="seconds; then runs are checkpointed and stopped")
    ap.add_argument("--max-steps", type=int, default=None, help="cut every run to N steps (smoke tests)")
    ap.add_argument("--precision", default="auto", help="auto (bf16 autocast on GPU), fp32 (TF32 matmuls on GPU) or bf16; "
                                                        "a run's own corpus:preset:precision wins")
    ap.add_argument("--cuda-graph", action="store_true", help="train with the step captured as a CUDA graph (lmshrink train --cuda-graph)")
    ap.add_argument("--speed", action="store_true", help="also time nn.LSTM vs fused vs pluggable loop")
    ap.add_argument("--no-verify", action="store_true", help="lmshrink train --no-verify: corpora that are not the "
                                                              "canonical files (tests)")
    args = ap.parse_args()

    from lmshrink.io import write_atomic, write_json_atomic
    from lmshrink.measure import other_gpu_processes

    t0 = time.monotonic()
    models, logs = Path(args.models), Path(args.logs or args.models)
    models.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    results = json.loads(Path(args.results).read_text()) if Path(args.results).exists() else {"runs": {}}
    procs = {}
    runs = [parse_run(spec, args.precision) for spec in args.runs]  # all checked before anything starts
    for run in runs:
        corpus, preset, precision, name = run["corpus"], run["preset"], run["precision"], run["name"]
        out_dir = models / name
        if (out_dir / "manifest.json").exists():
            print(f"{name}: finished earlier, not retrained")
            continue
        cmd = [sys.executable, "-m", "lmshrink", "train", "--corpus", corpus, "--preset", preset, "--data", args.data,
               "--out", str(out_dir), "--device", args.device, "--precision", precision, "--json", "--no-progress"]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        if args.cuda_graph or run["graph"]:
            cmd += ["--cuda-graph"]
        if run["tied"]:
            cmd += ["--tie-weights"]
        if args.no_verify:
            cmd += ["--no-verify"]
        log = open(logs / f"{name}.log", "a")
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True), run, cmd)
        print(f"started {name}: {' '.join(cmd)}", flush=True)
    # a run resumed over several calls shares the GPU with different runs in each: remember all of them, so the
    # table can say what a wall time was measured beside (written now: a call can end before any run does)
    beside = results.setdefault("beside", {})
    for name in procs:
        beside[name] = sorted(set(beside.get(name, [])) | set(procs))
    if procs:
        write_json_atomic(args.results, results)

    if args.speed:
        results["lstm_path_speed"] = lstm_path_speed(args.device)
        print(json.dumps(results["lstm_path_speed"], indent=1), flush=True)

    def stop_all(why: str) -> None:
        for name, (p, *_) in procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # train_lm checkpoints on Ctrl-C
                print(f"{name}: {why}, checkpointing (rerun to resume)", flush=True)
        for p, *_ in procs.values():
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()

    # other scripts on the same GPU (a vocab.py beside a baseline) slow it as much as our own runs do: count them
    others = results.setdefault("others_on_gpu", {})
    last_look = -1e9
    try:
        while any(p.poll() is None for p, *_ in procs.values()):
            if time.monotonic() - t0 > args.time_limit:
                stop_all("time limit reached")
                break
            if procs and str(args.device).startswith("cuda") and time.monotonic() - last_look > 30:
                last_look = time.monotonic()
                n = other_gpu_processes({p.pid for p, *_ in procs.values()})
                for name in procs:
                    seen = others.get(name, 0)
                    others[name] = None if n is None or seen is None else max(seen, n)
            time.sleep(2)
    except KeyboardInterrupt:  # our own Ctrl-C: stop the runs cleanly and still record what finished
        stop_all("interrupted")

    failed = []
    for name, (p, run, cmd) in procs.items():
        stdout = p.stdout.read() if p.stdout else ""
        if p.returncode == 0 and stdout.strip():
            m = json.loads(stdout)
            manifest = json.loads((models / name / "manifest.json").read_text())
            corpus, preset = run["corpus"], run["preset"]
            results["runs"][name] = {
                "corpus": corpus, "preset": preset, "precision": run["precision"], "tied": run["tied"],
                "cuda_graph": bool(args.cuda_graph or run["graph"]), "when": time.strftime("%Y-%m-%d"),
                "concurrent_runs": beside.pop(name, [name]), "test_ppl": m["test_ppl"],
                **({"other_gpu_processes": others.pop(name)} if name in others else {}),
                "valid_ppl": m["valid_ppl"], "published_test_ppl": PUBLISHED.get((corpus, preset)),
                "epochs": m["epochs"], "wall_s": m["wall_s"], "train_tokens_per_s": m["train_tokens_per_s"],
                "tokens_per_s": m["tokens_per_s"], "speed": m["speed"], "params": m["params"], "bits": m["bits"],
                "bytes_on_disk": m["bytes_on_disk"], "history": manifest.get("history"),
                "versions": manifest.get("versions"), "data_checksums": manifest.get("data_checksums"),
                "command": " ".join(cmd[1:]),
            }
        elif p.returncode in (None, 130, -signal.SIGINT, -signal.SIGKILL):  # stopped by our time limit
            print(f"{name}: not finished (exit {p.returncode}); rerun to resume", flush=True)
        else:
            failed.append(name)
            print(f"{name}: FAILED (exit {p.returncode}); see {logs / (name + '.log')}", flush=True)
    try:
        import torch

        results["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover
        pass
    write_json_atomic(args.results, results)
    table = markdown(results)
    write_atomic(Path(args.results).with_suffix(".md"), table)
    print("\n" + table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
