"""The CUDA paths of every registered method (run on a GPU machine: ``pytest -m gpu``; skipped elsewhere).

Each row of ``tests/test_methods.py``'s EXAMPLES is compressed on the CPU, moved to the GPU, and must give the
CPU's logits there (fp32, TF32 off) for the fused-training and the inference paths; a training step on the GPU
must reach every compressed layer. The dense model's fused cuDNN path is checked against the pluggable loop.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_methods import CASES, EXAMPLES, assert_gradients_reach, compressed, ids
from test_recurrent import ROWS as REC_ROWS
from test_recurrent import compressed as rec_compressed
from test_recurrent import spy_lstm_kernel

from lmshrink.layers.block_low_rank import set_blockdiag, set_lookup

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("exact_fp32"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name,i", CASES)
def test_gpu_logits_match_cpu(name, i):
    ex = EXAMPLES[name][i]
    _, model, _ = compressed(name, ex)
    x = ids()
    with torch.no_grad():
        want, _ = model.eval()(x)
        gpu = copy.deepcopy(model).cuda().eval()
        got, _ = gpu(x.cuda())
        # the row's own tolerance: 4-bit CPU logits come from torch's int4 kernel (bfloat16 activations), the GPU's
        # from the float path
        torch.testing.assert_close(got.cpu(), want, atol=ex.fast_atol, rtol=1e-4)
        if set_lookup(gpu, "bag"):  # GroupReduce rows: the embedding_bag lookup on CUDA as well
            got, _ = gpu(x.cuda())
            torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
            set_lookup(gpu, "scatter")
            for mode in ("on", "off"):  # and the block-diagonal path forced on and off, whatever "auto" picks
                set_blockdiag(gpu, mode)
                got, _ = gpu(x.cuda())
                torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


def test_blockdiag_auto_taken_on_cuda_where_it_is_smaller_than_dense():
    from lmshrink.layers.block_low_rank import BlockLowRankEmbedding, BlockLowRankLinear

    g = torch.Generator().manual_seed(0)
    sizes, ranks, V, D = [60, 140], [9, 4], 200, 64  # sum r = 13 -> 16 < D: "auto" takes the path on CUDA with TF32
    torch.backends.cuda.matmul.allow_tf32 = True  # the exact_fp32 fixture restores it
    for cls in (BlockLowRankLinear, BlockLowRankEmbedding):
        layer = cls(V, D, sizes, ranks)
        layer.set_factors(torch.randperm(V, generator=g), [torch.randn(n, r, generator=g) for n, r in zip(sizes, ranks)],
                          [torch.randn(r, D, generator=g) for r in ranks])
        x = torch.randn(5, D, generator=g) if cls is BlockLowRankLinear else torch.randint(0, V, (5, 3), generator=g)
        with torch.no_grad():
            want = layer(x)
            assert not layer._bcache
            layer.cuda()
            got = layer(x.cuda())
            assert layer._bcache["Ubd"].shape == (V, 16) and layer._bcache["Ubd"].is_cuda
            torch.testing.assert_close(got.cpu(), want, atol=3e-3 * float(want.abs().max()), rtol=0)  # TF32 GEMMs
            layer.cpu()
            assert not layer._bcache  # the GPU operands leave with the model
            torch.backends.cuda.matmul.allow_tf32 = False  # true fp32: the block path's fewer multiply-adds win
            layer.cuda()
            layer(x.cuda())
            assert not layer._bcache
            torch.backends.cuda.matmul.allow_tf32 = True
            layer.cpu()


@pytest.mark.parametrize("name,i", CASES)
def test_gpu_training_step_reaches_compressed_layers(name, i):
    ex = EXAMPLES[name][i]
    _, model, report = compressed(name, ex)
    assert_gradients_reach(model.cuda().train(), report, ids().cuda())


@pytest.mark.parametrize("name,i", CASES)
def test_gpu_training_step_under_retraining_autocast(name, i):
    # GPU retraining runs under bfloat16 autocast by default (precision "auto"), where CUDA autocast refuses some
    # ops that the fp32 step above never meets (stop 22: addcmul with bfloat16 inputs stopped every quantization
    # retraining); the step must run and reach every compressed layer there too
    from lmshrink.train.lm import autocast_for

    ex = EXAMPLES[name][i]
    _, model, report = compressed(name, ex)
    with autocast_for(torch.device("cuda"), "auto"):
        assert_gradients_reach(model.cuda().train(), report, ids().cuda())


def test_fused_cudnn_path_equals_pluggable_loop():
    from lmshrink.models import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(500, hidden=64, layers=2).cuda().eval()
    x = torch.randint(0, 500, (12, 4), device="cuda")
    with torch.no_grad():
        fused, _ = model(x)
        for layer in model.rnn.layers:
            layer.force_loop = True
        loop, _ = model(x)
    torch.testing.assert_close(fused, loop, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method,opts", REC_ROWS, ids=[f"{m}-{k}" for k, (m, _) in enumerate(REC_ROWS)])
def test_rebuilt_dense_lstm_on_cuda_under_inference_mode_equals_the_cpu_loop(method, opts):
    # the "rebuilt dense" serving path (speed.py --rebuilt, fused_lstm at inference) on cuDNN: a rebuilt weight in a
    # layout cuDNN cannot view() crashed it on an H100 (stop 24) while every CPU test passed
    from lmshrink.models.lstm_lm import fused_lstm

    model, _ = rec_compressed(method, opts)
    model.eval()
    x = torch.randint(0, 40, (9, 3), generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        want, _ = model(x)
    gpu = copy.deepcopy(model).cuda().eval()
    with torch.inference_mode(), fused_lstm(gpu):
        got, _ = gpu(x.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


def test_auto_serving_path_on_cuda_rebuilds_long_windows_and_steps_short_ones(monkeypatch):
    from lmshrink.models import lstm_lm

    model, _ = rec_compressed("doped_kronecker", {"ratio": 3, "anneal": False})
    model.eval()
    gpu = copy.deepcopy(model).cuda().eval()
    calls = spy_lstm_kernel(monkeypatch)
    g = torch.Generator().manual_seed(4)
    for T in (1, lstm_lm.CUDA_REBUILD_MIN_STEPS - 1, lstm_lm.CUDA_REBUILD_MIN_STEPS, 35):
        x = torch.randint(0, 40, (T, 3), generator=g)
        calls.clear()
        with torch.inference_mode():
            want, _ = model(x)
            assert calls == []  # the CPU steps through the compact maps at any length
            got, _ = gpu(x.cuda())
        assert [t for t, _ in calls] == ([T, T] if T >= lstm_lm.CUDA_REBUILD_MIN_STEPS else []), (T, calls)
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("via", ["popcount", "matmul"])
@pytest.mark.parametrize("c", [50, 130])
def test_hamming_topk_on_gpu_equals_brute_force(c, via):
    import numpy as np

    from lmshrink.binary import hamming_topk, pack_bits

    g = np.random.default_rng(c)
    db = g.random((500, c)) < 0.5
    q = np.concatenate([db[:4], g.random((12, c)) < 0.5])
    ref = (q[:, None, :] != db[None, :, :]).sum(-1)  # (16, 500)
    P, Q = torch.from_numpy(pack_bits(db)).cuda(), torch.from_numpy(pack_bits(q)).cuda()
    dist, idx = hamming_topk(Q, P, k=10, budget_bytes=500 * 24 * 3, via=via)  # several chunks
    for i in range(len(q)):
        order = np.lexsort((np.arange(500), ref[i]))[:10]  # by distance, then index
        got = idx[i].cpu().numpy()
        assert dist[i].cpu().tolist() == ref[i][order].tolist()
        assert (ref[i][got] == dist[i].cpu().numpy()).all() and len(set(got.tolist())) == 10
        # every row strictly closer than the 10th distance must be there (ties at the boundary may differ)
        assert set(np.flatnonzero(ref[i] < ref[i][order[-1]]).tolist()) <= set(got.tolist())


def test_cuda_graph_replay_equals_the_eager_step():
    # lmshrink train --cuda-graph: warm-up steps, capture, replays, and the shorter last window eagerly
    from lmshrink.models import LSTMLanguageModel
    from lmshrink.train.graphed import StaticLMStep

    def run(capture):
        torch.manual_seed(0)
        model = LSTMLanguageModel(300, hidden=32, layers=2, dropout=0.0).cuda().train()
        step = StaticLMStep(model, list(model.parameters()), 7, 4, 0.5, torch.device("cuda"), capture=capture)
        step.set_lr(0.7)
        g = torch.Generator().manual_seed(1)
        losses = []
        for k in range(10):
            w = torch.randint(0, 300, (8 if k < 9 else 4, 4), generator=g).cuda()
            x, y = w[:-1], w[1:]
            losses.append(float(step(x, y) if x.size(0) == 7 else step.eager(x, y)))
        return losses, [p.detach().clone() for p in model.parameters()], step

    eager_losses, eager_params, _ = run(False)
    graph_losses, graph_params, step = run(True)
    assert step.graph is not None  # it really captured and replayed
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    for a, b in zip(eager_params, graph_params):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
