"""Recurrent-layer compression: Kronecker, doped Kronecker (+ CMR, annealing), HMD, tensor train.

Every check compares a compressed layer or model with the dense one it came from, in the same test.
"""

from __future__ import annotations

import copy
import json
import math
import struct

import pytest
import torch
import torch.nn as nn

from lmshrink.compress import compress, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.io import load_model_dir, save_model_dir
from lmshrink.layers.hmd import HMDLinear
from lmshrink.layers.kronecker import (DopedKroneckerLinear, KroneckerLinear, kron_dense, kron_matvec, kron_order,
                                       nearest_kronecker, pack_doped)
from lmshrink.layers.tensor_train import tt_dense, tt_matvec, tt_svd
from lmshrink.measure import totals
from lmshrink.models.lstm_lm import LSTMLanguageModel
from lmshrink.train.schedules import cubic_density, nnz_for_density

LSTM_MAPS = ("rnn.layers.*.ih", "rnn.layers.*.hh")

# (method, options) rows: every row goes through the generic LSTM checks below
ROWS = [
    ("kronecker", {"ratio": 6}),
    ("kronecker", {"a_shape": [8, 4], "terms": 2}),
    ("doped_kronecker", {"ratio": 3}),  # train form (annealing not run): equals dense at density 1
    ("doped_kronecker", {"ratio": 3, "anneal": False}),  # packed at once
    ("hmd", {"ratio": 4}),
    ("hmd", {"dense_rows": 3, "rank": 2}),
    ("tt", {"ratio": 4}),
    ("tt", {"ranks": [3, 3], "in_modes": [2, 4, 3], "out_modes": [8, 4, 3]}),
    ("svd", {"ratio": 4}),  # LMF = the existing low-rank method, gates jointly
]


def tiny_lm(seed=0, hidden=24, vocab=40) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    return LSTMLanguageModel(vocab, hidden=hidden, layers=2)


def compressed(method, opts, seed=0):
    model = tiny_lm(seed)
    cfg = make_config(method, **opts)
    report = compress(model, {p: cfg for p in LSTM_MAPS})
    return model, report


# --------------------------------------------------------------------------- Kronecker algebra
# the two multiplication orders of kron_matvec: A (3, 5), B (4, 2) costs 54 multiplies per row and term with A first
# against 100 with B first; the swapped shapes the other way round
# ... and the low-rank corners (a column times a row, either way round), which take their own two-GEMM path
@pytest.mark.parametrize("a_shape,b_shape,order", [((3, 5), (4, 2), "a_first"), ((4, 2), (3, 5), "b_first"),
                                                   ((60, 50), (100, 30), "a_first"), ((50, 26), (52, 25), "b_first"),
                                                   ((12, 1), (1, 10), "b_first"), ((1, 10), (12, 1), "a_first")])
@pytest.mark.parametrize("terms", [1, 3])
def test_kp_matvec_equals_dense_kronecker_product(terms, a_shape, b_shape, order):
    g = torch.Generator().manual_seed(1)
    (m1, n1), (m2, n2) = a_shape, b_shape
    assert kron_order(a_shape, b_shape) == order
    A, B = torch.randn(terms, m1, n1, generator=g), torch.randn(terms, m2, n2, generator=g)
    W = sum(torch.kron(A[t], B[t]) for t in range(terms))  # (m1 m2, n1 n2), torch's own Kronecker product
    x = torch.randn(2, 7, n1 * n2, generator=g)  # leading dims kept
    tol = 1e-4 * W.abs().max() * (n1 * n2) ** 0.5
    assert torch.allclose(kron_dense(A, B), W, atol=1e-5)
    assert torch.allclose(kron_matvec(A, B, x), x @ W.T, atol=tol)
    assert torch.allclose(kron_matvec(A, B, x[0, 0]), x[0, 0] @ W.T, atol=tol)  # a single vector
    layer = KroneckerLinear(n1 * n2, m1 * m2, a_shape, b_shape, terms, bias=False)
    layer.A.data.copy_(A)
    layer.B.data.copy_(B)
    assert torch.allclose(layer.eval()(x), x @ W.T, atol=tol)
    # gradients through either order equal those through the dense product
    Ag, Bg = A.clone().requires_grad_(), B.clone().requires_grad_()
    kron_matvec(Ag, Bg, x).square().sum().backward()
    Ad, Bd = A.clone().requires_grad_(), B.clone().requires_grad_()
    (x @ kron_dense(Ad, Bd).T).square().sum().backward()
    assert torch.allclose(Ag.grad, Ad.grad, rtol=1e-3, atol=1e-3 * Ad.grad.abs().max())
    assert torch.allclose(Bg.grad, Bd.grad, rtol=1e-3, atol=1e-3 * Bd.grad.abs().max())


def test_nearest_kronecker_recovers_an_exact_product_and_beats_random_factors():
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(1, 4, 3, generator=g), torch.randn(1, 5, 6, generator=g)
    W = kron_dense(A, B)
    A2, B2 = nearest_kronecker(W, (4, 3), (5, 6))
    assert torch.allclose(kron_dense(A2, B2), W, atol=1e-4)
    noisy = W + 0.1 * torch.randn(W.shape, generator=g)
    A3, B3 = nearest_kronecker(noisy, (4, 3), (5, 6))
    assert (kron_dense(A3, B3) - noisy).norm() < (W - noisy).norm() + 1e-6  # optimal, so no worse than the truth


# --------------------------------------------------------------------------- doped KP
def test_doped_layer_at_density_one_represents_any_matrix():
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(12, 20)
    lin.weight.data = torch.randn(20, 12, generator=g)  # nothing Kronecker about it
    from lmshrink.compress import LayerContext, get_method

    cfg = make_config("doped_kronecker", ratio=2)
    layer = get_method("doped_kronecker").apply(lin, cfg, LayerContext("x", "linear"))
    assert layer.form == "train" and layer.current_density() == 1.0
    layer.eval()
    assert torch.allclose(layer.dense_weight(), lin.weight, atol=1e-5)
    x = torch.randn(5, 12, generator=g)
    assert torch.allclose(layer(x), lin(x), atol=1e-5)
    layer.pack()  # packing at density 1 keeps every entry
    assert layer.nnz() == 240 and torch.allclose(layer(x), lin(x), atol=1e-5)


