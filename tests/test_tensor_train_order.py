"""Tensor-train mode order: the MAC count of ``tt_matvec`` and the "fast"/"ascending" arrangement of split modes.

Sizes are those of LSTM maps (4H x H) at the 25x budget the benchmarks use; the mode choice alone needs no
weights, so the large shapes cost nothing here, and TT-SVD only runs on small ones.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lmshrink.compress import LayerContext, compress, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.io import load_model_dir, save_model_dir
from lmshrink.layers.tensor_train import TTLinear, tt_dense, tt_matvec, tt_matvec_macs, tt_max_ranks, tt_params
from lmshrink.methods.tensor_train import PARAMS_SLACK, fast_modes, mode_orders, split_modes, tt_compress, tt_ranks_for
from lmshrink.models.lstm_lm import LSTMLanguageModel

LSTM_MAPS = ("rnn.layers.*.ih", "rnn.layers.*.hh")


# --------------------------------------------------------------------------- tt_matvec_macs
# (out_modes, in_modes, ranks, rows). FlopCounterMode sees tt_matvec's einsums as aten.bmm (2 flops per
# multiply-add); every step here contracts over r_{k-1} n_k > 1, since a step whose contraction has length 1
# (r_{k-1} = n_k = 1) lowers to an elementwise mul that the counter does not count.
MAC_SHAPES = [
    ([10, 13, 20], [5, 10, 13], [1, 21, 21, 1], 1),  # 2600x650 at 25x, ascending (4.91x dense)
    ([10, 20, 13], [10, 13, 5], [1, 15, 15, 1], 1),  # the same, the cheapest order outright (ranks 15)
    ([8, 4, 3], [2, 4, 3], [1, 3, 3, 1], 5),
    ([5, 5, 13, 8], [13, 5, 5, 2], [1, 34, 34, 16, 1], 7),
    ([2, 4, 5, 5, 13], [13, 5, 5, 2, 1], [1, 26, 40, 40, 13, 1], 1),  # a trailing in-mode of 1
    ([6, 4], [3, 5], [1, 7, 1], 3),
]


@pytest.mark.parametrize("out_modes,in_modes,ranks,rows", MAC_SHAPES)
def test_tt_matvec_macs_equals_the_counted_flops(out_modes, in_modes, ranks, rows):
    g = torch.Generator().manual_seed(0)
    cores = [torch.randn(ranks[k], m, n, ranks[k + 1], generator=g) for k, (m, n) in enumerate(zip(out_modes, in_modes))]
    x = torch.randn(rows, math.prod(in_modes), generator=g)
    with FlopCounterMode(display=False) as counter:
        tt_matvec(cores, out_modes, in_modes, x)
    counts = counter.get_flop_counts()["Global"]
    assert [str(op) for op in counts] == ["aten.bmm"]
    assert counter.get_total_flops() == 2 * tt_matvec_macs(out_modes, in_modes, ranks, rows)
    assert tt_matvec_macs(out_modes, in_modes, ranks, rows) == rows * tt_matvec_macs(out_modes, in_modes, ranks)


# --------------------------------------------------------------------------- order choice on LSTM-map sizes
# (out, in, cores, ratio): PTB medium/large and small-model maps, 2..5 cores (5: the reduced candidate set)
ORDER_SHAPES = [(2600, 650, 3, 25), (2600, 650, 4, 25), (2600, 650, 5, 25), (6000, 1500, 3, 25), (6000, 1500, 4, 25),
                (2600, 1300, 3, 25), (800, 200, 3, 25), (800, 200, 2, 10), (800, 400, 4, 10), (96, 24, 3, 4)]


@pytest.mark.parametrize("out_f,in_f,cores,ratio", ORDER_SHAPES)
def test_fast_order_never_costs_more_than_ascending_and_fits_the_budget(out_f, in_f, cores, ratio):
    budget = out_f * in_f / ratio
    asc_in, asc_out = split_modes(in_f, cores), split_modes(out_f, cores)
    asc_ranks = tt_ranks_for(asc_out, asc_in, None, budget, "t")
    fin, fout = fast_modes(asc_in, asc_out, None, budget, out_f * in_f, "t")
    ranks = tt_ranks_for(fout, fin, None, budget, "t")
    assert math.prod(fin) == in_f and math.prod(fout) == out_f
    assert sorted(fin) == asc_in and sorted(fout) == asc_out  # a rearrangement of the same factors
    assert tt_params(fout, fin, ranks) <= budget
    assert all(r <= c for r, c in zip(ranks, tt_max_ranks(fout, fin)))
    assert tt_matvec_macs(fout, fin, ranks) <= tt_matvec_macs(asc_out, asc_in, asc_ranks)
    # the rule, checked by brute force: no fewer than 97% of ascending's numbers, and the cheapest such order
    floor = (1 - PARAMS_SLACK) * tt_params(asc_out, asc_in, asc_ranks)
    assert tt_params(fout, fin, ranks) >= floor
    sized = [(o, i, tt_ranks_for(o, i, None, budget, "t")) for i, o in mode_orders(asc_in, asc_out)]
    best = min(tt_matvec_macs(o, i, r) for o, i, r in sized if tt_params(o, i, r) >= floor)
    assert tt_matvec_macs(fout, fin, ranks) == best


# the measured cases of the brief: MACs over dense for ascending and fast, to 0.01
@pytest.mark.parametrize("out_f,in_f,asc_ratio,fast_ratio", [(2600, 650, 4.91, 1.94), (6000, 1500, 8.92, 5.98)])
def test_fast_order_cuts_the_macs_of_the_measured_maps(out_f, in_f, asc_ratio, fast_ratio):
    budget = out_f * in_f / 25
    asc_in, asc_out = split_modes(in_f, 3), split_modes(out_f, 3)
    fin, fout = fast_modes(asc_in, asc_out, None, budget, out_f * in_f, "t")
    for (i, o), expect in [((asc_in, asc_out), asc_ratio), ((fin, fout), fast_ratio)]:
        macs = tt_matvec_macs(o, i, tt_ranks_for(o, i, None, budget, "t"))
        assert macs / (out_f * in_f) == pytest.approx(expect, abs=0.005)


def test_mode_orders_deduplicates_and_puts_ascending_first():
    cands = mode_orders([5, 5, 26], [10, 13, 20])
    assert cands[0] == ([5, 5, 26], [10, 13, 20])
    assert len(cands) == 3 * 6 == len({(tuple(i), tuple(o)) for i, o in cands})
    five = mode_orders([1, 2, 5, 5, 13], [2, 4, 5, 5, 13])  # beyond 4 cores: ascending/descending only
    assert five[0] == ([1, 2, 5, 5, 13], [2, 4, 5, 5, 13]) and len(five) == 4


def test_given_ranks_skip_orders_whose_caps_they_exceed():
    # in [2, 3, 4], out [2, 3, 4]: r_1 = 6 fits only where m_1 n_1 >= 6 (and r_2 where m_3 n_3 >= 6)
    asc = ([2, 3, 4], [2, 3, 4])
    fin, fout = fast_modes(*asc, [6, 6], None, 24 * 24, "t")
    assert all(r <= c for r, c in zip([1, 6, 6, 1], tt_max_ranks(fout, fin)))
    assert tt_matvec_macs(fout, fin, [1, 6, 6, 1]) <= tt_matvec_macs(asc[1], asc[0], [1, 6, 6, 1])
    # ranks that no order admits: the ascending order comes back, and tt_ranks_for raises its usual error
    assert fast_modes(*asc, [50, 50], None, 24 * 24, "t") == asc
    with pytest.raises(LmshrinkError, match="exceeds its maximum"):
        tt_ranks_for(asc[1], asc[0], [50, 50], None, "t")


# --------------------------------------------------------------------------- through the method
def linear(out_f, in_f, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f)


@pytest.mark.parametrize("out_f,in_f,cores,ratio", [(96, 24, 3, 4), (800, 200, 3, 25), (120, 60, 4, 4), (96, 48, 2, 6)])
def test_ascending_order_reproduces_the_old_modes(out_f, in_f, cores, ratio):
    layer = tt_compress(linear(out_f, in_f), make_config("tt", ratio=ratio, cores=cores, order="ascending"),
                        LayerContext("m", "linear", num_gates=4))
    assert layer.in_modes == split_modes(in_f, cores) == sorted(layer.in_modes)
    assert layer.out_modes == split_modes(out_f, cores) == sorted(layer.out_modes)
    assert layer.ranks == tt_ranks_for(layer.out_modes, layer.in_modes, None, out_f * in_f / ratio, "t")


@pytest.mark.parametrize("out_f,in_f,cores,opts", [(96, 24, 3, {"ratio": 4}), (800, 200, 3, {"ratio": 25}),
                                                   (120, 60, 4, {"ratio": 4}), (96, 48, 3, {"rank": 3})])
def test_fast_layer_matvec_equals_its_dense_weight(out_f, in_f, cores, opts):
    dense = linear(out_f, in_f)
    layer = tt_compress(dense, make_config("tt", cores=cores, **opts), LayerContext("m", "linear", num_gates=4)).eval()
    assert (layer.out_features, layer.in_features) == (out_f, in_f)
    assert tt_params(layer.out_modes, layer.in_modes, layer.ranks) < out_f * in_f
    if "ratio" in opts:
        assert tt_params(layer.out_modes, layer.in_modes, layer.ranks) <= out_f * in_f / opts["ratio"]
    W = tt_dense(list(layer.cores), layer.out_modes, layer.in_modes)
    x = torch.randn(3, 5, in_f, generator=torch.Generator().manual_seed(1))
    expect = x @ W.T + layer.bias
    torch.testing.assert_close(layer(x), expect, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tt_matvec(list(layer.cores), layer.out_modes, layer.in_modes, x[0, 0]),
                               x[0, 0] @ W.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", ["sideways", "Fast", "", 3])
def test_bad_order_is_refused_with_one_clear_line(bad):
    with pytest.raises(LmshrinkError) as e:
        make_config("tt", ratio=4, order=bad)
    text = str(e.value)
    assert "\n" not in text and "order" in text and "'fast'" in text and "'ascending'" in text and repr(bad) in text


def test_a_model_with_ascending_modes_saves_loads_and_runs(tmp_path):
    # the spec of a TT layer records its modes, so a model compressed before ``order`` existed (ascending)
    # loads as it was, whatever the default order is now
    torch.manual_seed(0)
    model = LSTMLanguageModel(40, hidden=24, layers=2)
    compress(model, {p: make_config("tt", ratio=4, order="ascending") for p in LSTM_MAPS})
    layer = model.rnn.layers[0].ih
    assert isinstance(layer, TTLinear) and layer.in_modes == split_modes(24, 3) and layer.out_modes == split_modes(96, 3)
    model.eval()
    ids = torch.randint(0, 40, (5, 2), generator=torch.Generator().manual_seed(9))
    before, _ = model(ids)
    manifest = save_model_dir(model, tmp_path / "m")
    spec = manifest["compressed_layers"]["rnn.layers.0.ih"]["spec"]
    assert spec["in_modes"] == layer.in_modes and spec["out_modes"] == layer.out_modes
    loaded, _ = load_model_dir(tmp_path / "m")
    twin = loaded.rnn.layers[0].ih
    assert (twin.in_modes, twin.out_modes, twin.ranks) == (layer.in_modes, layer.out_modes, layer.ranks)
    after, _ = loaded.eval()(ids)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
