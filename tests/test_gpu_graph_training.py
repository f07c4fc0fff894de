"""Training steps of compressed models replayed from a CUDA graph (``finetune_lm(cuda_graph=True)``,
``vocab.py --cuda-graph``) must equal the eager steps: every row of ``tests/test_methods.py``'s EXAMPLES whose
model the graph accepts (no per-step training hooks; CSR-pruned rows in their retraining form) goes through the same check. GPU only (``pytest -m gpu``).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_methods import CASES, EXAMPLES, V, compressed

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("exact_fp32"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name,i", CASES)
def test_graph_replayed_training_of_a_compressed_model_equals_eager(name, i):
    from lmshrink.compress import training_forms
    from lmshrink.train.graphed import StaticLMStep, graph_ready

    def run(capture):
        _, model, _ = compressed(name, EXAMPLES[name][i])
        with training_forms(model):  # as finetune_lm trains it: CSR-pruned rows as dense x fixed pattern
            return train(model.cuda(), capture)

    def train(model, capture):
        if graph_ready(model) is not None:
            pytest.skip(f"trains eagerly by design: {graph_ready(model)}")
        model = model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        step = StaticLMStep(model, params, 6, 3, 5.0, torch.device("cuda"), capture=capture)
        step.set_lr(0.05)  # low enough that no row diverges (packed rows did at 0.5, eager too)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(8):  # 3 warm-up steps, the capture, then replays
            w = torch.randint(0, V, (7, 3), generator=g).cuda()
            losses.append(float(step(w[:-1], w[1:])))
        return losses, [p.detach().clone() for p in params], step

    eager_losses, eager_params, _ = run(False)
    graph_losses, graph_params, step = run(True)
    assert step.graph is not None, step.fallback_reason  # it really captured and replayed
    assert all(map(math.isfinite, eager_losses)), eager_losses
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    for a, b in zip(eager_params, graph_params):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["groupreduce", "svd"])
def test_graph_replayed_distillation_equals_eager(name):
    """The teacher's forward and its carried state are captured with the step (``StaticLMStep(teacher=...)``): the
    replayed distillation steps equal the eager ones."""
    from lmshrink.train.distill import Teacher
    from lmshrink.train.graphed import StaticLMStep

    def run(capture):
        dense, model, _ = compressed(name, EXAMPLES[name][0])
        teacher = Teacher(dense, 0.5, 2.0).to(torch.device("cuda"))
        teacher.reset_state(3, torch.device("cuda"))
        model = model.cuda().train()
        params = [p for p in model.parameters() if p.requires_grad]
        step = StaticLMStep(model, params, 6, 3, 5.0, torch.device("cuda"), capture=capture, teacher=teacher)
        step.set_lr(0.05)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(8):
            w = torch.randint(0, V, (7, 3), generator=g).cuda()
            losses.append(float(step(w[:-1], w[1:])))
        return losses, [p.detach().clone() for p in params], step

    eager_losses, eager_params, _ = run(False)
    graph_losses, graph_params, step = run(True)
    assert step.graph is not None, step.fallback_reason
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    for a, b in zip(eager_params, graph_params):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
