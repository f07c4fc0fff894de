"""Retraining against the dense model (``lmshrink.train.distill``, Hinton et al. 2015): the objective against a hand
computation, the teacher's carried state, the training loops that use it (eager, the graph's step, finetune_lm,
resume), and bad settings refused in one line before any work."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_foundation import TINY_RECIPE, lm_for, pattern_corpus  # noqa: F401  (fixture)
from test_graphed import B, T, V, tiny, windows

from lmshrink.compress import compress, make_config
from lmshrink.errors import LmshrinkError
from lmshrink.models.lstm_lm import detach_state
from lmshrink.train import lm as lm_mod
from lmshrink.train.distill import Teacher, check_distill, distill_loss
from lmshrink.train.graphed import StaticLMStep


def test_distill_loss_is_hintons_objective_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 2, 7, generator=g), torch.randn(4, 2, 7, generator=g)  # (T, B, V)
    y = torch.randint(0, 7, (4, 2), generator=g)
    ce = F.cross_entropy(s.reshape(-1, 7), y.reshape(-1))
    for temp in (1.0, 2.5):
        p_t = torch.softmax(t / temp, -1)
        kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / temp, -1))).sum(-1).mean()
        for w in (0.0, 0.3, 1.0):
            want = (1 - w) * ce + w * temp ** 2 * kl
            torch.testing.assert_close(distill_loss(s, t, y, w, temp), want, rtol=1e-6, atol=1e-6)
    # a student equal to its teacher has nothing left to learn from it
    assert float(distill_loss(t, t, y, 1.0)) == pytest.approx(0.0, abs=1e-6)
    # the gradient of the KL term at T = 1 is (p_S - p_T) / N per logit
    s1 = s.clone().requires_grad_(True)
    distill_loss(s1, t, y, 1.0).backward()
    want = (torch.softmax(s, -1) - torch.softmax(t, -1)) / 8
    torch.testing.assert_close(s1.grad, want, rtol=1e-5, atol=1e-7)
    with pytest.raises(LmshrinkError, match="differ"):
        distill_loss(s, t[:, :1], y, 1.0)


def test_the_teachers_state_carries_across_windows_and_resets():
    model = tiny()
    teacher = Teacher(copy.deepcopy(model), 1.0)
    teacher.to(torch.device("cpu")).reset_state(B, torch.device("cpu"))
    x = torch.randint(0, V, (2 * T, B), generator=torch.Generator().manual_seed(3))
    whole = teacher.logits(x)
    teacher.reset_state(B, torch.device("cpu"))
    halves = torch.cat([teacher.logits(x[:T]), teacher.logits(x[T:])])
    torch.testing.assert_close(halves, whole, rtol=1e-5, atol=1e-6)
    teacher.reset_state(B, torch.device("cpu"))
    torch.testing.assert_close(teacher.logits(x[:T]), whole[:T], rtol=1e-5, atol=1e-6)
    # no graph and in eval mode (the tiny model has dropout 0.3: eval means no masks, the same logits as before)
    assert not teacher.logits(x[:T]).requires_grad and not teacher.model.training


def test_the_graphs_step_with_a_teacher_equals_the_eager_distillation_step():
    """StaticLMStep(teacher=...) (what --cuda-graph replays) against a hand-written eager step with the same
    objective; the returned loss stays the data's cross-entropy."""
    data = windows(5)
    dense = tiny(seed=5)
    ref, static_model = tiny(), tiny()
    torch.manual_seed(7)
    t_ref = Teacher(copy.deepcopy(dense), 0.7, 2.0).to(torch.device("cpu"))
    t_ref.reset_state(B, torch.device("cpu"))
    params = list(ref.parameters())
    opt = torch.optim.SGD(params, lr=0.5)
    state, ref_losses = ref.init_state(B), []
    for x, y in data:
        state = detach_state(state)
        logits, state = ref(x, state)
        ref_losses.append(float(F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))))
        opt.zero_grad(set_to_none=True)
        # the objective written out (distill_loss computes its own cross-entropy), the teacher's state carried
        (distill_loss(logits, t_ref.logits(x), y, 0.7, 2.0) * x.size(0)).backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    torch.manual_seed(7)
    t_static = Teacher(copy.deepcopy(dense), 0.7, 2.0).to(torch.device("cpu"))
    t_static.reset_state(B, torch.device("cpu"))
    step = StaticLMStep(static_model, list(static_model.parameters()), T, B, 5.0, torch.device("cpu"), teacher=t_static)
    step.set_lr(0.5)
    losses = [float(step(x, y) if x.size(0) == T else step.eager(x, y)) for x, y in data]
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for (n, a), b in zip(ref.named_parameters(), static_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def _kl_to(teacher, student, corpus) -> float:
    """Mean KL(teacher || student) per token on the validation text, state carried."""
    data = lm_mod.batchify(corpus.splits["valid"], 4)
    ts, ss, total, n = teacher.init_state(4), student.init_state(4), 0.0, 0
    teacher.eval(), student.eval()
    with torch.no_grad():
        for x, _ in lm_mod.bptt_windows(data, 5):
            lt, ts = teacher(x, ts)
            ls, ss = student(x, ss)
            total += float(F.kl_div(torch.log_softmax(ls, -1).reshape(-1, ls.size(-1)),
                                    torch.log_softmax(lt, -1).reshape(-1, lt.size(-1)), log_target=True,
                                    reduction="sum"))
            n += x.numel()
    return total / n


def test_finetune_with_distillation_brings_the_compressed_model_towards_the_dense_one(pattern_corpus):  # noqa: F811
    """A compressed model retrained on the teacher alone (weight 1) ends closer to it (KL on validation) than it
    started and than the same retraining on the data alone; the data's perplexity still drives the schedule."""
    quiet = dict(device="cpu", progress=False, precision="fp32", log=lambda *_: None)
    dense = lm_for(pattern_corpus)
    lm_mod.train_lm(dense, pattern_corpus, TINY_RECIPE, epochs=3, **quiet)

    def squeezed():
        m = copy.deepcopy(dense)
        compress(m, {"decoder": make_config("svd", rank=2)})
        return m

    start = _kl_to(dense, squeezed(), pattern_corpus)
    plain = lm_mod.finetune_lm(squeezed(), pattern_corpus, TINY_RECIPE, 2, lr=0.5, **quiet)
    taught = lm_mod.finetune_lm(squeezed(), pattern_corpus, TINY_RECIPE, 2, lr=0.5, teacher=dense, distill=1.0, **quiet)
    kl_plain, kl_taught = _kl_to(dense, plain["model"], pattern_corpus), _kl_to(dense, taught["model"], pattern_corpus)
    assert kl_taught < start and kl_taught < kl_plain, (start, kl_plain, kl_taught)
    assert all(math.isfinite(h["valid_ppl"]) for h in taught["history"])  # validation: the data's perplexity
    assert all(p.requires_grad for p in dense.parameters())  # nobody froze the caller's model behind its back


def test_distillation_resumes_mid_epoch_with_the_teachers_state(pattern_corpus, tmp_path):  # noqa: F811
    """train_lm with a teacher, cut by Ctrl-C inside an epoch and resumed from its checkpoint, ends where an
    uninterrupted run ends: the teacher's hidden state goes with the checkpoint."""
    quiet = dict(device="cpu", progress=False, precision="fp32", log=lambda *_: None)
    dense = lm_for(pattern_corpus, seed=3)

    def run(out, **kw):
        return lm_mod.train_lm(lm_for(pattern_corpus), pattern_corpus, TINY_RECIPE, out_dir=out, epochs=2,
                               teacher=Teacher(copy.deepcopy(dense), 0.5), checkpoint_every_s=0.0, **quiet, **kw)

    whole = run(None)
    out = tmp_path / "m"
    real = lm_mod.hooks.after_step

    def stop_at_step_8(model, step, total):
        real(model, step, total)
        if step == 8:
            raise KeyboardInterrupt

    lm_mod.hooks.after_step = stop_at_step_8
    try:
        with pytest.raises(KeyboardInterrupt):
            run(out)
    finally:
        lm_mod.hooks.after_step = real
    saved = json.loads((out.parent / "m.checkpoint" / "trainer.json").read_text())
    assert saved["step_in_epoch"] == 8
    resumed = run(out)
    a, b = whole["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), True, "1"])
def test_bad_distillation_settings_are_refused(weight, pattern_corpus):  # noqa: F811
    with pytest.raises(LmshrinkError, match="distillation weight"):
        check_distill(weight)
    with pytest.raises(LmshrinkError, match="distillation temperature"):
        check_distill(0.5, 0.0)
    model = lm_for(pattern_corpus)
    with pytest.raises(LmshrinkError, match="both a teacher model and a weight"):
        lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 1, lr=0.5, device="cpu", progress=False, distill=0.5)
    with pytest.raises(LmshrinkError, match="both a teacher model and a weight"):
        lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 1, lr=0.5, device="cpu", progress=False,
                           teacher=lm_for(pattern_corpus))


@pytest.mark.parametrize("argv, says", [(["--distill", "2", "--finetune-epochs", "1"], "distillation weight"),
                                        (["--distill", "0.5"], "--distill needs --finetune-epochs")])
def test_cli_compress_refuses_bad_distillation_in_one_line(tmp_path, argv, says, capsys):
    from lmshrink.cli import main
    from lmshrink.io import save_model_dir

    src = tmp_path / "dense"
    save_model_dir(tiny(), src)
    out = tmp_path / "out"
    assert main(["compress", str(src), "--method", "svd", "--ratio", "2", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists()
