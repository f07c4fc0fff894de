"""The training step that ``--cuda-graph`` captures (``lmshrink.train.graphed.StaticLMStep``), checked eagerly on
the CPU against the ordinary step of ``train_lm``; the captured replay itself is checked in tests/test_gpu.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from lmshrink.compress import compress, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.models.lstm_lm import LSTMLanguageModel, detach_state, lm_loss
from lmshrink.train.graphed import StaticLMStep, graph_ready
from lmshrink.train.lm import train_lm

V, H, B, T = 30, 16, 3, 5


def tiny(seed=0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    return LSTMLanguageModel(V, hidden=H, layers=2, dropout=0.3, init_scale=0.1)


def windows(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randint(0, V, (T + 1, B), generator=g) for _ in range(n)]
    out.append(torch.randint(0, V, (3, B), generator=g))  # the last, shorter window of an epoch
    return [(w[:-1], w[1:]) for w in out]


def reference_steps(model, data, lr, max_norm):
    """The step of train_lm: torch.optim.SGD, clip_grad_norm_, state detached between windows."""
    params = [p for p in model.parameters()]
    opt = torch.optim.SGD(params, lr=lr)
    state, losses = model.init_state(B), []
    for x, y in data:
        state = detach_state(state)
        logits, state = model(x, state)
        loss = lm_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        (loss * x.size(0)).backward()
        nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("max_norm", [5.0, 0.01])  # 0.01: clipping active on every step
def test_static_step_equals_the_ordinary_training_step(max_norm):
    data = windows(6)
    ref, static_model = tiny(), tiny()
    torch.manual_seed(7)  # same dropout masks on both sides: same RNG draws in the same order
    ref_losses = reference_steps(ref, data, lr=0.5, max_norm=max_norm)
    torch.manual_seed(7)
    params = list(static_model.parameters())
    step = StaticLMStep(static_model, params, T, B, max_norm, torch.device("cpu"), capture=False)
    step.set_lr(0.5)
    losses = []
    for x, y in data:
        loss = step(x, y) if x.size(0) == T else step.eager(x, y)
        losses.append(float(loss))
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for (n, a), b in zip(ref.named_parameters(), static_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_hidden_state_carries_over_and_resets():
    model = tiny()
    step = StaticLMStep(model, list(model.parameters()), T, B, 5.0, torch.device("cpu"))
    x, y = windows(1)[0]
    step(x, y)
    assert all(h.abs().sum() > 0 for h, _ in step.state)
    step.reset_state()
    assert all(h.abs().sum() == 0 and c.abs().sum() == 0 for h, c in step.state)


def test_models_with_training_hooks_are_refused():
    model = tiny()
    assert graph_ready(model) is None
    compress(model, {"rnn.layers.*.hh": make_config("prune", ratio=4, schedule="agp")})
    assert "training hook" in graph_ready(model)


def test_cuda_graph_needs_cuda_and_fp32(tmp_path):
    from lmshrink.models.lstm_lm import PRESETS

    class FakeCorpus:  # never reached: the checks come first
        train = torch.arange(200) % V
        splits = {"valid": torch.arange(50) % V}

    with pytest.raises(LmshrinkError, match="needs a CUDA device"):
        train_lm(tiny(), FakeCorpus(), PRESETS["tiny"], device="cpu", precision="fp32", cuda_graph=True,
                 progress=False, log=lambda *_: None)


def test_cli_cuda_graph_on_cpu_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lmshrink", "train", "--corpus", "ptb", "--data", str(tmp_path),
                        "--preset", "tiny", "--out", str(tmp_path / "m"), "--device", "cpu", "--cuda-graph",
                        "--precision", "fp32"], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--cuda-graph needs a CUDA device" in r.stderr  # checked before the (missing) data is looked for
    assert not (tmp_path / "m").exists()


def test_a_failed_capture_falls_back_to_the_eager_step():
    # on this CPU-only torch the capture itself fails: the step must still train, exactly as eagerly
    data = windows(3)[:3]
    a, b = tiny(), tiny()
    eager = StaticLMStep(a, list(a.parameters()), T, B, 5.0, torch.device("cpu"))
    fallback = StaticLMStep(b, list(b.parameters()), T, B, 5.0, torch.device("cpu"), capture=True, warmup=0)
    for s in (eager, fallback):
        s.set_lr(0.3)
    a.eval(), b.eval()  # no dropout: the two runs draw no random numbers
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        for x, y in data:
            assert float(eager(x, y)) == pytest.approx(float(fallback(x, y)), rel=1e-6)
    assert fallback.graph is None and fallback.fallback_reason
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
