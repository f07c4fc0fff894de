"""One-off probe (not committed): GroupReduce vocab-layer speed, old forward (cat + index_select + bias add,
bucketize lookup) vs new (out= writes, bias in GEMM, per-word cached lookup), PTB-large shape, plus a profile."""
import statistics, sys, time, types, copy
import torch
from lmshrink.compress import Plan, compress, make_config
from lmshrink.models import LSTMLanguageModel
from lmshrink.measure import lm_tokens_per_second, lm_forward_breakdown
from lmshrink.layers import block_low_rank as blr

def old_index(self, device):
    version = -1 if torch.is_inference(self.word_pos) else self.word_pos._version
    key = ("old", device, version, self.word_pos.data_ptr())
    c = getattr(self, "_old_cache", {})
    if c.get("key") != key:
        dev = device
        c = {"key": key, "pos": self.word_pos.to(device=dev, dtype=torch.long),
             "starts": torch.tensor(self._starts[1:-1], device=dev), "start": torch.tensor(self._starts[:-1], device=dev),
             "u_off": torch.tensor(self._u_off[:-1], device=dev), "r_off": torch.tensor(self._r_off[:-1], device=dev),
             "ranks": torch.tensor(self.ranks, device=dev), "k": torch.arange(max(self.ranks), device=dev)}
        self._old_cache = c
    return c

def old_project(self, h):
    dt = h.dtype
    U, V = self.factors(dt)
    lead = h.shape[:-1]
    h2 = h.reshape(-1, self.dim)
    Z = h2 @ V.t()
    outs = []
    for t, (n, r) in enumerate(zip(self.block_sizes, self.ranks)):
        Ut = U[self._u_off[t]:self._u_off[t + 1]].view(n, r)
        outs.append(Z[:, self._r_off[t]:self._r_off[t + 1]] @ Ut.t())
    logits = torch.cat(outs, 1)
    logits = logits.index_select(1, old_index(self, h.device)["pos"])
    return logits.view(*lead, self.num_rows)

def old_lookup(self, ids):
    ix = old_index(self, ids.device)
    U, V = self.factors()
    flat = ids.reshape(-1)
    pos = ix["pos"].index_select(0, flat)
    b = torch.bucketize(pos, ix["starts"], right=True)
    r = ix["ranks"][b]
    k = ix["k"]
    valid = k[None, :] < r[:, None]
    src = ix["u_off"][b, None] + (pos - ix["start"][b])[:, None] * r[:, None] + k[None, :]
    vals = torch.where(valid, U[torch.where(valid, src, 0)], U.new_zeros(()))
    cols = torch.where(valid, ix["r_off"][b, None] + k[None, :], self.r_total)
    X = U.new_zeros(flat.numel(), self.r_total + 1).scatter(1, cols, vals)
    return (X[:, : self.r_total] @ V).view(*ids.shape, self.dim)

def make_old(model):
    enc, dec = model.encoder, model.decoder
    enc.forward = types.MethodType(old_lookup, enc)
    def dec_fwd(self, x):
        out = old_project(self, x)
        return out + self.bias.to(out.dtype)
    dec.forward = types.MethodType(dec_fwd, dec)
    return model

dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
bs = 64 if dev == "cuda" else 1
torch.manual_seed(0)
V = 10000
dense = LSTMLanguageModel(V, hidden=1500, layers=2, init_scale=0.04).eval()
counts = torch.round(V * 5.0 / torch.arange(1, V + 1)) + 1
models = {"dense": dense}
gr = dict(num_blocks=10, rank_rule="sqrt_frequency", refine_iters=2)
for name, cfg in {"gr_new": make_config(method="groupreduce", ratio=6.6, **gr),
                  "svd": make_config(method="svd", ratio=6.6),
                  "prune": make_config(method="prune", ratio=6.6)}.items():
    m = copy.deepcopy(dense)
    compress(m, Plan({"encoder": cfg, "decoder": cfg}), {"word_counts": counts})
    models[name] = m.eval()
models["gr_old"] = make_old(copy.deepcopy(models["gr_new"]))
# equality old vs new on device
with torch.inference_mode():
    a, b = models["gr_new"].to(dev), models["gr_old"].to(dev)
    ids = torch.randint(0, V, (35, bs), device=dev)
    print("max |new-old| logits:", float((a(ids)[0] - b(ids)[0]).abs().max()), flush=True)
for prec in ("highest", "high"):
    torch.set_float32_matmul_precision(prec)
    per = {n: [] for n in models}
    for k in range(5):
        for n, m in models.items():
            per[n].append(lm_tokens_per_second(m, V, dev, batch_size=bs, repeats=10)["tokens_per_s"])
    print(f"--- matmul precision {prec}: tokens/s median over 5 interleaved rounds, ratio vs dense")
    for n in models:
        ratio = statistics.median(x / y for x, y in zip(per[n], per["dense"]))
        print(f"{n:8s} {statistics.median(per[n]):12,.0f} {ratio:6.3f}", flush=True)
    for n, m in models.items():
        p = lm_forward_breakdown(m, V, dev, batch_size=bs, repeats=10)
        print(f"  breakdown {n:8s} " + "  ".join(f"{k} {v:.3f} ms" for k, v in p.items()), flush=True)
torch.set_float32_matmul_precision("highest")
if dev == "cuda":
    from torch.profiler import profile, ProfilerActivity
    for n in ("gr_old", "gr_new", "dense"):
        m = models[n].to(dev)
        ids = torch.randint(0, V, (35, bs), device=dev)
        with torch.inference_mode():
            st = m.init_state(bs, dev)
            for _ in range(3): m(ids, st)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5): m(ids, st)
                torch.cuda.synchronize()
        print(f"=== profile {n} (5 windows)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
