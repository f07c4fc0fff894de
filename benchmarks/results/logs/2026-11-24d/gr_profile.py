"""Stop-19 probe: where GroupReduce's GPU time goes at the PTB-large shape (V 10000, D 1500, 10 blocks, 6.6x,
64 x 35 tokens, TF32), kernel by kernel, and candidate paths timed as CUDA-graph replays (no launch overhead).

softmax candidates: dense addmm; GR per block (current); GR grouped G=2/3 (current knob); GR per block with Z in an
aligned buffer (each block's Z columns start on a multiple of 8); GR block-diagonal: one GEMM Z @ Ubd^T with Ubd
(V, sum r) holding each word's U row in its block's columns, in vocabulary order (no permutation, bias in addmm).
lookup candidates: dense gather; GR scatter (current); GR gather rows of the block-diagonal Ubd then one GEMM.
"""
import copy
import statistics
import sys

import torch

import lmshrink.methods  # noqa: F401
from lmshrink.compress import Plan, compress, make_config
from lmshrink.models import LSTMLanguageModel

torch.set_float32_matmul_precision("high")
torch.manual_seed(0)
dev = "cuda"
V, D, N = 10000, 1500, 64 * 35
counts = torch.round(V * 5.0 / torch.arange(1, V + 1)) + 1
dense = LSTMLanguageModel(V, hidden=D, layers=2, init_scale=0.04).eval()
models = {"dense": dense}
for rm in (1, 8):
    gr = copy.deepcopy(dense)
    cfg = make_config("groupreduce", ratio=6.6, num_blocks=10, rank_rule="sqrt_frequency", refine_iters=2, rank_multiple=rm)
    compress(gr, Plan({n: cfg for n in ("encoder", "decoder")}), {"word_counts": counts})
    models[f"gr_r{rm}"] = gr.eval()
    print(f"gr_r{rm} ranks {gr.decoder.ranks} r_total {gr.decoder.r_total}", flush=True)

ids = torch.randint(0, V, (35, 64), device=dev)
h = torch.randn(N, D, device=dev)


def graph_ms(fn, reps=50):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def eager_ms(fn, reps=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def blockdiag(layer):
    """(V, sum r) in vocabulary order: word w's U row in its block's columns."""
    ix = layer._index(dev)
    U, Vf = layer.factors()
    Ubd = torch.zeros(V, layer.r_total, device=dev)
    for t, (u, v) in enumerate(layer.block_factors()):
        s, e = layer._starts[t], layer._starts[t + 1]
        words = ix["order"][s:e]  # block-order position -> word
        Ubd[words, layer._r_off[t]:layer._r_off[t + 1]] = u.to(dev)
    return Ubd


def aligned_Z(layer):
    """V with each block's rows starting at a multiple of 8 (zero rows between): (sum up8(r), D), offsets."""
    offs, tot = [], 0
    for r in layer.ranks:
        offs.append(tot)
        tot += -(-r // 8) * 8
    _, Vf = layer.factors()
    Vp = torch.zeros(tot, D, device=dev)
    for t, r in enumerate(layer.ranks):
        Vp[offs[t]:offs[t] + r] = Vf[layer._r_off[t]:layer._r_off[t + 1]].to(dev)
    return Vp, offs


res = {}
with torch.no_grad():
    for name, m in models.items():
        m.to(dev)
        enc, dec = m.encoder, m.decoder
        res[f"{name} lookup"] = (eager_ms(lambda: enc(ids)), graph_ms(lambda: enc(ids)))
        res[f"{name} softmax"] = (eager_ms(lambda: dec(h)), graph_ms(lambda: dec(h)))
        if name == "dense":
            continue
        for G in (2, 3):
            dec.group_gemms = G
            res[f"{name} softmax grouped G={G}"] = (eager_ms(lambda: dec(h)), graph_ms(lambda: dec(h)))
        dec.group_gemms = None
        Ubd = blockdiag(dec)
        ref = dec(h)
        bd = lambda: torch.addmm(dec.bias, dec.V @ h.t() if False else h @ dec.V.t(), Ubd.t())  # noqa: E731
        print(f"{name} blockdiag softmax max err {float((bd() - ref).abs().max()):.2e} (ref max {float(ref.abs().max()):.2e})")
        res[f"{name} softmax blockdiag"] = (eager_ms(bd), graph_ms(bd))
        Vp, offs = aligned_Z(dec)
        b_blk = dec.bias.index_select(0, dec._index(dev)["order"])
        logits = torch.empty(N, dec._pstarts[-1], device=dev)

        def al():
            Z = h @ Vp.t()
            for t, (n, r) in enumerate(zip(dec.block_sizes, dec.ranks)):
                Ut = dec.U[dec._u_off[t]:dec._u_off[t + 1]].view(n, r)
                s, p = dec._starts[t], dec._pstarts[t]
                torch.addmm(b_blk[s:s + n], Z[:, offs[t]:offs[t] + r], Ut.t(), out=logits[:, p:p + n])
            return logits.index_select(1, dec._index(dev)["ppos"])
        print(f"{name} aligned softmax max err {float((al() - ref).abs().max()):.2e}")
        res[f"{name} softmax alignedZ"] = (eager_ms(al), graph_ms(al))
        Ue = blockdiag(enc)
        Ve = enc.V
        lref = enc(ids)
        lk = lambda: (Ue.index_select(0, ids.reshape(-1)) @ Ve).view(35, 64, D)  # noqa: E731
        print(f"{name} blockdiag lookup max err {float((lk() - lref).abs().max()):.2e}")
        res[f"{name} lookup blockdiag"] = (eager_ms(lk), graph_ms(lk))
        m.cpu()
        torch.cuda.empty_cache()

print("\n| what | eager ms | graph ms |\n|---|---|---|")
for k, (e, g) in res.items():
    print(f"| {k} | {e:.3f} | {g:.3f} |")

# kernel-level profile of the current GR paths (r1)
from torch.profiler import ProfilerActivity, profile  # noqa: E402
m = models["gr_r1"].to(dev)
with torch.no_grad():
    for what, fn in (("lookup", lambda: m.encoder(ids)), ("softmax", lambda: m.decoder(h))):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        print(f"\n=== gr_r1 {what}: 10 calls")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=90))
sys.stdout.flush()
