"""Pruning-specific checks: exact AGP final sparsity, gate-aware equal sparsity, CSR storage, finalize."""

from __future__ import annotations

import pytest
import torch

import lmshrink.methods  # noqa: F401
from lmshrink.compress import Plan, compress, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.layers.sparse import MaskedLinear, SparseEmbedding, SparseLinear, agp_density, sparse_bits
from lmshrink.methods.prune import finalize_pruning_, gate_densities
from lmshrink.models import LSTMLanguageModel
from lmshrink.train import hooks


def model(tie=False, V=300, H=24):
    torch.manual_seed(0)
    return LSTMLanguageModel(V, hidden=H, layers=1, tie_weights=tie).eval()


def test_oneshot_keeps_largest_and_stores_csr():
    m = model()
    W = m.decoder.weight.detach().clone()
    compress(m, Plan({"decoder": make_config("prune", density=0.25)}))
    layer = m.decoder
    assert isinstance(layer, SparseLinear) and layer.nnz == int(0.25 * W.numel())
    kept = layer.dense_weight().detach() != 0
    assert float(W.abs()[kept].min()) >= float(W.abs()[~kept].max())
    assert layer.bits() == sparse_bits(*W.shape, layer.nnz) + 32 * 300 < W.numel() * 32
    assert layer.col_idx.dtype == torch.uint8 and layer.row_nnz.dtype == torch.uint8  # 24 columns


@pytest.mark.parametrize("gate_aware", [True, False])
def test_gate_aware_pruning_prunes_each_gate_equally(gate_aware):
    m = model()
    with torch.no_grad():
        m.rnn.layers[0].ih.weight[:24] *= 10  # the input gate's weights are much larger
    compress(m, Plan({"rnn.layers.0.ih": make_config("prune", density=0.3, gate_aware=gate_aware)}))
    d = gate_densities(m.rnn.layers[0].ih)
    if gate_aware:
        assert len(set(d)) == 1 and d[0] == pytest.approx(0.3, abs=1 / (24 * 24))
    else:
        assert d[0] > 0.9 and d[1] < 0.2  # ranking across gates starves the small ones


@pytest.mark.parametrize("target", ["decoder", "rnn.layers.0.hh"])
def test_agp_reaches_exactly_its_final_sparsity(target):
    m = model()
    compress(m, Plan({target: make_config("prune", density=0.2, schedule="agp", prune_every=3, agp_end=0.8)}))
    layer = m.get_submodule(target)
    assert isinstance(layer, MaskedLinear) and bool(layer.mask.all())
    total, seen = 50, []
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randint(0, 300, (5, 2))
    for step in range(1, total + 1):
        m.train()
        loss = m(x)[0].logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        hooks.after_step(m, step, total)
        seen.append(float(layer.mask.float().mean()))
    assert all(b <= a for a, b in zip(seen, seen[1:])), "masks only grow"
    groups = layer.mask.reshape(layer.groups, -1).sum(1)
    assert groups.tolist() == [layer.final_keep] * layer.groups
    if target.endswith("hh"):
        assert layer.groups == 4  # gate-aware by default on LSTM maps
    assert float((layer.weight.detach()[~layer.mask]).abs().sum()) == 0
    before = layer.dense_weight().detach().clone()
    finalize_pruning_(m)
    new = m.get_submodule(target)
    assert isinstance(new, SparseLinear) and new.nnz == layer.final_keep * layer.groups
    assert torch.equal(new.dense_weight().detach(), before)


def test_agp_schedule_is_cubic():
    assert agp_density(0.0, 1.0, 0.1, 0.0, 1.0) == pytest.approx(1.0)
    assert agp_density(0.5, 1.0, 0.1, 0.0, 1.0) == pytest.approx(1 - 0.9 * (1 - 0.5 ** 3))
    assert agp_density(1.0, 1.0, 0.1, 0.0, 1.0) == pytest.approx(0.1)


