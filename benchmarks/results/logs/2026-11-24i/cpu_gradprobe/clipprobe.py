"""Probe (stop 22): GroupReduce / pruning retraining on the CPU-trained PTB small with the recipe's global gradient
clip (5) against a clip per parameter group (vocabulary layers and the rest, 5 each). 3 epochs at rate 0.1, no
teacher, no rate decay; valid after each epoch, test at the end."""
import copy
import json
import sys
import time

import torch
from torch import nn

from lmshrink.compress import Plan, compress, make_config
from lmshrink.data import bptt_windows, load_corpus
from lmshrink.data.corpus import batchify
from lmshrink.io import load_model_dir
from lmshrink.models.lstm_lm import PRESETS
from lmshrink.train.lm import evaluate_ppl

torch.set_num_threads(1); torch.manual_seed(0)
method, clip, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
dense, man = load_model_dir("/tmp/cpuexp/ptb-small")
corpus = load_corpus("ptb", "/work/shared/data")
rec = PRESETS["small"]
train = batchify(corpus.splits["train"], rec.batch_size)
model = copy.deepcopy(dense)
cfg = {"groupreduce": {"method": "groupreduce", "ratio": 6.6, "num_blocks": 10, "rank_rule": "log_frequency", "refine_iters": 3},
       "prune": {"method": "prune", "ratio": 6.6}}[method]
c = make_config(**cfg)
compress(model, Plan({"encoder": c, "decoder": c}), {"word_counts": corpus.vocab.counts_tensor()})
params = [p for p in model.parameters() if p.requires_grad]
vocab = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("encoder", "decoder"))]
rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("encoder", "decoder"))]
opt = torch.optim.SGD(params, lr=0.1)
hist = [{"epoch": 0, "valid": evaluate_ppl(model, corpus.splits["valid"], 10, 35, "cpu")}]
print(method, clip, hist[-1], flush=True)
for e in range(epochs):
    model.train(); state = model.init_state(rec.batch_size); t0 = time.time()
    for x, y in bptt_windows(train, rec.bptt):
        state = [(h.detach(), c_.detach()) for h, c_ in state]
        logits, state = model(x, state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(); (loss * x.size(0)).backward()
        if clip == "global":
            nn.utils.clip_grad_norm_(params, rec.max_grad_norm)
        else:
            nn.utils.clip_grad_norm_(vocab, rec.max_grad_norm); nn.utils.clip_grad_norm_(rest, rec.max_grad_norm)
        opt.step()
    model.eval()
    hist.append({"epoch": e + 1, "valid": evaluate_ppl(model, corpus.splits["valid"], 10, 35, "cpu"), "s": round(time.time() - t0)})
    print(method, clip, hist[-1], flush=True)
test = evaluate_ppl(model, corpus.splits["test"], 10, 35, "cpu")
print(json.dumps({"method": method, "clip": clip, "history": hist, "test": test}), flush=True)
