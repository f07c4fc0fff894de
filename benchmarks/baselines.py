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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PUBLISHED = {("ptb", "small"): 115.91, ("ptb", "medium"): 82.07, ("ptb", "large"): 78.29}


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

    def timed(model, train: bool, batch_size: int):
        x = torch.randint(0, vocab, (bptt, batch_size), device=dev)
        y = torch.randint(0, vocab, (bptt, batch_size), device=dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train(train)
        times = []
        for i in range(steps + 5):
            torch.cuda.synchronize() if dev.type == "cuda" else None
            t0 = time.perf_counter()
            with torch.set_grad_enabled(train):
                logits, _ = model(x)
                if train:
                    loss = lm_loss(logits, y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            torch.cuda.synchronize() if dev.type == "cuda" else None
            if i >= 5:
                times.append(time.perf_counter() - t0)
        times.sort()
        return bptt * batch_size / times[len(times) // 2]

    ours = LSTMLanguageModel(vocab, hidden, 2).to(dev)
    ref = TorchLSTMLM().to(dev)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", default=["ptb:small", "ptb:medium", "ptb:large", "wikitext-2:medium"],
                    help="corpus:preset[:precision] entries")
    ap.add_argument("--models", default="runs/baselines", help="where model directories go")
    ap.add_argument("--results", default="benchmarks/results/baselines.json")
    ap.add_argument("--logs", default=None, help="folder for per-run logs (default: next to the models)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--time-limit", type=float, default=540, help="seconds; then runs are checkpointed and stopped")
    ap.add_argument("--speed", action="store_true", help="also time nn.LSTM vs fused vs pluggable loop")
    args = ap.parse_args()

    t0 = time.monotonic()
    models, logs = Path(args.models), Path(args.logs or args.models)
    models.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    results = json.loads(Path(args.results).read_text()) if Path(args.results).exists() else {"runs": {}}
    procs = {}
    for spec in args.runs:
        corpus, preset, *rest = spec.split(":")
        precision = rest[0] if rest else "auto"
        name = f"{corpus}-{preset}" + (f"-{precision}" if precision != "auto" else "")
        out_dir = models / name
        if (out_dir / "manifest.json").exists():
            print(f"{name}: finished earlier, not retrained")
            continue
        cmd = [sys.executable, "-m", "lmshrink", "train", "--corpus", corpus, "--preset", preset, "--data", args.data,
               "--out", str(out_dir), "--device", args.device, "--precision", precision, "--json", "--no-progress"]
        log = open(logs / f"{name}.log", "a")
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True), (corpus, preset, precision), cmd)
        print(f"started {name}: {' '.join(cmd)}", flush=True)

    if args.speed:
        results["lstm_path_speed"] = lstm_path_speed(args.device)
        print(json.dumps(results["lstm_path_speed"], indent=1), flush=True)

    while any(p.poll() is None for p, *_ in procs.values()):
        if time.monotonic() - t0 > args.time_limit:
            for name, (p, *_) in procs.items():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)  # train_lm checkpoints on Ctrl-C
                    print(f"{name}: time limit reached, checkpointing (rerun to resume)", flush=True)
            for p, *_ in procs.values():
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            break
        time.sleep(5)

    for name, (p, (corpus, preset, precision), cmd) in procs.items():
        stdout = p.stdout.read() if p.stdout else ""
        if p.returncode == 0 and stdout.strip():
            m = json.loads(stdout)
            manifest = json.loads((models / name / "manifest.json").read_text())
            results["runs"][name] = {
                "corpus": corpus, "preset": preset, "precision": precision, "test_ppl": m["test_ppl"],
                "valid_ppl": m["valid_ppl"], "published_test_ppl": PUBLISHED.get((corpus, preset)),
                "epochs": m["epochs"], "wall_s": m["wall_s"], "train_tokens_per_s": m["train_tokens_per_s"],
                "tokens_per_s": m["tokens_per_s"], "speed": m["speed"], "params": m["params"], "bits": m["bits"],
                "bytes_on_disk": m["bytes_on_disk"], "history": manifest.get("history"),
                "versions": manifest.get("versions"), "data_checksums": manifest.get("data_checksums"),
                "command": " ".join(cmd[1:]),
            }
        else:
            print(f"{name}: not finished (exit {p.returncode}); rerun to resume", flush=True)
    try:
        import torch

        results["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover
        pass
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.results).with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, args.results)

    print(f"\n{'run':28s} {'test ppl':>9s} {'published':>9s} {'epochs':>6s} {'wall s':>7s} {'train tok/s':>11s} {'MB':>7s}")
    for name, r in sorted(results["runs"].items()):
        pub = f"{r['published_test_ppl']:.2f}" if r["published_test_ppl"] else "-"
        print(f"{name:28s} {r['test_ppl']:9.2f} {pub:>9s} {r['epochs']:6d} {r['wall_s']:7.0f} "
              f"{r['train_tokens_per_s']:11,.0f} {r['bytes_on_disk'] / 1e6:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