def test_tied_agp_finalize_rebinds_softmax():
    m = model(tie=True)
    compress(m, Plan({"encoder": make_config("prune", density=0.3, schedule="agp")}))
    for s in range(1, 11):
        hooks.after_step(m, s, 10)
    finalize_pruning_(m)
    assert isinstance(m.encoder, SparseEmbedding)
    x = torch.randint(0, 300, (4, 2))
    with torch.no_grad():
        logits = m(x)[0]
        h = m.rnn.layers[0](m.encoder(x), m.init_state(2)[0])[0]
        torch.testing.assert_close(logits, h @ m.encoder.dense_weight().t() + m.decoder.bias)


def test_bad_input():
    for bad in ({"density": 1.5}, {"density": 0.5, "ratio": 2}, {"rank": 3}, {"density": 0.5, "schedule": "x"},
                {"density": 0.5, "granularity": "col"}, {"density": 0.5, "prune_every": 0}, {}):
        with pytest.raises(LmshrinkError):
            make_config("prune", **bad)
    m = model()
    with pytest.raises(LmshrinkError, match="not fewer"):
        compress(m, Plan({"decoder": make_config("prune", density=0.8)}))
    with pytest.raises(LmshrinkError, match="largest reachable ratio"):
        compress(m, Plan({"decoder": make_config("prune", ratio=1e5)}))


def test_csr_layers_retrain_as_dense_times_their_fixed_pattern_and_come_back_csr():
    """``training_forms``: inside, every CSR layer is a dense weight times its pattern (same outputs, capturable by
    a CUDA graph, tied softmax still bound); training moves only kept entries; outside, CSR again with the same
    pattern and the trained values."""
    from lmshrink.compress import training_forms
    from lmshrink.layers.sparse import FixedMaskEmbedding, FixedMaskLinear
    from lmshrink.train.graphed import graph_ready

    m = model(tie=True)
    compress(m, Plan({"encoder": make_config("prune", density=0.3),
                      "rnn.layers.0.hh": make_config("prune", density=0.2)}))
    x = torch.randint(0, 300, (6, 2))
    with torch.no_grad():
        want = m(x)[0]
    patterns = {n: m.get_submodule(n).pattern().clone() for n in ("encoder", "rnn.layers.0.hh")}
    assert graph_ready(m) is not None  # CSR: eager only
    with training_forms(m) as swapped:
        assert sorted(swapped) == ["encoder", "rnn.layers.0.hh"]
        assert isinstance(m.encoder, FixedMaskEmbedding) and isinstance(m.rnn.layers[0].hh, FixedMaskLinear)
        assert graph_ready(m) is None
        with torch.no_grad():
            torch.testing.assert_close(m(x)[0], want, atol=1e-5, rtol=1e-5)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        for _ in range(3):
            loss = m(x)[0].logsumexp(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        trained = {n: m.get_submodule(n).dense_weight().detach().clone() for n in patterns}
        with torch.no_grad():
            want_after = m(x)[0]
    assert isinstance(m.encoder, SparseEmbedding) and isinstance(m.rnn.layers[0].hh, SparseLinear)
    for n, p in patterns.items():
        layer = m.get_submodule(n)
        assert torch.equal(layer.pattern(), p), n
        assert torch.equal(layer.dense_weight().detach(), trained[n]), n
        assert not torch.equal(trained[n], torch.zeros_like(trained[n]))
    assert not torch.equal(want, want_after)  # it did train
    with torch.no_grad():  # and the tied softmax projects with the new encoder
        torch.testing.assert_close(m(x)[0], want_after, atol=1e-5, rtol=1e-5)


def test_a_bad_cuda_lookup_setting_is_one_clear_error():
    m = model()
    compress(m, Plan({"encoder": make_config("prune", density=0.3)}))
    m.encoder.cuda_lookup = "fast"
    with pytest.raises(LmshrinkError, match="cuda_lookup must be 'rebuild' or 'gather'"):
        m.encoder(torch.randint(0, 300, (3, 2)))
