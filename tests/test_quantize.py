"""Quantization-specific checks: bit packing, error bounds, bit budgets, quantizing retrained factors."""

from __future__ import annotations

import pytest
import torch

import lmshrink.methods  # noqa: F401
from lmshrink.compress import Plan, compress, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.layers.block_low_rank import BlockLowRankEmbedding
from lmshrink.layers.packing import pack_codes, packed_bits, unpack_codes
from lmshrink.layers.quantized import PackedMatrix, QuantizedEmbedding
from lmshrink.methods.quantize import quantize_model_
from lmshrink.models import LSTMLanguageModel


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_roundtrip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (3, 5, 64), generator=g)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, 64 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 64).long(), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("group_size", [None, 16])
def test_quantization_error_is_half_a_step(bits, group_size):
    torch.manual_seed(bits)
    W = torch.randn(20, 70)
    pm = PackedMatrix(20, 70, bits, group_size).set_(W)
    Wq = pm.dequantize()
    g = pm.g
    pad = pm.ngroups * g - 70
    Wp = torch.cat([W, W[:, -1:].expand(-1, pad)], 1).view(20, pm.ngroups, g)
    step = (Wp.amax(-1) - Wp.amin(-1)) / ((1 << bits) - 1)  # (20, G)
    err = (Wq - W).abs()
    bound = torch.repeat_interleave(step, g, 1)[:, :70] / 2 * 1.01 + 2e-3 * W.abs().max()  # fp16 params
    assert bool((err <= bound).all())
    assert pm.stored_bits() == packed_bits(20, 70, bits, group_size) == sum(t.numel() * t.element_size() * 8 for t in pm.state_dict().values())


def test_ratio_picks_the_most_bits_that_fit():
    torch.manual_seed(0)
    m = LSTMLanguageModel(200, hidden=64, layers=1)
    compress(m, Plan({"encoder": make_config("quantize", ratio=5, group_size=64)}))
    assert isinstance(m.encoder, QuantizedEmbedding) and m.encoder.nbits == 5  # 5 + 0.5 bits <= 6.4 < 6 + 0.5
    with pytest.raises(LmshrinkError, match="fewer than 2 bits"):
        compress(LSTMLanguageModel(200, hidden=64, layers=1), Plan({"encoder": make_config("quantize", ratio=20)}))
    for bad in ({"bits": 1}, {"bits": 9}, {"bits": 4, "ratio": 5}, {"rank": 4}, {"bits": 4, "group_size": 10},
                {"ratio": 20, "base": {"method": "prune"}}, {}):
        with pytest.raises(LmshrinkError):
            make_config("quantize", **bad)


def test_quantize_after_retraining_groupreduce_tied():
    torch.manual_seed(0)
    V = 500
    m = LSTMLanguageModel(V, hidden=32, layers=1, tie_weights=True).eval()
    counts = torch.round(5000.0 / torch.arange(1, V + 1)) + 1
    compress(m, Plan({"encoder": make_config("groupreduce", ratio=4, num_blocks=4)}), {"word_counts": counts})
    x = torch.randint(0, V, (6, 2))
    with torch.no_grad():
        before = m(x)[0]
    bits_before = m.encoder.bits()
    done = quantize_model_(m, bits=8, group_size=64)
    assert done == ["encoder"] and isinstance(m.encoder, BlockLowRankEmbedding) and m.encoder.nbits == 8
    assert m.encoder.bits() < bits_before / 2.5
    with torch.no_grad():
        after = m(x)[0]
    assert float((after - before).abs().max()) < 0.02 * float(before.abs().max())
    assert m.decoder.source is m.encoder  # the tied softmax follows the new layer


@pytest.mark.parametrize("base", ["groupreduce", "svd"])
def test_overall_ratio_with_base_is_met_exactly(base):
    torch.manual_seed(0)
    V = 800
    m = LSTMLanguageModel(V, hidden=64, layers=1)
    counts = torch.round(5000.0 / torch.arange(1, V + 1)) + 1
    report = compress(m, Plan({"encoder": make_config("quantize", ratio=26, bits=8, base={"method": base})}),
                      {"word_counts": counts})
    ratio = report[0]["dense_bits"] / report[0]["bits"]
    assert 26 <= ratio < 26 * 1.25, ratio


def test_plan_bits_then_quantize_model_meets_the_ratio():
    torch.manual_seed(0)
    V = 800
    m = LSTMLanguageModel(V, hidden=64, layers=1)
    counts = torch.round(5000.0 / torch.arange(1, V + 1)) + 1
    cfg = make_config("groupreduce", ratio=26, plan_bits=8, group_size=128, num_blocks=4)
    compress(m, Plan({"encoder": cfg}), {"word_counts": counts})
    assert m.encoder.nbits is None  # float factors, trainable
    quantize_model_(m, 8, 128)
    assert 26 <= V * 64 * 32 / m.encoder.bits() < 26 * 1.25
