"""Quantization-specific checks: bit packing, group layouts, error bounds, bit budgets, quantizing retrained factors,
loading models saved before the balanced layout existed."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lmshrink.methods  # noqa: F401
from lmshrink.compress import Plan, compress, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.layers.block_low_rank import BlockLowRankEmbedding, BlockLowRankLinear
from lmshrink.layers.packing import group_layout, pack_codes, packed_bits, unpack_codes
from lmshrink.layers.quantized import (
    PackedMatrix,
    QuantizedEmbedding,
    QuantizedLinear,
    QuantizedLowRankEmbedding,
    QuantizedLowRankLinear,
)
from lmshrink.methods.quantize import bits_for_ratio, quantize_layer, quantize_model_
from lmshrink.models import LSTMLanguageModel


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_roundtrip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (3, 5, 64), generator=g)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, 64 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 64).long(), codes)


# cols, group_size, (g, groups) balanced, (g, groups) padded
LAYOUT_TABLE = [
    (200, 128, (104, 2), (128, 2)),
    (650, 128, (112, 6), (128, 6)),
    (1500, 128, (128, 12), (128, 12)),  # 125 per group, up to 128: no saving
    (70, 128, (72, 1), (72, 1)),
    (8, 128, (8, 1), (8, 1)),
    (200, None, (200, 1), (200, 1)),
    (650, None, (656, 1), (656, 1)),
    (1500, None, (1504, 1), (1504, 1)),
    (70, None, (72, 1), (72, 1)),
    (8, None, (8, 1), (8, 1)),
    (200, 32, (32, 7), (32, 7)),
    (650, 32, (32, 21), (32, 21)),
    (1500, 32, (32, 47), (32, 47)),
    (70, 32, (24, 3), (32, 3)),
    (8, 32, (8, 1), (8, 1)),
]


@pytest.mark.parametrize("cols,group_size,balanced,padded", LAYOUT_TABLE)
def test_group_layout_balanced_and_padded(cols, group_size, balanced, padded):
    assert group_layout(cols, group_size, "balanced") == balanced == group_layout(cols, group_size)  # the default
    assert group_layout(cols, group_size, "padded") == padded


def test_packed_bits_of_both_layouts():
    # per row at 4 bits, group_size 128: two groups of 128 vs of 104 (200 wide), six of 128 vs of 112 (650 wide)
    assert packed_bits(1, 200, 4, 128, "padded") == 2 * (128 * 4 + 32) == 1088
    assert packed_bits(1, 200, 4, 128, "balanced") == 2 * (104 * 4 + 32) == 896
    assert packed_bits(1, 650, 4, 128, "padded") == 6 * (128 * 4 + 32) == 3264
    assert packed_bits(1, 650, 4, 128, "balanced") == 6 * (112 * 4 + 32) == 2880
    assert packed_bits(10000, 200, 4, 128) == 10000 * 896
    for group_size in (None, 8, 32, 128):
        for cols in range(1, 700):
            gb, nb = group_layout(cols, group_size, "balanced")
            gp, np_ = group_layout(cols, group_size, "padded")
            assert nb == np_ and gb <= gp and gb % 8 == 0 and 0 <= nb * gb - cols < 8 * nb  # < 8 codes/group padding
            assert packed_bits(3, cols, 3, group_size, "balanced") <= packed_bits(3, cols, 3, group_size, "padded")
            if cols % 128 == 0 and group_size == 128:
                assert gb == gp


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("cols,group_size", [(70, None), (70, 16), (70, 32), (200, 128)])
@pytest.mark.parametrize("layout", ["balanced", "padded"])
def test_quantization_error_is_half_a_step(bits, cols, group_size, layout):
    torch.manual_seed(bits)
    W = torch.randn(20, cols)
    pm = PackedMatrix(20, cols, bits, group_size, layout=layout).set_(W)
    Wq = pm.dequantize()
    g = pm.g
    assert (g, pm.ngroups) == group_layout(cols, group_size, layout)
    pad = pm.ngroups * g - cols
    Wp = torch.cat([W, W[:, -1:].expand(-1, pad)], 1).view(20, pm.ngroups, g)
    step = (Wp.amax(-1) - Wp.amin(-1)) / ((1 << bits) - 1)  # (20, G)
    err = (Wq - W).abs()
    bound = torch.repeat_interleave(step, g, 1)[:, :cols] / 2 * 1.01 + 2e-3 * W.abs().max()  # fp16 params
    assert bool((err <= bound).all())
    state_bits = sum(t.numel() * t.element_size() * 8 for t in pm.state_dict().values())
    assert pm.stored_bits() == packed_bits(20, cols, bits, group_size, layout) == state_bits
    idx = torch.tensor([3, 0, 19, 3])
    assert torch.equal(pm.rows_dequantize(idx), Wq[idx])


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


def test_ratio_on_a_200_wide_embedding_gets_4_bits_only_in_the_balanced_layout():
    # ratio 6: 4 bits store 2 x (104 x 4 + 32) = 896 bits per 200-wide row balanced (7.1x) but 1,088 padded (5.9x),
    # 5 bits 1,104 balanced (5.8x): the balanced layout gets 4 bits where the padded one had to drop to 3
    torch.manual_seed(0)
    V = 300
    m = LSTMLanguageModel(V, hidden=200, layers=1)
    report = compress(m, Plan({"encoder": make_config("quantize", ratio=6)}))
    assert isinstance(m.encoder, QuantizedEmbedding) and m.encoder.nbits == 4 and m.encoder.layout == "balanced"
    assert m.encoder.bits() == report[0]["bits"] == V * 896
    assert report[0]["dense_bits"] / report[0]["bits"] == pytest.approx(6400 / 896)
    assert bits_for_ratio(V, 200, 6, 128, "x", "padded") == 3 and bits_for_ratio(V, 200, 6, 128, "x") == 4
    assert m.encoder.spec()["layout"] == "balanced"


@pytest.mark.parametrize("kind", ["dense", "low_rank"])
def test_models_saved_before_layouts_load_padded_with_the_same_outputs(kind, reload_as_old_model, tmp_path):
    """A model quantized in the old (padded) layout, saved without ``layout`` in its manifest as older lmshrink
    did, loads padded with exactly its outputs (load_model_dir and ``lmshrink info``); the same float model
    quantized now is balanced, smaller, and keeps its layout through a save and load."""
    from lmshrink.io import load_model_dir, save_model_dir

    torch.manual_seed(0)
    V = 300
    float_model = LSTMLanguageModel(V, hidden=200, layers=1).eval()  # 200 wide: the two layouts differ
    if kind == "low_rank":
        compress(float_model, Plan({"encoder": make_config("svd", rank=16), "decoder": make_config("svd", rank=16)}))
    types = {"dense": (QuantizedEmbedding, QuantizedLinear),
             "low_rank": (QuantizedLowRankEmbedding, QuantizedLowRankLinear)}[kind]

    def quantized(layout):
        m = copy.deepcopy(float_model)
        if kind == "dense":
            m.encoder = quantize_layer(m.encoder, 4, 128, layout=layout)
            m.decoder = quantize_layer(m.decoder, 4, 128, layout=layout)
        else:
            assert quantize_model_(m, 4, 128, layout=layout) == ["encoder", "decoder"]
        assert (type(m.encoder), type(m.decoder)) == types
        return m.eval()

    ids = torch.randint(0, V, (7, 3))
    old = quantized("padded")
    loaded = reload_as_old_model(old, ids)
    assert loaded.encoder.layout == loaded.decoder.layout == "padded"
    assert loaded.encoder.spec() == {**old.encoder.spec(), "layout": "padded"}

    new = quantized("balanced")
    assert new.encoder.bits() < old.encoder.bits() and new.decoder.bits() < old.decoder.bits()
    save_model_dir(new, tmp_path / "new")
    again, manifest = load_model_dir(tmp_path / "new")
    assert {e["spec"]["layout"] for e in manifest["compressed_layers"].values()} == {"balanced"}
    assert again.encoder.layout == again.decoder.layout == "balanced"
    with torch.no_grad():
        assert torch.equal(again(ids)[0], new(ids)[0])


def test_bad_layout_is_one_clear_error(tmp_path, capsys):
    from lmshrink.cli import main
    from lmshrink.io import MANIFEST, load_model_dir, save_model_dir

    msg = "layout must be one of padded, balanced, got 'tight'"
    makers = [
        lambda: group_layout(200, 128, "tight"),
        lambda: packed_bits(2, 200, 4, 128, "tight"),
        lambda: PackedMatrix(2, 200, 4, 128, layout="tight"),
        lambda: QuantizedLinear(200, 30, 4, 128, layout="tight"),
        lambda: QuantizedEmbedding(30, 200, 4, 128, layout="tight"),
        lambda: QuantizedLowRankLinear(200, 30, 4, 4, 128, layout="tight"),
        lambda: QuantizedLowRankEmbedding(30, 200, 4, 4, 128, layout="tight"),
        lambda: BlockLowRankEmbedding(30, 200, [10, 20], [2, 3], bits=4, layout="tight"),
        lambda: BlockLowRankLinear(30, 200, [10, 20], [2, 3], layout="tight"),  # float: checked all the same
        lambda: quantize_layer(torch.nn.Linear(200, 30), 4, 128, layout="tight"),
        lambda: bits_for_ratio(30, 200, 6, 128, "x", layout="tight"),
    ]
    for make in makers:
        with pytest.raises(LmshrinkError, match=msg):
            make()
    m = LSTMLanguageModel(30, hidden=16, layers=1)
    m.encoder = quantize_layer(m.encoder, 4, 128)
    save_model_dir(m, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["compressed_layers"]["encoder"]["spec"]["layout"] = "tight"
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LmshrinkError, match=msg):
        load_model_dir(tmp_path / "m")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1

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


# --------------------------------------------------------------------------- torch's int4 CPU kernel (inference)
@pytest.mark.parametrize("rows,cols,group_size", [(48, 256, 128), (37, 200, 128), (16, 64, 32), (20, 300, None),
                                                   (33, 1000, None)])
def test_int4_kernel_matches_the_float_path_to_bfloat16_rounding(rows, cols, group_size, monkeypatch):
    """4-bit matrices on CPU go through torch's int4 kernel: any row count (padded to its tile of 16), any group width
    (ours padded to the kernel's 32-256), zero inputs over the padding; bfloat16 activations, so within 1% of the
    float path, and exactly the float path when the kernel is off."""
    from lmshrink.layers import quantized as Q

    g = torch.Generator().manual_seed(rows + cols)
    m = Q.PackedMatrix(rows, cols, 4, group_size).set_(0.1 * torch.randn(rows, cols, generator=g))
    x = torch.randn(3, 5, cols, generator=g)
    with torch.no_grad():
        monkeypatch.setattr(Q, "INT4_CPU_KERNEL", False)
        slow = m.matmul_t(x)
        assert torch.allclose(slow, x @ m.dequantize().t(), atol=1e-5)
        monkeypatch.setattr(Q, "INT4_CPU_KERNEL", True)
        assert m.int4_kernel_ready()
        fast = m.matmul_t(x)
        exact = m.matmul_t(x.double())  # float64 in: the float path, float64 precision
    assert fast.shape == slow.shape == (3, 5, rows) and fast.dtype == torch.float32
    assert float((fast - slow).norm() / slow.norm()) < 0.01
    assert exact.dtype == torch.float64 and torch.allclose(exact, x.double() @ m.dequantize(torch.float64).t(), atol=1e-9)
    assert not any("int4" in k for k in m.state_dict())  # a runtime operand, never saved


def test_int4_kernel_operands_follow_the_codes_and_scales(monkeypatch):
    from lmshrink.layers import quantized as Q

    monkeypatch.setattr(Q, "INT4_CPU_KERNEL", True)
    g = torch.Generator().manual_seed(2)
    m = Q.PackedMatrix(32, 128, 4, 64).set_(torch.randn(32, 128, generator=g))
    x = torch.randn(4, 128, generator=g)
    with torch.no_grad():
        before = m.matmul_t(x)
        m.set_(-torch.randn(32, 128, generator=g))  # new codes and scales: the cached operands must not survive
        after = m.matmul_t(x)
        assert float((after - x @ m.dequantize().t()).norm() / after.norm()) < 0.01
        assert not torch.allclose(before, after, atol=1e-2)
        m.qparams.mul_(2)  # scales alone (as retraining them would)
        assert float((m.matmul_t(x) - 2 * after).norm() / after.norm()) < 0.02


def test_quantized_linear_steps_through_the_int4_kernel_at_inference_only(monkeypatch):
    """An LSTM's hh map: per step through the kernel at inference (no float W per sequence), the float path while
    its scales train."""
    from lmshrink.layers import quantized as Q

    monkeypatch.setattr(Q, "INT4_CPU_KERNEL", True)
    layer = Q.QuantizedLinear(64, 96, bits=4, group_size=32)
    layer.weight_q.set_(torch.randn(96, 64, generator=torch.Generator().manual_seed(3)))
    x = torch.randn(5, 64)
    with torch.no_grad():
        step = layer.step_fn()
        assert torch.equal(step(x), layer(x))
    step = layer.step_fn()  # grad on, trainable scales: float W once per sequence, differentiable
    y = step(x)
    assert y.requires_grad and torch.allclose(y, x @ layer.dense_weight().t() + layer.bias, atol=1e-4)


def test_int4_kernel_path_works_on_tensors_made_in_inference_mode(monkeypatch):
    """Inference tensors keep no version counter: a matrix built, used and re-set inside inference mode still
    gets operands that follow its codes (set_ drops them)."""
    from lmshrink.layers import quantized as Q

    monkeypatch.setattr(Q, "INT4_CPU_KERNEL", True)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 64, generator=g)
    with torch.inference_mode():
        m = Q.PackedMatrix(32, 64, 4, 32).set_(torch.randn(32, 64, generator=g))
        first = m.matmul_t(x)
        assert float((first - x @ m.dequantize().t()).norm() / first.norm()) < 0.01
        m.set_(torch.randn(32, 64, generator=g))
        second = m.matmul_t(x)
        assert float((second - x @ m.dequantize().t()).norm() / second.norm()) < 0.01
        twin = Q.PackedMatrix(32, 64, 4, 32)
        twin.matmul_t(x)  # operands of its empty codes, which loading must drop
        twin.load_state_dict(m.state_dict())
        assert torch.equal(twin.matmul_t(x), second)