def test_annealing_reaches_exactly_the_final_density_along_the_cubic_schedule():
    layer = DopedKroneckerLinear(30, 40, (5, 5), (8, 6), form="train", density=0.037, initial_density=1.0,
                                 anneal_start=0.1, anneal_end=0.6, prune_every=3)
    layer.S.data.normal_(generator=torch.Generator().manual_seed(4))
    total, seen = 100, []
    for step in range(1, total + 1):
        layer.training_step_hook(step / total, step)
        seen.append(layer.nnz())
        if step % 3 == 0 and step / total < 0.6:  # on a pruning step the mask follows the schedule
            want = max(1, round(cubic_density(step / total, 1.0, 0.037, 0.1, 0.6) * 1200))
            assert seen[-1] == min(want, seen[-2] if len(seen) > 1 else 1200)
    assert all(a >= b for a, b in zip(seen, seen[1:]))  # only removes
    assert seen[59] == round(0.037 * 1200) == seen[-1]  # exactly final from anneal_end (progress 0.6) on
    assert float(layer.S.detach().abs()[~layer.mask].sum()) == 0.0  # removed entries are zero, not hidden
    kept = layer.S.detach().abs()[layer.mask]
    assert kept.min() > 0


def test_doped_annealing_runs_inside_the_training_loop_and_packs(tmp_path):
    from lmshrink.data import Corpus, Vocabulary
    from lmshrink.models.lstm_lm import PRESETS
    from lmshrink.train.lm import train_lm

    g = torch.Generator().manual_seed(5)
    vocab = Vocabulary([f"w{i}" for i in range(30)], [1] * 30)
    splits = {s: torch.randint(0, 30, (n,), generator=g) for s, n in (("train", 1200), ("valid", 200), ("test", 200))}
    corpus = Corpus("toy", vocab, splits, {})
    torch.manual_seed(0)
    model = LSTMLanguageModel(30, hidden=32, layers=2)
    cfg = make_config("doped_kronecker", density=0.05, anneal_end=0.5, prune_every=2, cmr=0.3)
    compress(model, {p: cfg for p in LSTM_MAPS})
    out = train_lm(model, corpus, PRESETS["tiny"], device="cpu", epochs=1, progress=False, log=lambda *_: None)
    model = out["model"]
    layers = [m for m in model.modules() if isinstance(m, DopedKroneckerLinear)]
    assert len(layers) == 4
    for m in layers:
        assert m.nnz() == round(0.05 * m.out_features * m.in_features)
    model.eval()
    ids = torch.randint(0, 30, (6, 2), generator=g)
    before, _ = model(ids)
    assert pack_doped(model) == 4
    after, _ = model(ids)
    assert torch.allclose(before, after, atol=1e-5)
    assert all(m.form == "packed" for m in layers)


