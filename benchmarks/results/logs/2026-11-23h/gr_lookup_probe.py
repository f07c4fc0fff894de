"""Stop-15 probe (call 5): GroupReduce's embedding lookup on the GPU, scatter + GEMM against embedding_bag against
rebuilding the (V, D) table from its blocks and gathering rows, at the PTB-large shape (V 10000, D 1500, 10 blocks,
6.6x, 64 x 35 ids, TF32). Lookup ms (CUDA events, median of 50, twice), then the whole model's tokens/s replayed
from a CUDA graph, dense vs each lookup, 3 interleaved rounds."""
import copy
import statistics

import torch

import lmshrink.methods  # noqa: F401
from lmshrink.compress import Plan, compress, make_config
from lmshrink.layers.block_low_rank import set_lookup
from lmshrink.measure import lm_tokens_per_second
from lmshrink.models import LSTMLanguageModel

torch.set_float32_matmul_precision("high")
torch.manual_seed(0)
V = 10000
counts = torch.round(V * 5.0 / torch.arange(1, V + 1)) + 1  # Zipf-like, as speed.py
dense = LSTMLanguageModel(V, hidden=1500, layers=2, init_scale=0.04).eval()
gr = copy.deepcopy(dense)
cfg = make_config("groupreduce", ratio=6.6, num_blocks=10, rank_rule="sqrt_frequency", refine_iters=2)
compress(gr, Plan({n: cfg for n in ("encoder", "decoder")}), {"word_counts": counts})
emb = copy.deepcopy(gr.encoder).cuda()
ids = torch.randint(0, V, (35, 64), device="cuda")
ms, rows = {}, {}
with torch.no_grad():
    for mode in ("scatter", "bag", "rebuild") * 2:
        emb.lookup = mode
        rows[mode] = emb(ids)
        t = []
        for _ in range(50):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            emb(ids)
            b.record()
            torch.cuda.synchronize()
            t.append(a.elapsed_time(b))
        ms.setdefault(mode, []).append(round(statistics.median(t), 3))
print("lookup ms per 64x35 ids:", ms)
print("max |rebuild - scatter|:", float((rows["rebuild"] - rows["scatter"]).abs().max()))
res = {"dense": [], "scatter": [], "rebuild": []}
for _ in range(3):
    for name in res:
        model = dense if name == "dense" else gr
        if name != "dense":
            set_lookup(model, name)
        res[name].append(lm_tokens_per_second(model, V, "cuda", batch_size=64, repeats=10, warmup=3,
                                              cuda_graph=True)["tokens_per_s"])
        model.cpu()
for name, v in res.items():
    print(f"{name}[graph]: {statistics.median(v):,.0f} tok/s, {statistics.median(a / b for a, b in zip(v, res['dense'])):.2f}x "
          f"dense (rounds {[round(x) for x in v]})")
