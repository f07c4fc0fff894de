"""Every GPU benchmark in one resumable command, sized for lent-GPU calls of at most 10 minutes.

One H100 is far from full with one batch-20 LSTM (a training step is ~7 ms of kernel latency, not
arithmetic), so the stages run side by side as separate processes, each resuming from its own
checkpoints and results JSON:

0. First, on a quiet GPU: the LSTM path speed (nn.LSTM vs our fused path vs the pluggable loop).
1. ``baselines.py``: PTB small, medium, large and WikiText-2 medium (Zaremba recipes), all at once.
2. As soon as a baseline exists, the benchmarks that stand on it start:
   - ``vocab.py`` on PTB small, PTB large and WikiText-2 medium (embedding + softmax, issue 3), 3 runs at a time;
   - ``recurrent.py`` on PTB medium at 25x, then 10x and 50x, and on PTB small at 25x (LSTM layers, issue 4).
3. ``gpu_tests``: ``pytest -m gpu`` (cuDNN vs loop, CUDA-graph replay, CUDA Hamming kernels), log and JUnit XML kept.
4. ``binary.py --stages search`` on the GPU (Hamming vs float cosine search, issue 6), into its own JSON: merge its
   ``search_cuda`` entry into ``binary.json`` and rerun ``binary.py --report-only``.

Every stage stops cleanly before ``--time-limit`` (checkpoints saved; a stage that overruns gets SIGINT
``--grace`` seconds before the end); rerun the same command until it prints ``all done``. Finished stages
are remembered in ``WORK/gpu_all_state.json``.

Measured on one H100: PTB small alone ~58k training tokens/s (13 epochs: 3.5 min); side by side (2026-11-23)
medium 8.3 min and large 22.6 min (55 epochs, three calls), then the six 25x recurrent runs of PTB medium in
about 5 min. With --cuda-graph (2026-11-23): PTB medium tied alone 3.4 min, WikiText-2 medium alone 10.2 min;
side by side (large + medium + WikiText-2, each process replaying its own graph) the GPU is time-sliced and each
slows 3x: large 19.2 min, medium 10.4 min. Worse with more beside it (2026-11-23d): PTB large, medium and small
baselines plus six PTB small vocabulary runs and two LSTM runs shared one H100, and in 28 min the large baseline
reached epoch 47 of 55 (alone: 7.6 min); the lent machine went back after 30 minutes held and took the checkpoint
with it. On machines lent for 30 minutes, start only what finishes on that machine, big baselines alone first.
Stages run in parallel processes and their compression is CPU work: each stage gets ``OMP_NUM_THREADS`` =
cores / 6. Without that, nine processes of 16 OpenMP threads on 16 cores spent whole calls compressing without a
run starting (a CPU test of the same oversubscription: six processes of two threads on
two cores took 30-70 s per medium LSTM compression instead of 0.6-1.6 s). The work directory must survive
between calls.

    python benchmarks/gpu_all.py --data /path/to/data --time-limit 540
    # on a lent machine whose tracked tree is re-copied at every call: keep results under the ignored runs/;
    # the data travels as an ignored folder: cp -r ../shared/data/{ptb,wikitext-2,glove-6b-50d,wordsim} .data/
    python benchmarks/gpu_all.py --data .data --time-limit 540 --results runs/results --tar $OUT/results.tgz
    python benchmarks/gpu_all.py --data DIR --smoke --device cpu      # minutes on a CPU: every stage, tiny

On the lent machines a process started detached (``setsid nohup ... &``) outlives the call that started it, so
one call can start a whole plan and later calls only wait and collect, with no SIGINT-and-resume between calls
(stop 15, ``results/logs/2026-11-23h/driver.sh`` and ``collect.sh``); calls must still follow each other within
the machine's warm window. The same stop ran the PTB medium baseline beside two vocab.py sets again, and it took
16.4 min against 3.4 min alone, so the LSTM runs waiting on it did not finish: big baselines alone, first.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# logical baseline -> (corpus, preset); --smoke maps every one to the tiny preset
BASELINES = {"ptb-small": ("ptb", "small"), "ptb-medium": ("ptb", "medium"), "ptb-large": ("ptb", "large"),
             "wikitext-2-medium": ("wikitext-2", "medium")}


def stages(args) -> list[dict]:
    """Each stage: name, argv, ``needs`` (baseline model dirs that must exist) and ``after`` (stages that must
    have finished: recurrent stages of one preset share a results group, so they take turns)."""
    py, b = sys.executable, str(ROOT / "benchmarks")
    models = Path(args.work) / "baselines"
    spec = {k: (c, "tiny" if args.smoke else p) for k, (c, p) in BASELINES.items()}
    model_dir = {k: models / f"{c}-{p}" for k, (c, p) in spec.items()}
    wanted = list(BASELINES) if not args.baselines else args.baselines.split(",")
    unknown = sorted(set(wanted) - set(BASELINES))
    if unknown:
        raise SystemExit(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    runs = sorted({f"{spec[k][0]}:{spec[k][1]}" for k in wanted})
    res = Path(args.results)
    common = ["--data", args.data, "--device", args.device, "--precision", args.precision]
    if args.smoke:
        vocab_opts = ["--finetune-epochs", "1", "--rates", "5", "--gq-rates", "26", "--methods", "svd,groupreduce,groupreduce_q",
                      "--jobs", "2"]
        rec_opts = ["--epochs", "1", "--max-steps", "6", "--methods", "doped_kp,kp", "--jobs", "2", "--no-cpu-latency"]
    else:
        vocab_opts = ["--finetune-epochs", str(args.vocab_epochs), "--methods", "groupreduce,groupreduce_q,svd,quantize,prune",
                      "--jobs", str(args.vocab_jobs), *shlex.split(args.vocab_options)]
        rec_opts = ["--epochs", str(args.recurrent_epochs), "--jobs", "6"]
    out = [{"name": "baselines", "needs": [], "after": [], "produces": [model_dir[k] for k in wanted],
            "argv": [py, f"{b}/baselines.py", "--runs", *runs, "--models", str(models), *common,
                     "--results", str(res / "baselines.json"), *(["--cuda-graph"] if args.cuda_graph else []),
                     *(["--max-steps", "6"] if args.smoke else [])]}]
    for base, key in (("ptb-small", "vocab_ptb_small"), ("ptb-large", "vocab_ptb_large"),
                      ("wikitext-2-medium", "vocab_wikitext2_medium")):
        opts = vocab_opts
        if base != "ptb-small" and not args.smoke:  # big models: the paper's headline points only (GPU time)
            opts = [*vocab_opts, "--methods", args.big_vocab_methods, "--rates", args.big_vocab_rates,
                    "--gq-rates", args.big_vocab_gq_rates]
        out.append({"name": key, "needs": [model_dir[base]], "after": [],
                    "argv": [py, f"{b}/vocab.py", "--baseline", str(model_dir[base]), *common, *opts,
                             "--work", str(Path(args.work) / key), "--results", str(res / f"{key}.json")]})
    for base, ratios, tag, after in (("ptb-medium", "25", "recurrent_medium_25", []),
                                     ("ptb-small", "25", "recurrent_small_25", []),
                                     ("ptb-medium", "10,50", "recurrent_medium_10_50", ["recurrent_medium_25"])):
        preset = spec[base][1]
        if args.smoke:  # 25x of a 32-unit LSTM leaves nothing once the dense biases are paid for
            ratios = {"25": "3", "10,50": "2,4"}[ratios]
        if args.smoke and tag == "recurrent_small_25":
            after = ["recurrent_medium_25"]  # the same tiny group: take turns
        methods = ["--methods", args.sweep_methods] if tag == "recurrent_medium_10_50" and not args.smoke else []
        out.append({"name": tag, "needs": [model_dir[base]], "after": after,
                    "argv": [py, f"{b}/recurrent.py", "--baseline", str(model_dir[base]), "--preset", preset,
                             "--corpus", "ptb", *common, "--ratios", ratios, *rec_opts, *methods,
                             "--out", str(res / "recurrent.json"), "--work", str(Path(args.work) / f"recurrent-{tag}")]})
    if not args.smoke:  # the GPU test suite (tests/test_gpu.py, -m gpu) as a record: GPU-only code paths
        # (cuDNN vs loop, CUDA-graph replay, CUDA Hamming kernels) are checked nowhere else
        out.append({"name": "gpu_tests", "needs": [], "after": [], "timed": False,
                    "argv": [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests"),
                             "--junitxml", str(res / "gpu_tests.xml")]})
    if not args.smoke:  # issue 6: Hamming vs float cosine search on the GPU (needs DATA/glove-6b-50d and wordsim/)
        out.append({"name": "binary_search_cuda", "needs": [], "after": [], "timed": False,
                    "argv": [py, f"{b}/binary.py", "--data", args.data, "--device", args.device, "--stages", "search",
                             "--json", str(res / "binary_search_cuda.json"), "--md", str(res / "binary_search_cuda.md")]})
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp32",
                    help="training precision of every stage (fp32 = TF32 matmuls on GPU, as PyTorch's word_language_model)")
    ap.add_argument("--time-limit", type=float, default=540, help="seconds for this call, all stages included")
    ap.add_argument("--work", default=str(ROOT / "runs"))
    ap.add_argument("--vocab-epochs", type=int, default=10,
                    help="retraining epochs of each vocab.py run (default 10: PTB large met its targets at 10, not at 4)")
    ap.add_argument("--recurrent-epochs", type=int, default=20,
                    help="retraining epochs of each recurrent.py run (default 20: on PTB medium at 25x doped KP and "
                         "pruning went from +11.6%% to +8.7%% from 10 to 20 epochs; results/recurrent_recipes.md)")
    ap.add_argument("--vocab-jobs", type=int, default=3, help="vocab.py runs at a time on one baseline")
    ap.add_argument("--only", default=None, help="comma list of stage names to run (lstm_speed: the LSTM path probe, "
                                                 "run first on a quiet GPU)")
    ap.add_argument("--cuda-graph", action="store_true", help="baselines train with the step captured as a CUDA graph")
    ap.add_argument("--baselines", default=None,
                    help=f"comma list of baselines the baselines stage trains (default all: {', '.join(BASELINES)})")
    ap.add_argument("--big-vocab-methods", default="groupreduce,groupreduce_q,svd,prune",
                    help="vocab.py methods on PTB large and WikiText-2 medium")
    ap.add_argument("--big-vocab-rates", default="6.6", help="vocab.py --rates on PTB large and WikiText-2 medium")
    ap.add_argument("--big-vocab-gq-rates", default="26", help="vocab.py --gq-rates on PTB large and WikiText-2 medium")
    ap.add_argument("--vocab-options", default="--num-blocks 10 --rank-rule sqrt_frequency --finetune-lr 0.1,0.01",
                    help="more vocab.py options (default: the GroupReduce settings that met the targets on PTB large, and "
                         "both first retraining rates, each method judged at the one its validation prefers: PTB large "
                         "met the targets at 0.01, while on PTB small every method did better at 0.1; "
                         "groupreduce_sweep.py compares settings)")
    ap.add_argument("--sweep-methods", default="doped_kp,kp,prune,lmf",
                    help="recurrent.py methods of the 10x/50x stage (25x runs every method)")
    ap.add_argument("--smoke", action="store_true", help="tiny presets, a few steps: checks the plumbing")
    ap.add_argument("--results", default=None,
                    help="folder for results JSON/Markdown/PNG (default benchmarks/results; with --smoke WORK/results)")
    ap.add_argument("--grace", type=float, default=30.0,
                    help="seconds before --time-limit at which running stages get SIGINT (they checkpoint and stop)")
    ap.add_argument("--tar", default=None, help="pack the results folder and the logs into this .tgz at the end")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.results = args.results or str(Path(args.work) / "results" if args.smoke else RESULTS)

    t0 = time.monotonic()
    deadline = t0 + args.time_limit
    logs = Path(args.work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    todo = stages(args)
    if args.only:
        keep = set(args.only.split(","))
        todo = [s for s in todo if s["name"] in keep]
    state = Path(args.work) / "gpu_all_state.json"
    finished = set(json.loads(state.read_text())) if state.exists() else set()
    running: dict[str, subprocess.Popen] = {}
    waiting = [s for s in todo if s["name"] not in finished]
    order = [s["name"] for s in todo]

    def ready(s) -> bool:
        return all((Path(n) / "manifest.json").is_file() for n in s["needs"]) and set(s["after"]) <= finished

    def launch(s):
        left = deadline - time.monotonic()
        # each script stops on its own a little before the call's end (vocab.py only between runs: more slack)
        limit = max(30.0, left - (120 if "vocab" in s["name"] else 60))
        argv_ = [*s["argv"], "--time-limit", f"{limit:.0f}"] if s.get("timed", True) else s["argv"]
        log = open(logs / f"{s['name']}.log", "a")
        log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv_)}\n")
        log.flush()
        # stages run side by side and their CPU work (SVDs of compression) must not oversubscribe the cores:
        # with 16 OpenMP threads per process, nine processes on 16 cores made compression ~40x slower
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // 6))
        running[s["name"]] = subprocess.Popen(argv_, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                              env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads})
        print(f"[{time.monotonic() - t0:6.0f}s] started {s['name']} (limit {limit:.0f} s)", flush=True)

    res = Path(args.results)
    speed_file = res / "lstm_path_speed.json"
    wants_speed = not args.only or "lstm_speed" in args.only.split(",")
    if not args.smoke and args.device == "cuda" and not speed_file.exists() and wants_speed:
        # first, on a quiet GPU: nn.LSTM vs our fused path vs the pluggable loop (about a minute)
        with open(logs / "lstm_speed.log", "a") as log:
            try:
                subprocess.run([sys.executable, str(ROOT / "benchmarks" / "baselines.py"), "--data", args.data, "--runs",
                                "--speed", "--results", str(speed_file)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               timeout=max(10.0, min(180.0, deadline - time.monotonic() - 60)))
            except subprocess.TimeoutExpired:
                print("LSTM path speed did not finish in time; it runs again next call", flush=True)

    stopping = False
    while waiting or running:
        if running and not stopping and time.monotonic() > deadline - args.grace:
            stopping = True  # a stage that overran its own limit: Ctrl-C (checkpoints), then kill
            for name, p in running.items():
                print(f"[{time.monotonic() - t0:6.0f}s] {name}: call ends soon, sending SIGINT", flush=True)
                p.send_signal(signal.SIGINT)
        if stopping and time.monotonic() > deadline - 8:
            for name, p in running.items():
                if p.poll() is None:
                    p.kill()
        for s in list(waiting):
            if stopping or time.monotonic() > deadline - 90:
                break
            if ready(s):
                waiting.remove(s)
                launch(s)
        for name, p in list(running.items()):
            rc = p.poll()
            if rc is None:
                continue
            del running[name]
            # 0: all done; recurrent.py: 1 = done but some run failed (recorded in its JSON), 3 = paused at its limit
            produced = next(s for s in todo if s["name"] == "baselines")["produces"] if name == "baselines" else []
            done = (all((Path(d) / "manifest.json").is_file() for d in produced) if name == "baselines"
                    else rc == 0 or (rc == 1 and ("recurrent" in name or name == "gpu_tests")))  # failures are recorded
            print(f"[{time.monotonic() - t0:6.0f}s] {name}: {'finished' if done else 'stopped'} (exit {rc})", flush=True)
            if done:
                finished.add(name)
        if not running and (not waiting or time.monotonic() > deadline - 90):
            break
        if not running and not any(ready(s) for s in waiting):
            break  # nothing can start: a needed baseline or an earlier stage did not finish
        time.sleep(2)

    state.write_text(json.dumps(sorted(finished)))
    left = [n for n in order if n not in finished]
    print("all done" if not left else f"not finished: {', '.join(left)}; run the same command again", flush=True)
    if args.tar:
        with tarfile.open(args.tar, "w:gz") as tar:
            if res.exists():
                tar.add(res, arcname="results")
            tar.add(logs, arcname="logs")
            work = Path(args.work)  # each worker's own log: baseline trainings, recurrent runs
            for f in sorted({*work.glob("*/**/log.txt"), *work.glob("baselines/*.log")}):
                tar.add(f, arcname="runlogs/" + "_".join(f.relative_to(work).parts))
    for f in sorted(res.glob("*.md")):
        print(f"\n--- {f.name}\n" + f.read_text()[-2500:])
    return 0 if not left else 3


if __name__ == "__main__":
    sys.exit(main())