def test_cmr_drops_sparse_rows_only_while_training_and_only_until_cmr_until():
    layer = DopedKroneckerLinear(8, 12, (3, 2), (4, 4), form="train", density=0.5, cmr=0.5, cmr_until=0.5,
                                 cmr_granularity="row")
    layer.S.data.normal_(generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    layer.train()
    layer.training_step_hook(0.1, 1)
    kp = kron_dense(layer.A, layer.B)
    S = layer.dense_weight() - kp
    full = layer.S * layer.mask
    rows_dropped = (S.abs().sum(1) == 0) & (full.abs().sum(1) > 0)
    assert rows_dropped.any()
    kept = ~rows_dropped
    assert torch.allclose(S[kept], 2.0 * full[kept])  # inverted dropout scaling 1 / (1 - p)
    layer.eval()
    assert torch.allclose(layer.dense_weight() - kp, full)
    layer.train()
    layer.training_step_hook(0.6, 2)  # past cmr_until: no more dropout
    assert torch.allclose(layer.dense_weight() - kp, full)


@pytest.mark.parametrize("granularity", ["element", "matrix"])
def test_cmr_granularities_drop_entries_or_the_whole_sparse_part(granularity):
    layer = DopedKroneckerLinear(8, 12, (3, 2), (4, 4), form="train", density=1.0, cmr=0.5, cmr_granularity=granularity)
    layer.S.data.normal_(generator=torch.Generator().manual_seed(7))
    layer.train()
    torch.manual_seed(1)
    full = (layer.S * layer.mask).detach()
    seen = []
    for _ in range(20):
        ratio = ((layer.dense_weight() - kron_dense(layer.A, layer.B)) / full).detach()  # 0 (dropped) or 2 (kept)
        assert torch.allclose(ratio * (ratio - 2), torch.zeros_like(ratio), atol=1e-4)
        seen.append(ratio)
    if granularity == "matrix":
        assert all(float(r.std()) < 1e-4 for r in seen)  # all of S at once
        assert {round(float(r.mean())) for r in seen} == {0, 2}
    else:
        assert all(0.2 < float((r == 0).float().mean()) < 0.8 for r in seen)


def test_doped_ratio_budget_counts_values_indices_and_row_pointers():
    lin = nn.Linear(64, 96)
    from lmshrink.compress import LayerContext, get_method

    layer = get_method("doped_kronecker").apply(lin, make_config("doped_kronecker", ratio=5, anneal=False),
                                                LayerContext("x", "linear"))
    weight_bits = layer.bits() - 32 * 96  # minus the dense bias
    assert 32 * 96 * 64 / weight_bits >= 5.0
    assert 32 * 96 * 64 / weight_bits < 5.0 * 1.01  # and S uses what the KP leaves
    assert layer.col.dtype == torch.int16 and layer.row_ptr.dtype == torch.int32


def test_kp_share_gives_the_kronecker_factors_that_share_of_the_budget_and_s_the_rest():
    """At 25x on a PTB-medium-shaped map, the default leaves one KP term and S ~2.5% of the entries;
    kp_share=0.6 gives the KP part 60% of the budget (whole terms, so at most one term less) and S ~1%."""
    from lmshrink.methods.doped_kronecker import DopedKroneckerConfig, doped_plan, sparse_bits_per_entry

    out_f, in_f, ratio = 2600, 650, 25
    budget_bits = 32 * out_f * in_f / ratio
    seen = []
    for share in (None, 0.3, 0.6, 0.8):
        cfg = DopedKroneckerConfig(ratio=ratio, kp_share=share)
        cfg.validate()
        sa, sb, terms, nnz = doped_plan(out_f, in_f, cfg, "x")
        per_term = 32 * (sa[0] * sa[1] + sb[0] * sb[1])
        kp_bits = terms * per_term
        total = kp_bits + 32 * (out_f + 1) + nnz * sparse_bits_per_entry(in_f)
        assert budget_bits * 0.999 <= total <= budget_bits  # S fills what the factors leave, never more
        if share is None:
            assert terms == 1
        else:
            assert share * budget_bits - per_term < kp_bits <= share * budget_bits
        seen.append((terms, nnz))
    assert [t for t, _ in seen] == sorted(t for t, _ in seen) and [n for _, n in seen] == sorted((n for _, n in seen), reverse=True)
    assert 0.009 < seen[2][1] / (out_f * in_f) < 0.011  # kp_share 0.6: S at about 1%


def test_kp_share_layer_starts_exact_and_anneals_to_its_smaller_density():
    g = torch.Generator().manual_seed(8)
    lin = nn.Linear(48, 96)
    lin.weight.data = torch.randn(96, 48, generator=g)
    from lmshrink.compress import LayerContext, get_method

    one = get_method("doped_kronecker").apply(lin, make_config("doped_kronecker", ratio=4), LayerContext("x", "linear"))
    many = get_method("doped_kronecker").apply(lin, make_config("doped_kronecker", ratio=4, kp_share=0.6),
                                               LayerContext("x", "linear"))
    assert many.terms > one.terms == 1 and many.density < one.density
    many.eval()
    assert torch.allclose(many.dense_weight(), lin.weight, atol=1e-4)  # S holds the residual of more KP terms
    many.training_step_hook(1.0, 10 ** 6)
    assert many.nnz() == round(many.density * 96 * 48)
    many.pack()
    assert many.form == "packed" and 32 * 96 * 48 / (many.bits() - 32 * 96) >= 4.0


# --------------------------------------------------------------------------- tensor train and HMD
def test_tt_reconstruction_error_falls_as_ranks_grow():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(60, 30, generator=g)
    om, im = [4, 5, 3], [2, 3, 5]
    errors = []
    for r in (1, 2, 4, 8):
        cores = tt_svd(W, om, im, [1, r, r, 1])
        errors.append(float((tt_dense(cores, om, im) - W).norm() / W.norm()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    full = tt_svd(W, om, im, [1, 8, 15, 1])  # maximal ranks: exact
    assert float((tt_dense(full, om, im) - W).norm() / W.norm()) < 1e-5
    x = torch.randn(3, 30, generator=g)
    assert torch.allclose(tt_matvec(full, om, im, x), x @ W.T, atol=1e-4)


def test_hmd_keeps_the_upper_rows_of_every_gate_exactly():
    lin = nn.Linear(20, 4 * 6)
    from lmshrink.compress import LayerContext, get_method

    layer = get_method("hmd").apply(lin, make_config("hmd", dense_rows=2, rank=3), LayerContext("x", "linear", num_gates=4))
    assert isinstance(layer, HMDLinear)
    W, R = lin.weight.detach().view(4, 6, 20), layer.dense_weight().detach().view(4, 6, 20)
    assert torch.allclose(R[:, :2], W[:, :2])  # dense rows of each gate block
    assert torch.linalg.matrix_rank(R[1, 2:]) <= 3


# --------------------------------------------------------------------------- generic LSTM checks, every row
@pytest.mark.parametrize("method,opts", ROWS, ids=[f"{m}-{'-'.join(map(str, o.values()))}" for m, o in ROWS])
def test_compressed_lstm_loop_matches_dense_fused_lstm_from_rebuilt_weights(method, opts):
    model, report = compressed(method, opts)
    dense = tiny_lm()
    model.eval()  # dense_weight() in training mode would include CMR dropout
    for k, layer in enumerate(model.rnn.layers):
        dense.rnn.layers[k].ih.weight.data.copy_(layer.ih.dense_weight())
        dense.rnn.layers[k].hh.weight.data.copy_(layer.hh.dense_weight())
    model.eval(), dense.eval()
    assert all(model.rnn.layers[k]._fused_weights() is None for k in range(2))  # eval: the compact loop
    ids = torch.randint(0, 40, (9, 3), generator=torch.Generator().manual_seed(8))
    a, _ = model(ids)
    b, _ = dense(ids)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max().detach())
    # training mode goes fused through dense_weight(), and gradients reach the compact parameters
    model.train()
    assert model.rnn.layers[0]._fused_weights() is not None
    logits, _ = model(ids)
    logits.float().pow(2).mean().backward()
    for m in model.modules():
        if hasattr(m, "dense_weight") and m is not model:
            grads = [p.grad for n, p in m.named_parameters() if n != "bias"]
            assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("method,opts", ROWS + [("prune", {"ratio": 5, "schedule": "oneshot"})],
                         ids=[f"{m}-{'-'.join(map(str, o.values()))}" for m, o in ROWS + [("prune", {"ratio": 5, "schedule": "oneshot"})]])
def test_fused_evaluation_gives_the_perplexity_of_the_compact_loop(method, opts):
    # evaluate_ppl runs compressed LSTMs through the fused kernel on rebuilt weights (fast on a shared GPU);
    # the perplexity must be the compact model's own, which the loop computes
    from lmshrink.models.lstm_lm import fused_lstm
    from lmshrink.train.lm import evaluate_ppl

    model, _ = compressed(method, opts)
    model.eval()
    with fused_lstm(model):
        assert all(layer._fused_weights() is not None for layer in model.rnn.layers)
    assert all(layer._fused_weights() is None for layer in model.rnn.layers)  # switched back off
    ids = torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(3))
    fused = evaluate_ppl(model, ids, batch_size=4, bptt=7)
    loop = evaluate_ppl(model, ids, batch_size=4, bptt=7, fused=False)
    assert math.isfinite(loop) and abs(fused - loop) <= 1e-4 * loop, (fused, loop)
    assert all(layer.prefer_fused is None for layer in model.rnn.layers)  # back to "auto"


def spy_lstm_kernel(monkeypatch) -> list[tuple[int, bool]]:
    """Record every call of the fused LSTM kernel: (time steps, whether every tensor handed to it was contiguous)."""
    from lmshrink.models import lstm_lm

    calls = []
    kernel = torch.lstm

    def spy(x, state, weights, *rest):
        calls.append((x.size(0), all(t.is_contiguous() for t in [x, *state, *weights])))
        return kernel(x, state, weights, *rest)

    monkeypatch.setattr(lstm_lm.torch, "lstm", spy)
    return calls


def test_auto_serving_path_rebuilds_only_where_rebuild_at_inference_says(monkeypatch):
    # prefer_fused None ("auto") asks rebuild_at_inference(device, steps) per call; True / False override it. The
    # rule itself is CUDA-only (tested on the GPU); here it is replaced by "4 steps or more" on any device, so the
    # wiring is seen on the CPU: which calls reach the fused kernel, and that every path computes the same logits.
    from lmshrink.models import lstm_lm

    assert lstm_lm.rebuild_at_inference(torch.device("cuda"), lstm_lm.CUDA_REBUILD_MIN_STEPS)
    assert not lstm_lm.rebuild_at_inference(torch.device("cuda"), lstm_lm.CUDA_REBUILD_MIN_STEPS - 1)
    assert not lstm_lm.rebuild_at_inference(torch.device("cpu"), 1000)
    model, _ = compressed("svd", {"ratio": 4})
    model.eval()
    assert all(layer.prefer_fused is None for layer in model.rnn.layers)  # the default is "auto"
    monkeypatch.setattr(lstm_lm, "rebuild_at_inference", lambda device, steps: steps >= 4)
    calls = spy_lstm_kernel(monkeypatch)
    g = torch.Generator().manual_seed(2)
    long, short = torch.randint(0, 40, (6, 2), generator=g), torch.randint(0, 40, (3, 2), generator=g)
    with torch.inference_mode():
        want = {}
        with lstm_lm.fused_lstm(model, False):
            want = {T: model(ids)[0] for T, ids in ((6, long), (3, short))}
        assert calls == []  # forced compact: never the kernel
        for enabled, seen in ((None, [6, 6]), (True, [6, 6, 3, 3])):
            calls.clear()
            with lstm_lm.fused_lstm(model, enabled):
                got = {6: model(long)[0], 3: model(short)[0]}
            assert [T for T, _ in calls] == seen, (enabled, calls)  # two layers per call
            for T in (6, 3):
                assert torch.allclose(got[T], want[T], atol=1e-5)


def test_forward_breakdown_times_the_path_it_is_asked_for(monkeypatch):
    # speed.py --breakdown explains its plain (compact) rows: the breakdown must run the same path they do
    from lmshrink.measure import lm_forward_breakdown

    model, _ = compressed("svd", {"ratio": 4})
    calls = spy_lstm_kernel(monkeypatch)
    for fused, kernel_calls in ((False, 0), (True, 2 * 3)):  # two layers, warmup 1 + repeats 2
        calls.clear()
        parts = lm_forward_breakdown(model, 40, "cpu", batch_size=2, seq_len=5, warmup=1, repeats=2, fused=fused)
        assert len(calls) == kernel_calls and set(parts) == {"encoder", "rnn", "decoder"}
    assert all(layer.prefer_fused is None for layer in model.rnn.layers)  # the model's own choice again


def test_fused_path_hands_the_kernel_contiguous_weights(monkeypatch):
    # cuDNN view()s the weights it is given; the CPU kernel takes any strides, so only this test sees a rebuilt weight
    # in another layout reach torch.lstm (on an H100 it crashed speed.py --rebuilt, stop 24)
    from lmshrink.models import lstm_lm

    model, _ = compressed("svd", {"ratio": 4})
    model.eval()
    layer = model.rnn.layers[0]
    rebuild = layer.hh.dense_weight
    monkeypatch.setattr(layer.hh, "dense_weight", lambda: rebuild().t().contiguous().t())  # same values, column-major
    assert not layer.hh.dense_weight().is_contiguous()
    calls = spy_lstm_kernel(monkeypatch)
    ids = torch.randint(0, 40, (5, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loop, _ = model(ids)
        with lstm_lm.fused_lstm(model):
            fused, _ = model(ids)
    assert calls and all(contiguous for _, contiguous in calls)
    assert torch.allclose(fused, loop, atol=1e-5)


@pytest.mark.parametrize("method,opts", ROWS, ids=[f"{m}-{'-'.join(map(str, o.values()))}" for m, o in ROWS])
def test_save_load_round_trip_and_bits_match_bytes_on_disk(method, opts, tmp_path):
    model, report = compressed(method, opts)
    for r in report:
        assert r["bits"] == model.get_submodule(r["module"]).bits()
    model.eval()
    ids = torch.randint(0, 40, (5, 2), generator=torch.Generator().manual_seed(9))
    before, _ = model(ids)
    manifest = save_model_dir(model, tmp_path / "m")
    loaded, _ = load_model_dir(tmp_path / "m")
    after, _ = loaded(ids)
    assert torch.allclose(before, after, atol=1e-6)
    # manifest: every compressed map listed with its type, spec and method config
    layers = manifest["compressed_layers"]
    assert sorted(layers) == sorted(f"rnn.layers.{k}.{w}" for k in range(2) for w in ("ih", "hh"))
    for name, entry in layers.items():
        mod = loaded.get_submodule(name)
        assert entry["type"] == mod.layer_type and entry["spec"] == mod.spec()
        assert entry["config"]["method"] == method
    # bits(): the tensor bytes safetensors wrote (file minus its 8-byte length and JSON header) within 2%
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    data_bytes = len(raw) - 8 - header_len
    header = json.loads(raw[8 : 8 + header_len])
    bits = totals(model)["bits"]
    assert abs(bits / 8 - data_bytes) <= 0.02 * data_bytes
    for name in layers:  # and per compressed layer, exactly
        mod = model.get_submodule(name)
        on_disk = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k.startswith(name + "."))
        assert on_disk * 8 == mod.bits()


def test_round_trip_of_the_train_form_keeps_mask_and_schedule(tmp_path):
    model, _ = compressed("doped_kronecker", {"ratio": 3, "anneal_end": 0.4})
    layer = model.rnn.layers[0].ih
    layer.set_density(0.3)
    save_model_dir(model, tmp_path / "m")
    loaded, _ = load_model_dir(tmp_path / "m")
    model.eval()  # no CMR, for an exact comparison
    twin = loaded.rnn.layers[0].ih
    assert twin.form == "train" and twin.anneal_end == 0.4 and torch.equal(twin.mask, layer.mask)
    assert torch.equal(twin.dense_weight(), layer.dense_weight())


def test_a_shape_of_minus_one_and_one_is_low_rank_as_a_kronecker_sum():
    """``a_shape=[-1, 1]``: A the whole output dimension by 1, B 1 by the whole input, so T terms are a rank-T
    matrix and the nearest-KP initialisation is the truncated SVD (Eckart-Young); one plan fits the 4H x E input
    map and the 4H x H recurrent map of different widths; doped, the KP part is that rank and S the rest."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(30, hidden=12, layers=1, emb_size=20)
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in ("rnn.layers.0.ih", "rnn.layers.0.hh")}
    compress(model, {"rnn.layers.0.*": make_config("kronecker", a_shape=[-1, 1], terms=3)})
    for name, W in weights.items():
        layer = model.get_submodule(name)
        assert list(layer.a_shape) == [W.shape[0], 1] and list(layer.b_shape) == [1, W.shape[1]]
        U, S, Vh = torch.linalg.svd(W.double())
        best = (U[:, :3] * S[:3]) @ Vh[:3]
        torch.testing.assert_close(layer.dense_weight().double(), best, atol=1e-5, rtol=1e-5)
    doped = LSTMLanguageModel(30, hidden=12, layers=1, emb_size=20)
    report = compress(doped, {"rnn.*": make_config("doped_kronecker", ratio=4, a_shape=[-1, 1], kp_share=0.5, cmr=0.0)})
    for row in report:
        layer = doped.get_submodule(row["module"])
        assert list(layer.a_shape) == [48, 1] and list(layer.b_shape) == [1, layer.in_features] and layer.terms >= 1
        # the packed layer after annealing: KP numbers, row pointers, S's values and 16-bit column indices
        nnz = nnz_for_density(layer.density, 48 * layer.in_features)
        final_bits = 32 * layer.terms * (48 + layer.in_features) + 32 * (48 + 1) + nnz * (32 + 16)
        assert 0.5 * 32 * 48 * layer.in_features / 4 < final_bits <= 32 * 48 * layer.in_features / 4


# --------------------------------------------------------------------------- bad input: one line, nothing changed
BAD = [
    ("kronecker", {"a_shape": [5, 4]}, "does not divide"),
    ("kronecker", {"a_shape": [0, 1]}, "or -1 for the whole dimension"),
    ("doped_kronecker", {"ratio": 4, "a_shape": [-2, 1]}, "or -1 for the whole dimension"),
    ("doped_kronecker", {"density": 0.0}, "density must be in (0, 1]"),
    ("doped_kronecker", {"density": 1.5}, "density must be in (0, 1]"),
    ("doped_kronecker", {"density": 0.01, "anneal_end": 1.2}, "after training ends"),
    ("doped_kronecker", {"ratio": 4, "density": 0.01}, "exactly one of"),
    ("doped_kronecker", {"ratio": 4, "kp_share": 1.0}, "kp_share (the KP factors' share of the budget) must be in (0, 1)"),
    ("doped_kronecker", {"density": 0.01, "kp_share": 0.5}, "kp_share splits a ratio or fraction budget"),
    ("tt", {"ranks": [50, 50], "in_modes": [2, 4, 3], "out_modes": [8, 4, 3]}, "exceeds its maximum"),
    ("tt", {"ranks": [2, 2], "in_modes": [2, 4, 4], "out_modes": [8, 4, 3]}, "multiply to"),
    ("kronecker", {"a_shape": [8, 4], "terms": 99}, "exceed the maximum"),
    ("hmd", {"dense_rows": 2, "rank": 40}, "exceeds min"),
    ("svd", {"rank": 500}, "exceeds"),
]


@pytest.mark.parametrize("method,opts,msg", BAD, ids=[b[2] for b in BAD])
def test_bad_input_is_one_clear_line_and_leaves_the_model_untouched(method, opts, msg, tmp_path):
    model = tiny_lm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LmshrinkError) as e:
        compress(model, {p: make_config(method, **opts) for p in LSTM_MAPS})
    text = str(e.value)
    assert msg in text and "\n" not in text
    assert all(type(m.ih) is nn.Linear for m in model.rnn.layers)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(tmp_path.iterdir())


def test_cubic_schedule_endpoints():
    assert cubic_density(0.0, 1.0, 0.01, 0.0, 0.5) == 1.0
    assert cubic_density(0.5, 1.0, 0.01, 0.0, 0.5) == 0.01
    assert cubic_density(1.0, 1.0, 0.01, 0.0, 0.5) == 0.01
    mid = cubic_density(0.25, 1.0, 0.01, 0.0, 0.5)
    assert math.isclose(mid, 0.01 + 0.99 * 0.5**3)


# --------------------------------------------------------------------------- the benchmark script, end to end
@pytest.mark.slow
def test_benchmark_script_end_to_end_on_a_tiny_corpus(tmp_path):
    """benchmarks/recurrent.py: trains a tiny dense baseline, compresses, retrains, writes JSON/Markdown/PNG."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "data" / "ptb"
    data.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(60)]

    def text(lines):
        return "".join(" " + " ".join(words[int(i)] for i in torch.randint(0, 60, (12,), generator=g)) + " \n"
                       for _ in range(lines))

    (data / "ptb.train.txt").write_text(text(300))
    (data / "ptb.valid.txt").write_text(text(30))
    (data / "ptb.test.txt").write_text(text(30))
    out = tmp_path / "res" / "recurrent.json"
    cmd = [sys.executable, str(root / "benchmarks/recurrent.py"), "--preset", "tiny", "--corpus", "ptb", "--data",
           str(tmp_path / "data"), "--no-verify", "--baseline-epochs", "1", "--methods", "doped_kp,kp:distill=0.5,hmd,lmf:lr=0.5;lr_end=0.1,tt:cell_clip=50",
           "--ratios", "6", "--epochs", "1", "--max-steps", "8", "--jobs", "2", "--work", str(tmp_path / "work"),
           "--out", str(out), "--cpu-repeats", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    res = json.loads(out.read_text())
    base = res["baselines"]["tiny/ptb"]
    runs = [r for r in res["runs"].values() if r.get("status") == "ok"]
    assert len(runs) == 5
    for r in runs:
        ratio = base["lstm_bits"] / r["lstm_bits"]  # of the LSTM layers as a whole, biases included
        assert 6 * 0.999 <= ratio < 12, (r["label"], ratio)  # budget met, and not wildly under it
        assert r["lstm_bytes_on_disk"] * 8 == r["lstm_bits"] and math.isfinite(r["test_ppl"])
        assert r["cuda_graph"] == {"captured": False, "why_not": "not asked"}  # eager unless --cuda-graph
        # lmf's entry carries its own retraining rate; the others retrain at --lr (1); lr is no method option
        assert r["lr_schedule"] == ([0.5] if r["label"].startswith("lmf:") else [1.0]), r["label"]
        assert "lr" not in r["config"] and "lr" not in r["options"]
        # tt's entry retrains and is saved with the carried cell state clamped; cell_clip is no method option either
        clip = 50 if r["label"].startswith("tt:") else None
        assert r["cell_clip"] == clip and "cell_clip" not in r["config"], r["label"]
        assert json.loads((Path(r["model_dir"]) / "manifest.json").read_text())["architecture"].get("cell_clip") == clip
        # kp's entry retrains against the dense baseline too; distill is the training's option, not the method's
        assert r["distill"] == (0.5 if r["label"].startswith("kp:") else None) and "distill" not in r["config"]
        assert all(len(r["max_abs_cell"][s]) == 2 and min(r["max_abs_cell"][s]) > 0 for s in ("valid", "test"))
    assert all(len(base["max_abs_cell"][s]) == 2 for s in ("valid", "test"))
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # resumes: nothing to redo
    assert again.returncode == 0 and "started" not in again.stdout


def test_benchmark_script_runs_each_method_once_per_seed(tmp_path, bench_module):
    """--seed 0,2: every run once per seed in one invocation, seed 0 under the key runs always had and seed 2 under
    its own; a rerun adds only the new seed; an older file's seed-N runs (made by --seed N) move to their own key
    instead of standing in for seed 0; bad seeds are refused."""
    import subprocess
    import sys
    from pathlib import Path

    from test_vocab_benchmark import tiny_corpus

    root = Path(__file__).resolve().parents[1]
    tiny_corpus(tmp_path / "data")
    out = tmp_path / "r.json"

    def run(seeds):
        cmd = [sys.executable, str(root / "benchmarks/recurrent.py"), "--preset", "tiny", "--corpus", "ptb", "--data",
               str(tmp_path / "data"), "--no-verify", "--baseline-epochs", "1", "--methods", "doped_kp", "--ratios", "4",
               "--epochs", "1", "--max-steps", "3", "--no-speed", "--no-cpu-latency", "--seed", seeds,
               "--work", str(tmp_path / "work"), "--out", str(out)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)

    done = run("0,2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = json.loads(out.read_text())["runs"]
    key = "tiny/ptb|doped_kp|4x|retrain|e1"
    assert set(runs) == {key, key + "|s2"} and [runs[k]["seed"] for k in (key, key + "|s2")] == [0, 2]
    assert runs[key]["test_ppl"] != runs[key + "|s2"]["test_ppl"]  # another seed, other CMR masks: another run
    assert "doped_kp (seed 2)" in out.with_suffix(".md").read_text()
    again = run("2,3")
    assert again.returncode == 0 and again.stdout.count("started ") == 1 and "|s3" in again.stdout
    # an older file: seed 2's run stored under seed 0's key; asking for seed 0 must run it, not adopt seed 2's
    res = json.loads(out.read_text())
    res["runs"] = {key: res["runs"][key + "|s2"]}
    out.write_text(json.dumps(res))
    third = run("0")
    assert third.returncode == 0 and third.stdout.count("started ") == 1
    runs = json.loads(out.read_text())["runs"]
    assert runs[key]["seed"] == 0 and runs[key + "|s2"]["seed"] == 2
    mod = bench_module("recurrent")
    for bad in ("-1", "a", ",", "1.5"):
        with pytest.raises(LmshrinkError, match="--seed takes"):
            mod.parse_seeds(bad)
    assert mod.parse_seeds("2,0,2") == [2, 0]


def test_tokens_per_second_times_both_ways_to_serve_a_compressed_lstm():
    from lmshrink.measure import lm_tokens_per_second

    model, _ = compressed("kronecker", {"ratio": 6})
    loop = lm_tokens_per_second(model, 40, batch_size=2, seq_len=5, warmup=1, repeats=2)
    fused = lm_tokens_per_second(model, 40, batch_size=2, seq_len=5, warmup=1, repeats=2, fused=True)
    assert not loop["fused"] and fused["fused"]
    assert loop["tokens_per_s"] > 0 and fused["tokens_per_s"] > 0
    assert all(layer.prefer_fused is None for layer in model.rnn.layers)  # only during the timing


def test_benchmark_script_refuses_cuda_graph_without_cuda_before_any_work(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "res" / "recurrent.json"
    done = subprocess.run([sys.executable, str(root / "benchmarks/recurrent.py"), "--preset", "tiny", "--corpus", "ptb",
                           "--data", str(tmp_path / "none"), "--device", "cpu", "--precision", "fp32", "--cuda-graph",
                           "--work", str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2
    assert "needs a CUDA device" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "work").exists()


def test_a_diverged_run_is_named_in_the_tables_and_kept_off_the_plot_scale(tmp_path, bench_module, monkeypatch):
    """A run that ends far above the dense perplexity (TT at 25x on PTB large at lr 1: 38,207) is marked
    "(diverged)" with its first epoch's train perplexity, and the plot's y axis stays near the other runs."""
    mod = bench_module("recurrent")
    base = {"test_ppl": 80.0, "valid_ppl": 82.0, "lstm_bytes_on_disk": 2**20, "model_weights_bytes_on_disk": 2**21,
            "lstm_bits": 8 * 2**20}

    def run(label, ppl, train1):
        return {"group": "large/ptb", "status": "ok", "label": label, "mode": "retrain", "ratio_target": 25,
                "lstm_bits": 8 * 2**20 / 25, "test_ppl": ppl, "lstm_bytes_on_disk": 2**20 / 25,
                "model_weights_bytes_on_disk": 2**20, "epochs": 6, "valid_ppl_before_retrain": 1000.0,
                "history": [{"epoch": 1, "lr": 1.0, "train_ppl": train1}]}

    res = {"baselines": {"large/ptb": base}, "runs": {"a": run("tt", 38206.89, 2.15e6), "b": run("prune", 93.6, 57.0)}}
    md = mod.markdown(res)
    assert "| 38206.89 | +47658.61 (diverged) |" in md and "| 93.60 | +17.00 |" in md
    assert ("- tt @25x (retrain): test ppl 38206.89, over 3x the dense model's: it diverged (valid ppl 1000.00 before "
            "retraining; train ppl 2.15e+06 in epoch 1 at lr 1).") in md
    assert "| tt @25x (retrain) | 38206.89 (diverged) |" in md and "prune @25x (retrain) | 93.60 |" in md
    # a record with less in it (no valid ppl before retraining, no rate in its history) still gets its line
    partial = run("kp", 500.0, 9e5)
    del partial["valid_ppl_before_retrain"], partial["history"][0]["lr"]
    assert mod.diverged_note(partial, base) == ("- kp @25x (retrain): test ppl 500.00, over 3x the dense model's: it "
                                                "diverged (train ppl 9e+05 in epoch 1).")
    partial["history"] = []
    assert mod.diverged_note(partial, base).endswith("it diverged.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, path, **kw):
        saved["ylim"] = fig.axes[0].get_ylim()
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    mod.plot(res, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0
    assert saved["ylim"][1] == pytest.approx(3 * 80.0 * 1.05)


def test_a_methods_retraining_rate_is_taken_out_of_its_options_and_checked(bench_module):
    """``lmf:lr=0.2;lr_end=0.005`` retrains that entry from 0.2 to 0.005 (the rest at --lr / --lr-end); the two keys
    never reach the method's config; a rate that is not a positive number is refused before any training."""
    mod = bench_module("recurrent")
    args = mod.build_parser().parse_args(["--lr", "1", "--lr-end", "0.02"])
    label, _, opts = mod.parse_method("lmf:lr=0.2;lr_end=0.005;rank=3")
    assert mod.retrain_options(label, opts, args) == ({"rank": 3}, 0.2, 0.005)
    assert mod.retrain_options("kp", {}, args) == ({}, 1.0, 0.02)
    assert mod.retrain_options("tt", {"cell_clip": 50}, args) == ({"cell_clip": 50}, 1.0, 0.02)  # the run's spec takes it
    for bad in ("lr=0", "lr=-1", "lr=x", "lr_end=nan", "lr=true", "cell_clip=0", "cell_clip=x"):
        with pytest.raises(LmshrinkError, match="must be a positive number"):
            mod.retrain_options("lmf:" + bad, mod.parse_method("lmf:" + bad)[2], args)
    # the command refuses it before it trains or even reads the corpus
    assert mod.main(["--preset", "tiny", "--corpus", "ptb", "--data", "/nonexistent", "--methods", "kp,lmf:lr=-1"]) == 2
    # distill (a weight in [0, 1]) likewise stays for the run's spec and is checked up front
    assert mod.retrain_options("kp", {"distill": 1}, args) == ({"distill": 1}, 1.0, 0.02)
    for bad in ("distill=1.5", "distill=-1", "distill=x", "distill=true"):
        with pytest.raises(LmshrinkError, match="distillation weight"):
            mod.retrain_options("kp:" + bad, mod.parse_method("kp:" + bad)[2], args)
    assert mod.main(["--preset", "tiny", "--corpus", "ptb", "--data", "/nonexistent", "--methods", "kp:distill=2"]) == 2


def test_methods_list_keeps_json_lists_in_options_whole(bench_module):
    """``--methods`` splits at commas outside brackets: ``a_shape=[2600,1]`` reached the config as the string '[2600'
    on a GPU run before this; unbalanced brackets are refused."""
    mod = bench_module("recurrent")
    items = mod.split_methods("doped_kp:a_shape=[2600,1];kp_share=0.5, lmf ,prune:x={\"a\":[1,2]},")
    assert items == ["doped_kp:a_shape=[2600,1];kp_share=0.5", "lmf", 'prune:x={"a":[1,2]}']
    assert mod.parse_method(items[0])[2] == {"a_shape": [2600, 1], "kp_share": 0.5}
    for bad in ("kp:a_shape=[2600,1", "kp:a_shape=2600,1]"):
        with pytest.raises(LmshrinkError, match="bracket"):
            mod.split_methods(bad)


def test_relative_paths_are_resolved_before_workers_start_in_the_repository_root(bench_module, tmp_path, monkeypatch):
    """Workers run with the repository as their directory, so ``--work work`` given elsewhere once sent them looking
    for their spec under the repository (FileNotFoundError in every run); main resolves the paths first."""
    mod = bench_module("recurrent")
    seen = {}
    monkeypatch.setattr(mod, "orchestrate", lambda args: seen.update(vars(args)) or 0)
    monkeypatch.chdir(tmp_path)
    assert mod.main(["--work", "w", "--data", "d", "--baseline", "b", "--out", "r/x.json"]) == 0
    for name, rel in (("work", "w"), ("data", "d"), ("baseline", "b"), ("out", "r/x.json")):
        assert seen[name] == str(tmp_path / rel), name


def test_eval_windows_losses_add_up_to_the_evaluated_perplexity(bench_module):
    """The diagnostic's per-window losses are the evaluation's: their mean is evaluate_ppl's perplexity, fused or
    step by step; resetting the state every window changes it (the carried state matters)."""
    import math

    from lmshrink.train.lm import evaluate_ppl

    mod = bench_module("eval_windows")
    model, _ = compressed("tt", {"ratio": 3})
    ids = torch.randint(0, 40, (700,), generator=torch.Generator().manual_seed(9))
    want = evaluate_ppl(model, ids, batch_size=4, bptt=7)
    for fused in (True, False):
        losses, cells = mod.window_losses(model, ids, 4, 7, "cpu", fused=fused)
        assert losses.shape == (25, 4) and cells.shape == (25, 2)
        assert math.isclose(mod.summarise(losses, cells, 3)["ppl"], want, rel_tol=1e-5)
    reset, _ = mod.window_losses(model, ids, 4, 7, "cpu", reset_every=1)
    assert not math.isclose(math.exp(float(reset.mean())), want, rel_tol=1e-4)


def test_cell_clip_clamps_only_the_carried_cell_state_and_survives_save_and_load(tmp_path):
    """cell_clip bounds the cell state carried between calls (fused and step-by-step paths alike); a model whose
    cells stay inside the bound computes exactly what it computes without it; the setting is saved."""
    from lmshrink.io import load_model_dir, save_model_dir
    from lmshrink.models.lstm_lm import fused_lstm

    model, _ = compressed("tt", {"ratio": 3})
    model.eval()
    ids = torch.randint(0, 40, (6, 3), generator=torch.Generator().manual_seed(10))
    big = [(torch.zeros(3, 24), torch.full((3, 24), 500.0)) for _ in range(2)]
    small = [(torch.zeros(3, 24), torch.full((3, 24), 0.5)) for _ in range(2)]
    with torch.no_grad():
        free_big, _ = model(ids, big)
        free_small, _ = model(ids, small)
        model.cell_clip = 2.0
        clipped_big, _ = model(ids, big)
        as_two, _ = model(ids, [(h, torch.full_like(c, 2.0)) for h, c in big])
        for fused in (True, False):
            with fused_lstm(model, fused):
                assert torch.allclose(model(ids, big)[0], as_two, atol=1e-5)
        assert torch.equal(model(ids, small)[0], free_small)  # inside the bound: unchanged
    assert torch.equal(clipped_big, as_two) and not torch.allclose(clipped_big, free_big, atol=1e-3)
    assert model.arch()["cell_clip"] == 2.0
    save_model_dir(model, tmp_path / "m")
    twin, _ = load_model_dir(tmp_path / "m")
    assert twin.cell_clip == 2.0
    model.cell_clip = None
    assert "cell_clip" not in model.arch()  # off: manifests as before


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "5"])
def test_cell_clip_must_be_a_positive_number(bad):
    with pytest.raises(LmshrinkError, match="cell_clip must be a positive number"):
        LSTMLanguageModel(10, hidden=4, layers=1, cell_clip=bad)


def test_eval_windows_report_is_one_row_per_evaluation(tmp_path, bench_module):
    import json

    mod = bench_module("eval_windows")
    model, _ = compressed("tt", {"ratio": 3})
    ids = torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(11))
    rows = []
    for clip in (None, 2.0):
        model.cell_clip = clip
        losses, cells = mod.window_losses(model, ids, 4, 7, "cpu")
        rows.append({"split": "valid", "batch": 4, "reset_every": 0, "cell_clip": clip, "fused": True,
                     **mod.summarise(losses, cells, 2)})
    (tmp_path / "a.json").write_text(json.dumps({"args": {"tf32": False}, "models": {"runs/x/tt_25x/model": rows}}))
    assert mod.main(["--report", str(tmp_path / "a.json"), "--out", str(tmp_path / "a.md")]) == 0
    table = [line for line in (tmp_path / "a.md").read_text().splitlines() if line.startswith("| `a.json`")]
    assert len(table) == 2 and all("| tt_25x | valid | 4 | 0 |" in line for line in table)
    assert "| 2.0 | off | fused |" in table[1] and f"| {rows[0]['ppl']:.2f} |" in table[0]


def test_evaluation_records_the_largest_carried_cell_state_per_layer(bench_module):
    """evaluate_ppl's cell_max is the per-layer maximum of |c| over the windows (as eval_windows sees it), and asking
    for it does not change the perplexity."""
    from lmshrink.train.lm import evaluate_ppl

    model, _ = compressed("tt", {"ratio": 3})
    ids = torch.randint(0, 40, (700,), generator=torch.Generator().manual_seed(12))
    cells: list = []
    assert evaluate_ppl(model, ids, 4, 7, cell_max=cells) == evaluate_ppl(model, ids, 4, 7)
    _, per_window = bench_module("eval_windows").window_losses(model, ids, 4, 7, "cpu")
    assert len(cells) == 2 and cells == pytest.approx(per_window.max(0).values.tolist(), rel=1e-6)


def test_report_names_a_run_whose_cell_state_ran_away(bench_module):
    mod = bench_module("recurrent")
    base = {"max_abs_cell": {"valid": [23.7, 33.3], "test": [26.4, 35.7]}}
    run = {"label": "tt", "ratio_target": 25.0, "mode": "retrain", "valid_ppl": 281.2, "test_ppl": 150.7,
           "max_abs_cell": {"valid": [3052.0, 3051.7], "test": [9.2, 26.3]}}
    note = mod.runaway_note(run, base)
    assert note.startswith("- tt @25x (retrain): a runaway cell") and "valid 3,052 against the dense model's 33.3" in note
    assert "test" not in note.split("(valid ppl")[0].split("|c|")[1]  # only the split that ran away is named
    assert mod.runaway_note({**run, "max_abs_cell": {"valid": [300.0, 1.0], "test": [9.2]}}, base) is None  # < 10x
    assert mod.runaway_note({k: v for k, v in run.items() if k != "max_abs_cell"}, base) is None  # not recorded
    assert mod.runaway_note(run, {}) is None


def test_eval_windows_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, bench_module):
    mod = bench_module("eval_windows")
    out = tmp_path / "w.json"
    for args, msg in (([str(tmp_path / "none")], "does not exist"),
                      ([str(tmp_path), "--batches", "x"], "take comma lists of numbers"),
                      ([str(tmp_path), "--batches", "0"], "--batches must be positive")):
        assert mod.main(args + ["--data", str(tmp_path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("eval_windows.py: error: ") and msg in err and "\n" not in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_cached_csr_follows_the_values_and_never_holds_a_graph():
    """The packed doped layer and the CSR pruned layer keep their CSR tensor between calls on the CPU (an LSTM calls
    each map once per time step); an in-place change of the values (an optimizer step, load_state_dict) must show in
    the next call, and with gradients recorded through the values nothing is cached."""
    from lmshrink.layers.sparse import SparseLinear

    torch.manual_seed(0)
    holder = nn.Module()
    holder.doped, holder.pruned = nn.Linear(12, 16), nn.Linear(12, 16)
    compress(holder, {"doped": make_config("doped_kronecker", density=0.3, anneal=False),
                      "pruned": make_config("prune", density=0.3)})
    x = torch.randn(3, 12)
    for layer in (holder.doped, holder.pruned):
        layer.eval()
        assert isinstance(layer, (DopedKroneckerLinear, SparseLinear))
        with torch.no_grad():
            y1 = layer(x)
            torch.testing.assert_close(layer(x), y1)  # second call: the cached CSR
            torch.testing.assert_close(y1, x @ layer.dense_weight().T + layer.bias, atol=1e-5, rtol=1e-5)
            layer.values.mul_(2.0)  # in place: the version counter moves
            y2 = layer(x)
        torch.testing.assert_close(y2, x @ layer.dense_weight().detach().T + layer.bias.detach(), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(y1, y2)
        twin = copy.deepcopy(layer)  # with a CSR tensor cached: copies start without caches (a CSR cannot be copied)
        with torch.no_grad():
            torch.testing.assert_close(twin(x), y2)
        with torch.inference_mode():  # inference tensors keep no version counter: the keys must not ask for one
            torch.testing.assert_close(layer(x), y2)
            torch.testing.assert_close(layer(x), y2)
    layer = holder.doped
    layer(x).sum().backward()  # gradients through the packed values: built fresh, not cached
    assert layer.values.grad is not None and layer._csr_cache is None
    layer.values.grad = None
    layer(x).sum().backward()  # a second backward works (no graph kept from the first call)
    assert layer.values.grad is not None
