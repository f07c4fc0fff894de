"""GroupReduce-specific checks: exact recovery, monotone refinement, rank rules, budgets, fast paths."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import lmshrink.methods  # noqa: F401
from lmshrink.compress import LayerContext, get_method, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.methods.groupreduce import groupreduce_fit, layer_bits, rank_scores, split_blocks


def zipf(V: int) -> torch.Tensor:
    return torch.round(5000.0 / torch.arange(1, V + 1)) + 1


def apply(W: torch.Tensor, counts: torch.Tensor, flavour: str = "embedding", **opts):
    m = torch.nn.Embedding(*W.shape) if flavour == "embedding" else torch.nn.Linear(W.shape[1], W.shape[0])
    m.weight.data.copy_(W)
    return get_method("groupreduce").apply(m, make_config("groupreduce", **opts), LayerContext("x", flavour, counts))


def block_low_rank(groups: list[torch.Tensor], D: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    V = sum(len(x) for x in groups)
    W = torch.zeros(V, D, dtype=torch.float64)
    for ids in groups:
        W[ids] = torch.randn(len(ids), rank, generator=g, dtype=torch.float64) @ torch.randn(rank, D, generator=g, dtype=torch.float64)
    return W


def test_exact_recovery_on_block_low_rank_matrix():
    V, D, r = 400, 24, 3
    W = block_low_rank([torch.arange(t * 100, (t + 1) * 100) for t in range(4)], D, r).float()
    layer = apply(W, zipf(V), rank=r, num_blocks=4, rank_rule="uniform")
    assert layer.ranks == [r] * 4 and layer.block_sizes == [100] * 4
    err = float((layer.dense_weight() - W).norm() / W.norm())
    assert err < 1e-5, err


def test_refinement_moves_misplaced_words_back_and_recovers_exactly():
    V, D, r = 400, 24, 3
    true = [torch.arange(t * 100, (t + 1) * 100) for t in range(4)]
    true[0], true[1] = torch.cat([true[0][:95], true[1][:5]]), torch.cat([true[0][95:], true[1][5:]])  # 5 words swapped
    W = block_low_rank(true, D, r)
    cfg = dict(rank=r, num_blocks=4, rank_rule="uniform")
    no_refine = groupreduce_fit(W, zipf(V), make_config("groupreduce", **cfg, refine_iters=0), None)
    refined = groupreduce_fit(W, zipf(V), make_config("groupreduce", **cfg, refine_iters=5), None)
    f = zipf(V).double() / zipf(V).sum()
    energy = float((f * (W ** 2).sum(1)).sum())  # the weighted error of the all-zero approximation
    assert no_refine.history[-1] > 1e-4 * energy  # without refinement the misplaced words cost
    assert refined.history[-1] < 1e-20 * energy + 1e-12 * no_refine.history[-1]
    got = sorted(sorted(b.tolist()) for b in refined.blocks)
    assert got == sorted(sorted(t.tolist()) for t in true)


@pytest.mark.parametrize("weighting", ["frequency", "sqrt_frequency", "none"])
def test_refinement_never_increases_weighted_error(weighting):
    torch.manual_seed(3)
    V, D = 600, 40
    perm = torch.randperm(V)  # true groups unrelated to frequency: refinement has work to do
    W = block_low_rank([perm[t * 150:(t + 1) * 150] for t in range(4)], D, 4) + 0.3 * torch.randn(V, D, dtype=torch.float64)
    fit = groupreduce_fit(W, zipf(V), make_config("groupreduce", ratio=3, num_blocks=4, rank_rule="uniform",
                                                  refine_iters=8, weighting=weighting), V * D * 32 / 3)
    h = fit.history
    assert len(h) >= 2 and sum(fit.moves) > 0, "expected the refinement to move some words"
    assert all(b <= a * (1 + 1e-10) for a, b in zip(h, h[1:])), h
    assert h[-1] < h[0]


def test_refinement_on_random_weights_is_monotone_and_within_budget():
    torch.manual_seed(5)
    V, D = 600, 40
    budget = V * D * 32 / 4
    fit = groupreduce_fit(torch.randn(V, D, dtype=torch.float64), zipf(V),
                          make_config("groupreduce", ratio=4, num_blocks=6, refine_iters=5), budget)
    assert all(b <= a * (1 + 1e-10) for a, b in zip(fit.history, fit.history[1:]))
    assert layer_bits([len(b) for b in fit.blocks], fit.ranks, D, None, None) <= budget


@pytest.mark.parametrize("rule", ["frequency", "sqrt_frequency", "log_frequency", "uniform"])
@pytest.mark.parametrize("ratio", [3, 8])
def test_budget_met_and_ranks_follow_frequency(rule, ratio):
    torch.manual_seed(0)
    V, D = 800, 48
    layer = apply(torch.randn(V, D), zipf(V), ratio=ratio, num_blocks=5, rank_rule=rule)
    assert V * D * 32 / layer.bits() >= ratio
    assert layer.bits() == layer_bits(layer.block_sizes, layer.ranks, D, None, None)
    assert all(a >= b for a, b in zip(layer.ranks, layer.ranks[1:])), layer.ranks  # frequent blocks never get less
    if rule == "uniform":
        assert max(layer.ranks) - min(layer.ranks) <= 1


@pytest.mark.parametrize("multiple", [4, 8])
@pytest.mark.parametrize("bits", [None, 8])
def test_rank_multiple_aligns_every_block_and_keeps_the_budget(multiple, bits):
    """rank_multiple m: every rank a multiple of m, so U_t's offset and leading dimension and block t's columns
    of Z = h V^T are too (the GPU GEMMs' 16-byte alignment); still within budget and frequent blocks first."""
    torch.manual_seed(0)
    V, D = 800, 48
    layer = apply(torch.randn(V, D), zipf(V), ratio=4, num_blocks=5, rank_rule="sqrt_frequency",
                  rank_multiple=multiple, bits=bits)
    assert V * D * 32 / layer.bits() >= 4
    assert all(r % multiple == 0 for r in layer.ranks), layer.ranks
    assert all(o % multiple == 0 for o in layer._u_off + layer._r_off)
    assert all(a >= b for a, b in zip(layer.ranks, layer.ranks[1:])), layer.ranks
    free = apply(torch.randn(V, D), zipf(V), ratio=4, num_blocks=5, rank_rule="sqrt_frequency", bits=bits)
    assert any(r % multiple for r in free.ranks), free.ranks  # the default (1) does not round: the test means something
    assert abs(sum(layer.ranks) - sum(free.ranks)) <= multiple * 5  # rounding costs at most m per block
    with pytest.raises(LmshrinkError, match="rank_multiple"):
        apply(torch.randn(V, D), zipf(V), ratio=4, num_blocks=5, rank_multiple=0)
    with pytest.raises(LmshrinkError, match=r"rank 8 \(rank_multiple\)"):  # the floor the budget cannot reach
        apply(torch.randn(V, D), zipf(V), ratio=40, num_blocks=5, rank_multiple=8)


def test_rank_scores_and_splits():
    f = torch.tensor([100.0, 10.0, 1.0])
    assert rank_scores(f, "frequency") == pytest.approx([100, 10, 1])
    assert rank_scores(f, "sqrt_frequency") == pytest.approx([10, 10 ** 0.5, 1])
    assert rank_scores(f, "uniform") == [1, 1, 1]
    counts = zipf(100)
    eq = split_blocks(counts, 4, "equal_size")
    assert [len(b) for b in eq] == [25] * 4 and eq[0].tolist() == list(range(25))
    mass = split_blocks(counts, 4, "equal_mass")
    assert sum(len(b) for b in mass) == 100 and len(mass[0]) < len(mass[-1])


@pytest.mark.parametrize("flavour", ["embedding", "linear"])
@pytest.mark.parametrize("bits", [None, 8, 4])
def test_fast_paths_equal_dense_weight(flavour, bits):
    torch.manual_seed(1)
    V, D = 300, 40
    layer = apply(torch.randn(V, D), zipf(V), flavour, ratio=4, num_blocks=4, bits=bits)
    W = layer.dense_weight().detach()
    h = torch.randn(2, 5, D)
    if flavour == "linear":
        with torch.no_grad():
            layer.bias.copy_(torch.randn(V))  # a bias in vocabulary order must land on its own word's logit
    # with autograd the blocks are concatenated; without it each block writes into one buffer (out=)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            if flavour == "embedding":
                ids = torch.randint(0, V, (4, 3))
                torch.testing.assert_close(layer(ids), W[ids])
                torch.testing.assert_close(layer.project(h), h @ W.t(), atol=1e-4, rtol=1e-4)
            else:
                torch.testing.assert_close(layer(h), h @ W.t() + layer.bias, atol=1e-4, rtol=1e-4)


def test_block_softmax_gradients_equal_dense_ones():
    """Retraining goes through the autograd path: its gradients of the factors and the bias equal those of
    the same weight written densely (W = rebuilt from U, V, so d loss/d U follows by the chain rule)."""
    torch.manual_seed(4)
    V, D = 200, 24
    layer = apply(torch.randn(V, D), zipf(V), "linear", ratio=3, num_blocks=3)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(V))
    h, target = torch.randn(7, D), torch.randint(0, V, (7,))
    torch.nn.functional.cross_entropy(layer(h), target).backward()
    fast = [p.grad.clone() for p in (layer.U, layer.V, layer.bias)]
    layer.zero_grad()
    torch.nn.functional.cross_entropy(h @ layer.dense_weight().t() + layer.bias, target).backward()
    for a, b in zip(fast, (layer.U.grad, layer.V.grad, layer.bias.grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # only U trained (V and the bias frozen, the input a constant): still the autograd path, never an out= write
    layer.zero_grad()
    layer.V.requires_grad_(False)
    layer.bias.requires_grad_(False)
    torch.nn.functional.cross_entropy(layer(h), target).backward()
    torch.testing.assert_close(layer.U.grad, fast[0], atol=1e-5, rtol=1e-4)


def test_quantized_factors_close_to_float():
    torch.manual_seed(2)
    V, D = 300, 40
    W = torch.randn(V, D)
    f = apply(W, zipf(V), ratio=4, num_blocks=4)
    q = apply(W, zipf(V), ratio=4 * 32 / 8.25, num_blocks=4, bits=8)
    assert q.bits() < f.bits() / 3
    err_f = float((f.dense_weight() - W).norm() / W.norm())
    err_q = float((q.dense_weight() - W).norm() / W.norm())
    assert err_q < err_f + 0.03, (err_f, err_q)


def test_frequent_words_reconstructed_best():
    torch.manual_seed(4)
    V, D = 1000, 48
    W = torch.randn(V, D)
    layer = apply(W, zipf(V), ratio=4, num_blocks=5)
    err = ((layer.dense_weight() - W) ** 2).sum(1) / (W ** 2).sum(1)
    assert float(err[:100].mean()) < 0.5 * float(err[-500:].mean())


def test_bad_input():
    W = torch.randn(200, 16)
    with pytest.raises(LmshrinkError, match="largest reachable ratio"):
        apply(W, zipf(200), ratio=500, num_blocks=4)
    with pytest.raises(LmshrinkError, match="rank"):
        apply(W, zipf(200), rank=17, num_blocks=4)
    with pytest.raises(LmshrinkError, match="use rank <= 13"):
        apply(W, zipf(200), rank=15, num_blocks=2, rank_rule="uniform")  # 100 x 16 blocks: rank 14+ is not smaller
    with pytest.raises(LmshrinkError, match="frequency vector"):
        apply(W, zipf(199), ratio=4)
    for bad in ({"rank_rule": "cubic"}, {"weighting": "x"}, {"split": "x"}, {"bits": 1}, {"num_blocks": 0},
                {"group_size": 12}, {"refine_iters": -1}):
        with pytest.raises(LmshrinkError):
            make_config("groupreduce", ratio=4, **bad)
    with pytest.raises(LmshrinkError):
        make_config("groupreduce")


def test_sweep_script_picks_on_validation_and_writes_its_table(tmp_path, bench_module):
    # benchmarks/groupreduce_sweep.py on a made-up corpus and an untrained model: every row present, finite
    from lmshrink.data import load_corpus
    from lmshrink.io import save_model_dir
    from lmshrink.models import LSTMLanguageModel

    words = [f"w{i}" for i in range(60)]
    text = "".join(" " + " ".join(words[(i * 7 + j) % 60] for j in range(1 + i % 9)) + " \n" for i in range(400))
    root = tmp_path / "data" / "ptb"
    root.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (root / f"ptb.{split}.txt").write_text(text)
    corpus = load_corpus("ptb", tmp_path / "data", verify=False)
    torch.manual_seed(0)
    model = LSTMLanguageModel(len(corpus.vocab), hidden=16, layers=1, init_scale=0.1)
    save_model_dir(model, tmp_path / "m", vocab=corpus.vocab)
    mod = bench_module("groupreduce_sweep")
    out = tmp_path / "sweep.json"
    assert mod.main(["--baseline", str(tmp_path / "m"), "--data", str(tmp_path / "data"), "--no-verify", "--ratios", "3",
                     "--blocks", "2,4", "--rules", "frequency", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["split"] == "valid" and not res["retrained"]
    assert [r["label"] for r in res["rows"]] == ["prune @3x", "svd @3x", "groupreduce @3x blocks=2 rule=frequency",
                                                 "groupreduce @3x blocks=4 rule=frequency"]
    assert all(math.isfinite(r["valid_ppl"]) for r in res["rows"])
    assert out.with_suffix(".md").read_text().count("| groupreduce") == 2


def test_layer_runs_with_buffers_made_under_inference_mode():
    """On the GPU, a model moved to CUDA inside inference_mode gets inference-tensor buffers, which keep no
    version counter: the index cache must still work (vocab.py's speed pass crashed on it, 2026-11-23)."""
    torch.manual_seed(0)
    V, D = 200, 16
    layer = apply(torch.randn(V, D), zipf(V), "embedding", ratio=4, num_blocks=3)
    ids = torch.randint(0, V, (5, 2))
    want = layer(ids).detach()
    with torch.inference_mode():
        layer.word_pos = layer.word_pos.clone()  # what .to(device) does to a buffer in inference mode
        torch.testing.assert_close(layer(ids), want)
        torch.testing.assert_close(layer.project(torch.ones(2, D)), torch.ones(2, D) @ layer.dense_weight().t())


def test_speed_measurement_leaves_the_model_trainable():
    """lm_tokens_per_second moves the model before entering inference mode: parameters stay ordinary tensors."""
    from lmshrink.measure import lm_tokens_per_second
    from lmshrink.models.lstm_lm import LSTMLanguageModel

    model = LSTMLanguageModel(50, 8, 1)
    seen = {}
    real_to = torch.nn.Module.to

    def to(self, *a, **k):  # record whether .to ran in inference mode (on the CPU it is a no-op either way)
        seen.setdefault("inference", torch.is_inference_mode_enabled())
        return real_to(self, *a, **k)

    torch.nn.Module.to = to
    try:
        lm_tokens_per_second(model, 50, repeats=1, warmup=0)
    finally:
        torch.nn.Module.to = real_to
    assert seen == {"inference": False}


def test_plan_block_groups():
    from lmshrink.layers.block_low_rank import plan_block_groups

    sizes, ranks = [50, 40, 30, 20, 10], [9, 7, 5, 3, 1]
    assert plan_block_groups(sizes, ranks, 1) == [[0, 1, 2, 3, 4]]
    assert plan_block_groups(sizes, ranks, 5) == plan_block_groups(sizes, ranks, 9) == [[t] for t in range(5)]
    assert plan_block_groups([10] * 4, [100, 10, 10, 10], 2) == [[0], [1, 2, 3]]
    assert plan_block_groups([10] * 4, [100, 10, 10, 10], 3) == [[0], [1, 2, 3]]  # a third launch saves nothing
    assert plan_block_groups([10] * 4, [10, 10, 100, 10], 2) == [[2], [0, 1, 3]]  # sorted by rank, not by position
    # brute force over every contiguous split of the rank order: the DP's cost is the minimum
    sizes, ranks = [5, 90, 40, 70, 10, 60], [30, 2, 25, 4, 9, 12]
    order = sorted(range(6), key=lambda t: -ranks[t])

    def cost(groups):
        return sum(len(g) * max(sizes[t] for t in g) * max(ranks[t] for t in g) for g in groups)

    for G in (2, 3):
        got = plan_block_groups(sizes, ranks, G)
        assert len(got) <= G and sorted(t for g in got for t in g) == list(range(6))
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, 6))])
                   for cuts in itertools.combinations(range(1, 6), G - 1))
        assert cost(got) == best
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(LmshrinkError, match="group_gemms"):
            plan_block_groups(sizes, ranks, bad)


