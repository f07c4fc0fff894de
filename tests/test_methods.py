"""One table-driven suite for EVERY registered compression method.

Each method in ``lmshrink.compress.METHODS`` needs at least one row in ``EXAMPLES`` (a method without one
fails ``test_every_method_has_examples``). A row is an :class:`Example`: the method's options, which
modules of a tiny LSTM LM it compresses, whether embedding and softmax are tied, and explicit tolerances.
Every row goes through the same checks:

- fast path vs dense reference: the compressed model's logits equal those of a dense model holding each
  compressed layer's ``dense_weight()`` (``fast_atol``), and each layer approximates the original weight
  within ``max_rel_err`` (relative Frobenius error on the test's random weights);
- save/load through ``lmshrink.io``: every tensor and the logits come back bit-exact;
- bytes on disk within 2% of the theoretical bits (``lmshrink.measure``) plus the manifest;
- it trains: a backward pass reaches the compressed layers' parameters with finite gradients;
- bad input: NaN weights, an unknown option, an impossible budget (``impossible``), and for methods that
  need word counts, counts of the wrong length, negative or zero-sum, all raise LmshrinkError.

To add a method: add ``"name": [Example({...options...}, targets=LSTM_MAPS or VOCAB, ...)]`` below.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import lmshrink.methods  # noqa: F401 - registers every method
from lmshrink.compress import METHODS, Plan, compress, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.io import load_model_dir, save_model_dir
from lmshrink.layers import CompressedLayer, TiedProjection
from lmshrink.measure import bytes_on_disk, totals
from lmshrink.models import LSTMLanguageModel

VOCAB = ("encoder", "decoder")
LSTM_MAPS = ("rnn.layers.*.ih", "rnn.layers.*.hh")
V, H = 1000, 32  # big enough that safetensors headers stay well under 2% of the file


@dataclass
class Example:
    config: dict
    targets: tuple = VOCAB
    tie: bool = False
    max_rel_err: float = 1.0  # ||dense_weight - W|| / ||W|| on random uniform weights
    fast_atol: float = 1e-4  # logits of the compressed model vs its dense reference
    impossible: dict | None = None  # options whose budget must be refused
    needs_counts: bool = False
    shrinks: bool = True  # False for training-time forms (AGP masks) that only shrink once finalized


EXAMPLES: dict[str, list[Example]] = {
    "svd": [
        Example({"ratio": 4}, max_rel_err=0.95, impossible={"ratio": 1e6}),
        Example({"rank": 6}, tie=True, max_rel_err=0.95, impossible={"rank": 32}),
    ],
    "groupreduce": [
        Example({"ratio": 4, "num_blocks": 4}, max_rel_err=0.95, impossible={"ratio": 1e4, "num_blocks": 4}, needs_counts=True),
        Example({"ratio": 3, "num_blocks": 5, "rank_rule": "sqrt_frequency", "split": "equal_mass"}, tie=True,
                max_rel_err=0.95, needs_counts=True),
        Example({"ratio": 12, "num_blocks": 4, "bits": 8}, tie=True, max_rel_err=0.95, needs_counts=True),
        Example({"ratio": 3, "num_blocks": 4, "rank_multiple": 4}, max_rel_err=0.95, needs_counts=True),
    ],
    "prune": [
        Example({"density": 0.3}, max_rel_err=0.75, impossible={"density": 0.9}),
        Example({"ratio": 3, "granularity": "row"}, tie=True, max_rel_err=0.75, impossible={"ratio": 1e6}),
        Example({"ratio": 2, "schedule": "agp", "initial_density": 1.0}, tie=True, max_rel_err=1e-7, shrinks=False),
        Example({"density": 0.4}, targets=LSTM_MAPS, max_rel_err=0.7),
    ],
    "quantize": [
        # 4 bits run on CPU through torch's int4 kernel, whose activations are bfloat16 (test_quantize.py has its checks)
        Example({"bits": 4}, max_rel_err=0.08, impossible={"ratio": 40}, fast_atol=2e-3),
        Example({"ratio": 5}, tie=True, max_rel_err=0.03),
        Example({"bits": 3, "group_size": 16}, targets=LSTM_MAPS, max_rel_err=0.2),
        Example({"ratio": 16, "bits": 8, "base": {"method": "groupreduce", "num_blocks": 4}}, tie=True,
                max_rel_err=0.95, needs_counts=True),
        Example({"ratio": 16, "bits": 8, "base": {"method": "svd"}}, max_rel_err=0.95),
    ],
    # recurrent maps (tests/test_recurrent.py has the method-specific checks)
    "kronecker": [
        Example({"ratio": 6}, targets=LSTM_MAPS, max_rel_err=0.95, impossible={"ratio": 1e5}),
        Example({"a_shape": [8, 4], "terms": 2}, targets=LSTM_MAPS, max_rel_err=0.98, impossible={"a_shape": [5, 4]}),
    ],
    "doped_kronecker": [
        # train form before annealing: S holds the whole residual, so the layer is exact (and not yet small)
        Example({"ratio": 3}, targets=LSTM_MAPS, max_rel_err=1e-5, shrinks=False, impossible={"ratio": 1e5}),
        Example({"ratio": 3, "anneal": False}, targets=LSTM_MAPS, max_rel_err=0.8, impossible={"ratio": 1e5}),
    ],
    "hmd": [Example({"ratio": 4}, targets=LSTM_MAPS, max_rel_err=0.9, impossible={"ratio": 1e5})],
    "tt": [Example({"ratio": 4}, targets=LSTM_MAPS, max_rel_err=0.92, impossible={"ratio": 1e6})],
    # binary codes of an embedding table (tests/test_binary.py has the IIQ/ITQ-specific checks)
    "binary": [
        Example({"algorithm": "iiq", "remove_top": 0, "max_iter": 10}, targets=("encoder",), max_rel_err=0.6,
                impossible={"algorithm": "pca-sign", "bits": 64}),
        Example({"algorithm": "sign", "scale": "word"}, targets=("encoder",), tie=True, max_rel_err=0.55),
    ],
}

CASES = [(name, i) for name, rows in EXAMPLES.items() for i in range(len(rows))]


def word_counts(n: int = V) -> torch.Tensor:
    return torch.round(5000.0 / torch.arange(1, n + 1)) + 1  # Zipf-like training counts


def tiny_model(tie: bool, seed: int = 0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    return LSTMLanguageModel(V, hidden=H, layers=2, tie_weights=tie, init_scale=0.1).eval()


def plan_for(name: str, ex: Example, **override) -> Plan:
    cfg = make_config(name, **{**ex.config, **override})
    return Plan({t: cfg for t in ex.targets}, "share")


def compressed(name: str, ex: Example):
    model = tiny_model(ex.tie)
    dense = copy.deepcopy(model)
    report = compress(model, plan_for(name, ex), {"word_counts": word_counts()})
    return dense, model.eval(), report


def dense_reference(model: nn.Module) -> nn.Module:
    """The same model with every compressed layer replaced by a dense one holding its dense_weight()."""
    ref = copy.deepcopy(model)
    for name, m in list(ref.named_modules()):
        if not isinstance(m, CompressedLayer) or isinstance(m, TiedProjection):
            continue
        W = m.dense_weight().detach()
        if m.flavour == "embedding":
            new = nn.Embedding(*W.shape)
        else:
            new = nn.Linear(W.shape[1], W.shape[0], bias=getattr(m, "bias", None) is not None)
            if new.bias is not None:
                new.bias.data.copy_(m.bias.detach())
        new.weight.data.copy_(W)
        parent, _, child = name.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, child, new)
    for name, m in list(ref.named_modules()):
        if isinstance(m, TiedProjection):
            src = ref.get_submodule(m.source_name)
            new = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            new.weight = src.weight
            if m.bias is not None:
                new.bias.data.copy_(m.bias.detach())
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent) if parent else ref, child, new)
    return ref


def ids(T: int = 6, B: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (T, B), generator=torch.Generator().manual_seed(seed))


def test_every_method_has_examples():
    missing = sorted(set(METHODS) - set(EXAMPLES))
    assert not missing, f"add rows for {missing} to EXAMPLES in tests/test_methods.py"


@pytest.mark.parametrize("name,i", CASES)
def test_fast_path_matches_dense_reference(name, i):
    ex = EXAMPLES[name][i]
    dense, model, report = compressed(name, ex)
    assert any(r["method"] == name for r in report)
    for r in report:
        if r["method"] == "tied":
            continue
        layer = model.get_submodule(r["module"])
        W = dense.get_submodule(r["module"]).weight.detach()
        err = float((layer.dense_weight().detach() - W).norm() / W.norm())
        assert err <= ex.max_rel_err, f"{r['module']}: relative error {err:.4f} > {ex.max_rel_err}"
        assert r["bits"] < r["dense_bits"] or not ex.shrinks, f"{r['module']} did not shrink"
    ref = dense_reference(model).eval()
    x = ids()
    with torch.no_grad():
        got, _ = model(x)
        want, _ = ref(x)
    torch.testing.assert_close(got, want, atol=ex.fast_atol, rtol=1e-4)


@pytest.mark.parametrize("name,i", CASES)
def test_save_load_bit_exact_and_bytes(name, i, tmp_path):
    ex = EXAMPLES[name][i]
    _, model, _ = compressed(name, ex)
    save_model_dir(model, tmp_path / "m")
    loaded, manifest = load_model_dir(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    disk = bytes_on_disk(tmp_path / "m")
    theory = totals(loaded)["bits"] / 8 + disk["manifest"]
    assert abs(disk["total"] - theory) <= 0.02 * theory, (disk, theory)


@pytest.mark.parametrize("name,i", CASES)
def test_a_used_model_deep_copies_and_moves(name, i):
    """After inference calls (which leave caches: CSR operands, block-diagonal factors, int4 codes), a deep copy
    and a move (``.float()`` runs ``_apply`` as ``.cuda()`` does) give the same logits: stop 23's cached CSR
    tensor could not be deep-copied, which only the GPU tests' ``copy.deepcopy(model).cuda()`` had shown."""
    ex = EXAMPLES[name][i]
    _, model, _ = compressed(name, ex)
    x = ids()
    with torch.no_grad():
        want = model.eval()(x)[0]
        model(x)  # a second call, from the caches
        twin = copy.deepcopy(model).float().eval()
        torch.testing.assert_close(twin(x)[0], want, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model(x)[0], want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,i", CASES)
def test_compressed_layers_train(name, i):
    ex = EXAMPLES[name][i]
    _, model, report = compressed(name, ex)
    assert_gradients_reach(model.train(), report, ids())


@pytest.mark.parametrize("name,i", CASES)
def test_compressed_layers_train_under_bf16_autocast(name, i):
    # retraining with --precision bf16 (the GPU default): autocast turns some ops bfloat16 and leaves others alone,
    # and a layer that mixes the two breaks (stop 22: tensor-train's contraction on CPU, the fused LSTM's rebuilt
    # Kronecker weight on GPU; tests/test_gpu.py runs the CUDA flavour)
    from lmshrink.train.lm import autocast_for

    _, model, report = compressed(name, EXAMPLES[name][i])
    with autocast_for(torch.device("cpu"), "bf16"):
        assert_gradients_reach(model.train(), report, ids())


def assert_gradients_reach(model: nn.Module, report: list[dict], x: torch.Tensor) -> None:
    """One backward pass gives every compressed layer finite, non-zero gradients."""
    logits, _ = model(x)
    logits.float().logsumexp(-1).mean().backward()
    for r in report:
        if r["method"] == "tied":
            continue
        grads = [p.grad for p in model.get_submodule(r["module"]).parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), r["module"]
        assert any(float(g.abs().sum()) > 0 for g in grads), f"{r['module']}: no gradient reaches it"


@pytest.mark.parametrize("name,i", CASES)
def test_bad_input(name, i):
    ex = EXAMPLES[name][i]
    model = tiny_model(ex.tie)
    counts = {"word_counts": word_counts()}
    with pytest.raises(LmshrinkError):
        make_config(name, **ex.config, no_such_option=1)
    if ex.impossible is not None:
        opts = {k: v for k, v in ex.config.items() if k not in ("rank", "ratio", "fraction", "density")}
        with pytest.raises(LmshrinkError):
            compress(model, plan_for(name, Example({**opts, **ex.impossible}, ex.targets)), counts)
    target = model.get_submodule(ex.targets[0].replace("*", "0"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        target.weight[0, 0] = float("nan")
    with pytest.raises(LmshrinkError):
        compress(model, plan_for(name, ex), counts)
    with torch.no_grad():
        target.weight[0, 0] = before[ex.targets[0].replace("*", "0") + ".weight"][0, 0]
    if ex.needs_counts:
        for bad in (word_counts(V - 1), -word_counts(), torch.zeros(V)):
            with pytest.raises(LmshrinkError):
                compress(model, plan_for(name, ex), {"word_counts": bad})
        with pytest.raises(LmshrinkError):
            compress(model, plan_for(name, ex), {})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "a refused plan changed the model"
