"""Stop-15 probe (call 4): a pruned (CSR) embedding's GPU lookup, gather (row-wise, host sync) against rebuild
(scatter the whole weight, F.embedding), at the PTB-large shape (V 10000, D 1500, ids 64 x 35), density as for 6.6x.
Prints ms per lookup (CUDA events, median of 50) for each, and checks both give the same rows."""
import statistics

import torch

import lmshrink.methods  # noqa: F401
from lmshrink.compress import Plan, compress, make_config
from lmshrink.models import LSTMLanguageModel

torch.manual_seed(0)
m = LSTMLanguageModel(10000, hidden=1500, layers=1, init_scale=0.04)
compress(m, Plan({"encoder": make_config("prune", ratio=6.6)}))
emb = m.encoder.cuda()
ids = torch.randint(0, 10000, (35, 64), device="cuda")
out = {}
with torch.no_grad():
    for mode in ("gather", "rebuild", "gather", "rebuild"):
        emb.cuda_lookup = mode
        ref = emb(ids)
        times = []
        for _ in range(50):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            emb(ids)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        out.setdefault(mode, []).append(statistics.median(times))
        out[mode + "_rows"] = ref
print({k: [round(x, 3) for x in v] for k, v in out.items() if not k.endswith("_rows")}, "ms per lookup")
print("same rows:", bool(torch.equal(out["gather_rows"], out["rebuild_rows"])))

# whole PTB-large-shaped model (2 layers), embedding and softmax pruned to 6.6x, TF32, batch 64: dense vs pruned with
# each lookup, 3 interleaved rounds (lm_tokens_per_second, as speed.py times)
import copy

from lmshrink.measure import lm_tokens_per_second

torch.set_float32_matmul_precision("high")
dense = LSTMLanguageModel(10000, hidden=1500, layers=2, init_scale=0.04).eval()
pruned = copy.deepcopy(dense)
compress(pruned, Plan({n: make_config("prune", ratio=6.6) for n in ("encoder", "decoder")}))
rounds = {"dense": [], "gather": [], "rebuild": []}
for _ in range(3):
    for name in rounds:
        model = dense if name == "dense" else pruned
        if name != "dense":
            model.encoder.cuda_lookup = name
        rounds[name].append(lm_tokens_per_second(model, 10000, "cuda", batch_size=64, repeats=10, warmup=3)["tokens_per_s"])
        model.cpu()
for name, v in rounds.items():
    print(f"{name}: {statistics.median(v):,.0f} tok/s, "
          f"{statistics.median(a / b for a, b in zip(v, rounds['dense'])):.2f}x dense (rounds {[round(x) for x in v]})")