def handmade_layer(bias: bool, bits: int | None = None):
    from lmshrink.layers.block_low_rank import BlockLowRankLinear

    g = torch.Generator().manual_seed(7)
    sizes, ranks, V, D = [30, 50, 20, 40, 25], [5, 12, 3, 7, 7], 165, 16  # unequal sizes and ranks
    layer = BlockLowRankLinear(V, D, sizes, ranks, bits=bits, bias=bias)
    layer.set_factors(torch.randperm(V, generator=g), [torch.randn(n, r, generator=g) for n, r in zip(sizes, ranks)],
                      [torch.randn(r, D, generator=g) for r in ranks])
    if bias:
        with torch.no_grad():
            layer.bias.copy_(torch.randn(V, generator=g))
    return layer


def softmax_case(bias: bool, bits: int | None):
    """(handmade layer, h (3, 4, D), the dense reference ``h W^T + b``, its largest magnitude for tolerances)."""
    layer = handmade_layer(bias, bits)
    h = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(1))
    want = h @ layer.dense_weight().t() + (layer.bias if bias else 0)
    return layer, h, want, float(want.abs().max())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bits", [None, 8])
def test_grouped_softmax_equals_per_block_and_dense(bias, bits):
    """Every grouping gives the per-block logits and ``h W^T + b`` (the zero padding of U and of Z must not leak)."""
    layer, h, want, scale = softmax_case(bias, bits)
    with torch.no_grad():
        per_block = layer(h)
        for G in (1, 2, 3, 5, 8):
            layer.group_gemms = G
            got = layer(h)
            assert got.shape == (3, 4, 165)
            torch.testing.assert_close(got, per_block, atol=1e-5 * scale, rtol=0)
            torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=0)
        with torch.inference_mode():  # and with inference tensors (no version counters)
            torch.testing.assert_close(layer(h), want, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("knob,value", [("group_gemms", 2), ("blockdiag", "on")])
def test_inference_caches_follow_the_factors(knob, value):
    """The grouped and the block-diagonal paths cache operands derived from U, V, the bias and ``word_pos``: every
    change to those must show up in the next output."""
    layer = handmade_layer(True)
    setattr(layer, knob, value)
    h = torch.randn(5, 16)
    with torch.no_grad():
        layer(h)
        layer.U.mul_(2)  # in place: bumps U's version
        torch.testing.assert_close(layer(h), h @ layer.dense_weight().t() + layer.bias, atol=1e-4, rtol=1e-5)
        layer.bias.add_(1)
        torch.testing.assert_close(layer(h), h @ layer.dense_weight().t() + layer.bias, atol=1e-4, rtol=1e-5)
        layer.V.add_(0.5)
        torch.testing.assert_close(layer(h), h @ layer.dense_weight().t() + layer.bias, atol=1e-4, rtol=1e-5)
        before = layer(h)
        sizes, ranks = layer.block_sizes, layer.ranks
        g = torch.Generator().manual_seed(9)
        layer.set_factors(torch.randperm(165, generator=g), [torch.randn(n, r, generator=g) for n, r in zip(sizes, ranks)],
                          [torch.randn(r, 16, generator=g) for r in ranks])
        got = layer(h)
        torch.testing.assert_close(got, h @ layer.dense_weight().t() + layer.bias, atol=1e-4, rtol=1e-5)
        assert not torch.allclose(got, before, atol=1e-2)
    q = handmade_layer(False, bits=8)  # packed: requantizing must show up in the output (no stale cache)
    setattr(q, knob, value)
    with torch.no_grad():
        q(h)
        U, _ = q.factors()
        q.U.set_(3 * U.view(1, -1))
        torch.testing.assert_close(q(h), h @ q.dense_weight().t(), atol=1e-3, rtol=1e-4)


def test_grouped_setting_ignored_under_autograd():
    layer = handmade_layer(True)
    layer.group_gemms = 2
    h, target = torch.randn(6, 16), torch.randint(0, 165, (6,))
    torch.nn.functional.cross_entropy(layer(h), target).backward()
    grads = [p.grad.clone() for p in (layer.U, layer.V, layer.bias)]
    layer.zero_grad()
    layer.group_gemms = None
    torch.nn.functional.cross_entropy(layer(h), target).backward()
    for a, p in zip(grads, (layer.U, layer.V, layer.bias)):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, p.grad)


