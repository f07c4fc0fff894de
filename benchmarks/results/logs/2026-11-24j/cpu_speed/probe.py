"""Stop 23: CPU batch-1 latency of the 25x LSTM structures at the PTB-medium shape (random weights, 1 thread).

Doped KP in its low-rank corner (a_shape=[2600,1], kp_share 0.5: rank 10 + 1.3% sparse) beside LMF (rank 20),
balanced doped KP, pruning and dense; the whole LM (V 10000, H 650, 2 layers), 3 interleaved rounds, median.
Run: PYTHONPATH=. python benchmarks/results/logs/2026-11-24j/cpu_speed/probe.py
"""

import copy
import json
import statistics

import torch

from lmshrink.compress import compress, make_config
from lmshrink.measure import lm_tokens_per_second
from lmshrink.models.lstm_lm import LSTMLanguageModel

torch.manual_seed(0)
torch.set_num_threads(1)
dense = LSTMLanguageModel(10000, hidden=650, layers=2).eval()
plans = {
    "dense": None,
    "lmf": make_config("svd", ratio=25),
    "prune": make_config("prune", ratio=25),
    "doped_kp": make_config("doped_kronecker", ratio=25, anneal=False),
    "doped_kp:a_shape=[2600,1];kp_share=0.5": make_config("doped_kronecker", ratio=25, anneal=False, a_shape=[2600, 1],
                                                          kp_share=0.5),
}
models = {}
for name, cfg in plans.items():
    m = copy.deepcopy(dense)
    if cfg is not None:
        compress(m, {"rnn.*": cfg})
    models[name] = m.eval()
ms = {name: [] for name in models}
for rnd in range(3):
    for name, m in models.items():
        with torch.no_grad():
            ms[name].append(lm_tokens_per_second(m, 10000, "cpu", batch_size=1, seq_len=35, repeats=10)["ms_per_token"])
    print(f"round {rnd + 1}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in ms.items()), flush=True)
base = statistics.median(ms["dense"])
out = {n: {"ms_per_token": statistics.median(v), "tokens_per_s_vs_dense": base / statistics.median(v)} for n, v in ms.items()}
print("| structure (25x) | CPU ms/token, b=1, 1 thread | tokens/s vs dense |\n|---|---|---|")
for n, r in out.items():
    print(f"| {n} | {r['ms_per_token']:.3f} | {r['tokens_per_s_vs_dense']:.2f} |")
print(json.dumps(out))
