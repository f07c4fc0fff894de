"""Diagnostic (stop 22): where GroupReduce's and pruning's retraining gradients go on the CPU-trained PTB small.
300 SGD steps at rate 0.1, clip 5 (the recipe's), no teacher: grad norm before clipping, share of steps clipped,
the vocabulary layers' share of the squared gradient norm, train loss of the first and last 50 steps."""
import copy
import statistics as st
import sys

import torch
from torch import nn

from lmshrink.compress import Plan, compress, make_config
from lmshrink.data import bptt_windows, load_corpus
from lmshrink.data.corpus import batchify
from lmshrink.io import load_model_dir
from lmshrink.models.lstm_lm import PRESETS

torch.set_num_threads(1); torch.manual_seed(0)
dense, man = load_model_dir("/tmp/cpuexp/ptb-small")
corpus = load_corpus("ptb", "/work/shared/data")
counts = corpus.vocab.counts_tensor()
rec = PRESETS["small"]
train = batchify(corpus.splits["train"], rec.batch_size)
method = sys.argv[1]
model = copy.deepcopy(dense)
cfg = {"groupreduce": {"method": "groupreduce", "ratio": 6.6, "num_blocks": 10, "rank_rule": "log_frequency", "refine_iters": 3},
       "prune": {"method": "prune", "ratio": 6.6}, "svd": {"method": "svd", "ratio": 6.6}}[method]
c = make_config(**cfg)
compress(model, Plan({"encoder": c, "decoder": c}), {"word_counts": counts})
model.train()
params = [p for p in model.parameters() if p.requires_grad]
vocab_ids = {id(p) for n, p in model.named_parameters() if n.startswith(("encoder", "decoder"))}
opt = torch.optim.SGD(params, lr=0.1)
state = model.init_state(rec.batch_size)
norms, shares, losses = [], [], []
for k, (x, y) in enumerate(bptt_windows(train, rec.bptt)):
    if k == 300: break
    state = [(h.detach(), c_.detach()) for h, c_ in state]
    logits, state = model(x, state)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    opt.zero_grad(); (loss * x.size(0)).backward()
    sq = {True: 0.0, False: 0.0}
    for p in params:
        if p.grad is not None: sq[id(p) in vocab_ids] += float(p.grad.pow(2).sum())
    total = (sq[True] + sq[False]) ** 0.5
    norms.append(total); shares.append(sq[True] / max(sq[True] + sq[False], 1e-30)); losses.append(float(loss))
    nn.utils.clip_grad_norm_(params, rec.max_grad_norm); opt.step()
print(f"{method}: grad norm median {st.median(norms):.2f} (max {max(norms):.1f}), clipped {sum(n > rec.max_grad_norm for n in norms)/len(norms):.0%} "
      f"of steps, vocab layers' share of |g|^2 median {st.median(shares):.2f}, loss first50 {st.mean(losses[:50]):.3f} last50 {st.mean(losses[-50:]):.3f}")