def test_set_group_gemms_on_a_compressed_model():
    from lmshrink.compress import Plan, compress
    from lmshrink.layers.block_low_rank import _BlockLowRank, set_group_gemms
    from lmshrink.models import LSTMLanguageModel

    torch.manual_seed(0)
    V = 120
    model = LSTMLanguageModel(V, hidden=16, layers=1).eval()
    cfg = make_config("groupreduce", ratio=3, num_blocks=3)
    compress(model, Plan({"encoder": cfg, "decoder": cfg}, "untie"), {"word_counts": zipf(V)})
    ids = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        want = model(ids)[0] if isinstance(model(ids), tuple) else model(ids)
        assert set_group_gemms(model, 2) == 2
        assert all(m.group_gemms == 2 for m in model.modules() if isinstance(m, _BlockLowRank))
        got = model(ids)[0] if isinstance(model(ids), tuple) else model(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert "group_gemms" not in json.dumps([m.spec() for m in model.modules() if isinstance(m, _BlockLowRank)])
    assert set_group_gemms(model, None) == 2
    with pytest.raises(LmshrinkError):
        set_group_gemms(model, 0)
    assert set_group_gemms(torch.nn.Linear(2, 2), 3) == 0


@pytest.mark.parametrize("bits", [None, 4])
def test_bag_lookup_equals_scatter_lookup_and_the_dense_rows_with_their_gradients(bits):
    """``lookup = "bag"`` (one weighted embedding_bag over each word's block of V) gives the rebuilt dense rows, as
    the scatter path does, and the same gradients of U and V; ``set_lookup`` sets it on a model; a bad mode is one
    clear error."""
    from lmshrink.layers.block_low_rank import set_lookup

    torch.manual_seed(5)
    V, D = 300, 40
    layer = apply(torch.randn(V, D), zipf(V), "embedding", ratio=4, num_blocks=4, bits=bits)
    W = layer.dense_weight().detach()
    ids = torch.randint(0, V, (6, 5))
    ids[0, :3] = torch.tensor([0, V - 1, 0])  # the most and least frequent words, one of them twice
    outs, grads = {}, {}
    for mode in ("scatter", "bag"):
        assert set_lookup(torch.nn.Sequential(layer), mode) == 1 and layer.lookup == mode
        out = layer(ids)
        torch.testing.assert_close(out.detach(), W[ids], atol=1e-5, rtol=1e-5)
        outs[mode] = out.detach()
        if bits is None:
            layer.zero_grad()
            (out * torch.linspace(-1, 1, D)).pow(2).sum().backward()
            grads[mode] = (layer.U.grad.clone(), layer.V.grad.clone())
    torch.testing.assert_close(outs["bag"], outs["scatter"], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads.get("bag", ()), grads.get("scatter", ())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(LmshrinkError, match="lookup must be one of"):
        set_lookup(layer, "gather")
    layer.lookup = "gather"
    with pytest.raises(LmshrinkError, match="lookup must be one of"):
        layer(ids)


@pytest.mark.parametrize("layout", ["padded", "balanced"])
def test_max_u_entries_is_the_longest_u_that_fits(layout):
    from lmshrink.layers.packing import packed_bits
    from lmshrink.methods.groupreduce import max_u_entries

    V, D, ranks, bits = 300, 200, [6, 4, 3], 4

    def cost(L):  # word_pos (int16) + U flat in groups of 128 + V (13, 200)
        return V * 16 + packed_bits(1, L, bits, 128, layout) + packed_bits(sum(ranks), D, bits, 128, layout)

    ends_inside_a_group = 0
    for budget in range(cost(1), cost(1) + 40_000, 613):
        L = max_u_entries(budget, V, D, ranks, bits, 128, layout)
        assert cost(L) <= budget < cost(L + 1), (budget, L)
        ends_inside_a_group += L >= 128 and L % 128 != 0
    assert (ends_inside_a_group > 0) == (layout == "balanced")  # padded: whole groups of 128 only (L >= 128)


def test_quantized_groupreduce_sizes_its_ranks_for_the_balanced_layout_it_builds():
    """bits with a ratio: the ranks' budget and the layer built are both balanced (exact bits, within budget), and
    the bits the padded layout would have wasted go into rank."""
    from lmshrink.methods.groupreduce import build_layer

    torch.manual_seed(0)
    V, D, ratio = 600, 200, 12
    W = torch.randn(V, D)
    budget = V * D * 32 / ratio
    layer = apply(W, zipf(V), ratio=ratio, num_blocks=4, bits=4)
    assert layer.layout == "balanced" and layer.spec()["layout"] == "balanced"
    state_bits = sum(t.numel() * t.element_size() * 8 for t in layer.state_dict().values())
    assert layer.bits() == state_bits == layer_bits(layer.block_sizes, layer.ranks, D, 4, 128) <= budget
    assert layer_bits(layer.block_sizes, layer.ranks, D, 4, 128, "padded") > budget  # would not fit padded
    cfg = make_config("groupreduce", ratio=ratio, num_blocks=4, bits=4)
    padded = groupreduce_fit(W, zipf(V), cfg, budget, layout="padded")
    assert sum(padded.ranks) < sum(layer.ranks)
    old = build_layer(W, padded, "embedding", None, 4, 128, layout="padded")
    assert old.layout == "padded"
    assert old.bits() == layer_bits(old.block_sizes, old.ranks, D, 4, 128, "padded") <= budget
    assert "layout" not in apply(W, zipf(V), ratio=ratio, num_blocks=4).spec()  # float factors: no layout key


@pytest.mark.parametrize("quantize_softmax", [True, False])
def test_groupreduce_q_models_saved_before_layouts_load_padded_with_the_same_outputs(quantize_softmax,
                                                                                   reload_as_old_model):
    """GroupReduce + quantization written the old way (padded: the embedding sized and built padded by the method,
    the softmax quantized after retraining), saved without ``layout`` in its manifest: loads padded, same outputs.
    A float GroupReduce softmax beside it has no layout in its spec and loads float."""
    from lmshrink.compress import Plan, compress
    from lmshrink.layers.block_low_rank import BlockLowRankEmbedding, BlockLowRankLinear
    from lmshrink.methods.groupreduce import build_layer
    from lmshrink.methods.quantize import quantize_model_
    from lmshrink.models import LSTMLanguageModel

    torch.manual_seed(0)
    V, H = 300, 200
    m = LSTMLanguageModel(V, hidden=H, layers=1)
    W = m.encoder.weight.detach().clone()
    fit = groupreduce_fit(W, zipf(V), make_config("groupreduce", ratio=12, num_blocks=4, bits=4), V * H * 32 / 12,
                          layout="padded")
    m.encoder = build_layer(W, fit, "embedding", None, 4, 128, layout="padded")
    compress(m, Plan({"decoder": make_config("groupreduce", ratio=4, num_blocks=4)}), {"word_counts": zipf(V)})
    if quantize_softmax:
        assert quantize_model_(m, 4, 128, layout="padded") == ["decoder"]
    else:
        assert m.decoder.nbits is None and "layout" not in m.decoder.spec()
    loaded = reload_as_old_model(m, torch.randint(0, V, (7, 3)))
    assert isinstance(loaded.encoder, BlockLowRankEmbedding) and isinstance(loaded.decoder, BlockLowRankLinear)
    assert loaded.encoder.layout == "padded"
    assert loaded.decoder.layout == ("padded" if quantize_softmax else None)
    assert loaded.decoder.spec() == m.decoder.spec()


def handmade_embedding(bits: int | None = None):
    from lmshrink.layers.block_low_rank import BlockLowRankEmbedding

    g = torch.Generator().manual_seed(8)
    sizes, ranks, V, D = [30, 50, 20, 40, 25], [5, 12, 3, 7, 7], 165, 16
    layer = BlockLowRankEmbedding(V, D, sizes, ranks, bits=bits)
    layer.set_factors(torch.randperm(V, generator=g), [torch.randn(n, r, generator=g) for n, r in zip(sizes, ranks)],
                      [torch.randn(r, D, generator=g) for r in ranks])
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bits", [None, 8, 4])
def test_blockdiag_path_equals_per_block_and_dense(bias, bits):
    """The block-diagonal softmax and lookup give ``h W^T + b`` and W's rows: the zero columns of Ubd (other
    blocks' ranks, the ALIGN padding) and the zero rows of Vp must not leak, and logits come out in vocabulary order."""
    layer, h, want, scale = softmax_case(bias, bits)
    with torch.no_grad():
        per_block = layer(h)
        layer.blockdiag = "on"
        got = layer(h)
        assert layer._bcache["Ubd"].shape == (165, 40)  # sum r = 34 rounded up to ALIGN
        assert got.shape == (3, 4, 165)
        torch.testing.assert_close(got, per_block, atol=1e-5 * scale, rtol=0)
        torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(layer(h), want, atol=1e-5 * scale, rtol=0)
    emb = handmade_embedding(bits)
    ids = torch.randint(0, 165, (7, 3), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        scatter = emb(ids)
        emb.blockdiag = "on"
        rows = emb(ids)
        torch.testing.assert_close(rows, emb.dense_weight()[ids], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rows, scatter, atol=1e-5, rtol=1e-5)


def test_blockdiag_operands_leave_with_the_device_and_dtype():
    layer = handmade_layer(True)
    layer.blockdiag = "on"
    h = torch.randn(5, 16)
    with torch.no_grad():
        layer(h)
        assert layer._bcache
        layer.to(torch.float64)  # .to() drops the operands (they would pin memory on the old device / dtype)
        assert not layer._bcache and not layer._cache
        got = layer(h.double())
        assert got.dtype == torch.float64 and layer._bcache["Ubd"].dtype == torch.float64
        torch.testing.assert_close(got, h.double() @ layer.dense_weight().double().t() + layer.bias, atol=1e-5, rtol=1e-6)


def test_blockdiag_cache_dropped_by_loading_under_inference_mode():
    """Loading copies in place; inference tensors keep no version counter, so only the load hook can tell."""
    a, b = handmade_layer(True), handmade_layer(True)
    with torch.no_grad():
        b.U.mul_(-1)
    h = torch.randn(4, 16)
    with torch.inference_mode():
        a.blockdiag = "on"
        a(h)
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(h), b(h), atol=1e-5, rtol=1e-5)


def test_blockdiag_auto_is_off_on_cpu_and_under_autograd_and_bad_values_refused():
    from lmshrink.compress import Plan, compress
    from lmshrink.layers.block_low_rank import set_blockdiag
    from lmshrink.models import LSTMLanguageModel

    layer = handmade_layer(True)
    h, target = torch.randn(6, 16), torch.randint(0, 165, (6,))
    with torch.no_grad():
        layer(h)
    assert layer.blockdiag == "auto" and not layer._bcache  # CPU: the block path (fewer multiply-adds) is faster
    layer.blockdiag = "on"  # autograd keeps the per-block path even when forced: same gradients, no cache
    torch.nn.functional.cross_entropy(layer(h), target).backward()
    assert not layer._bcache
    grads = [p.grad.clone() for p in (layer.U, layer.V, layer.bias)]
    layer.zero_grad()
    layer.blockdiag = "off"
    torch.nn.functional.cross_entropy(layer(h), target).backward()
    for a, p in zip(grads, (layer.U, layer.V, layer.bias)):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, p.grad)
    layer.blockdiag = "fast"
    with pytest.raises(LmshrinkError, match="blockdiag must be one of"):
        layer(h)
    torch.manual_seed(0)
    model = LSTMLanguageModel(120, hidden=16, layers=1).eval()
    cfg = make_config("groupreduce", ratio=3, num_blocks=3)
    compress(model, Plan({"encoder": cfg, "decoder": cfg}, "untie"), {"word_counts": zipf(120)})
    ids = torch.randint(0, 120, (2, 5))
    with torch.no_grad():
        want = model(ids)[0]
        assert set_blockdiag(model, "on") == 2
        torch.testing.assert_close(model(ids)[0], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(LmshrinkError):
        set_blockdiag(model, "yes")
    assert set_blockdiag(torch.nn.Linear(2, 2), "off") == 0


def test_blockdiag_auto_needs_cuda_tensor_cores(monkeypatch):
    """The decision itself, device by device and dtype by dtype (the CUDA run is in test_gpu.py)."""
    from lmshrink.layers import block_low_rank as blr
    from lmshrink.layers.block_low_rank import BlockLowRankLinear

    layer = BlockLowRankLinear(200, 64, [60, 140], [9, 4])  # sum r = 13 -> 16 < D = 64
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(blr, "tf32_matmuls", lambda: True)
    assert layer._use_blockdiag(cuda, False, torch.float32) and layer._use_blockdiag(cuda, False, torch.bfloat16)
    assert not layer._use_blockdiag(cpu, False, torch.float32)
    assert not layer._use_blockdiag(cuda, True, torch.float32)  # autograd
    assert not layer._use_blockdiag(cuda, False, torch.float64)  # no tensor cores for it
    layer.group_gemms = 2  # another knob set by hand wins over "auto"
    assert not layer._use_blockdiag(cuda, False, torch.float32)
    layer.group_gemms = None
    monkeypatch.setattr(blr, "tf32_matmuls", lambda: False)  # true fp32: the block path's fewer multiply-adds
    assert not layer._use_blockdiag(cuda, False, torch.float32) and layer._use_blockdiag(cuda, False, torch.float16)
    wide = BlockLowRankLinear(200, 16, [60, 140], [9, 4])  # R = 16 = D: the operands would outgrow a dense weight
    monkeypatch.setattr(blr, "tf32_matmuls", lambda: True)
    assert not wide._use_blockdiag(cuda, False, torch.float32)
    # R < D, but the operands (R (V + D) = 40 * 264) plus the factors (60*20 + 140*17 + 37*64) outgrow V x D = 12800:
    # the 5x case of stop 22, where "auto" left the layer larger in GPU memory than dense
    near = BlockLowRankLinear(200, 64, [60, 140], [20, 17])
    assert blr.up(37) < 64 and not near._use_blockdiag(cuda, False, torch.float32)
    assert near.blockdiag_fits() is False and layer.blockdiag_fits() is True


def test_resident_bytes_counts_state_once_and_the_block_diagonal_operands_as_caches():
    from lmshrink.measure import resident_bytes

    layer = handmade_layer(True)
    state = sum(t.numel() * t.element_size() for t in (*layer.parameters(), *layer.buffers()))
    assert resident_bytes(layer) == {"state": state, "caches": 0, "total": state}
    layer.blockdiag = "on"
    with torch.no_grad():
        layer(torch.randn(2, 16))
    got = resident_bytes(layer)
    ubd, vp = layer._bcache["Ubd"], layer._bcache["Vp"]
    assert got["state"] == state
    assert got["caches"] >= (ubd.numel() + vp.numel()) * 4  # plus the int64 index maps
    pair = torch.nn.Sequential(layer, layer)  # the same tensors twice are counted once
    assert resident_bytes(pair) == got
    layer.cpu()
    assert resident_bytes(layer)["caches"] == 0
