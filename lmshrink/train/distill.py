"""Retraining a compressed language model against its dense original (knowledge distillation).

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015), Sec. 2: the student is trained on
a weighted sum of the cross-entropy with the data and the cross-entropy with the teacher's softened
distribution, the latter scaled by ``T^2`` so that its gradients keep their size as the temperature ``T`` changes:

    loss = (1 - weight) * CE(y, p_S) + weight * T^2 * KL(p_T^(T) || p_S^(T))

(KL instead of the cross-entropy with ``p_T``: they differ by the teacher's entropy, a constant, and KL is 0
when the student equals the teacher, which makes the logged value readable.)

Why here: a compressed model starts as an approximation of the dense one, and what we want from retraining is
the dense model's behaviour back. Retraining on the data alone lets a model that overfits its training text
(PTB ``small``, trained without dropout) drift towards the training text instead: in stop 15's runs the
compressed models' validation perplexity got worse after the first retraining epoch at rate 0.1. The teacher's
full next-word distribution gives every position V targets instead of one.

The teacher runs over the same BPTT windows as the student, with its own hidden state carried across windows
(reset with the student's at each epoch), in eval mode (no dropout) and without gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import check
from ..models.lstm_lm import copy_state_, zero_state_


def check_distill(weight: float | None, temperature: float = 1.0) -> None:
    """``weight`` in [0, 1] (0 or None: no teacher), ``temperature`` positive and finite; one clear error otherwise."""
    if weight is not None:
        check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
              and 0.0 <= weight <= 1.0, f"distillation weight must be a number in [0, 1], got {weight!r}")
    check(isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and math.isfinite(temperature)
          and temperature > 0, f"distillation temperature must be a positive number, got {temperature!r}")


def check_teacher(teacher, weight: float | None, temperature: float = 1.0) -> None:
    """A training loop's distillation settings: a valid weight and temperature, and a teacher exactly when the weight
    is above 0 (a teacher without a weight, or a weight without a teacher, is a mistake worth one clear line)."""
    check_distill(weight, temperature)
    check((teacher is None) == (not weight), "distillation needs both a teacher model and a weight above 0")


def blend(ce: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor, weight: float,
          temperature: float = 1.0) -> torch.Tensor:
    """Hinton et al.'s objective from the data's cross-entropy ``ce`` (mean per token, as the training loops already
    compute it for their logs): ``(1 - w) ce + w T^2 KL(p_T || p_S)`` at temperature T, KL mean per token.

    student_logits, teacher_logits: (..., V), e.g. (T, B, V) for a language model or (B, C) for a classifier.
    The KL is computed in float32 whatever the logits' dtype.
    """
    check(student_logits.shape == teacher_logits.shape,
          f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ")
    loss = (1.0 - weight) * ce if weight < 1.0 else ce.new_zeros(())
    if weight > 0.0:
        s = student_logits.reshape(-1, student_logits.size(-1)).float()  # (N, V)
        t = teacher_logits.reshape(-1, teacher_logits.size(-1)).float().detach()  # (N, V)
        log_p_s = F.log_softmax(s / temperature, dim=-1)
        log_p_t = F.log_softmax(t / temperature, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")  # sum over V, mean over N
        loss = loss + weight * temperature ** 2 * kl
    return loss


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, weight: float,
                 temperature: float = 1.0) -> torch.Tensor:
    """:func:`blend` with the cross-entropy computed here: targets have the logits' leading shape, (T, B) or (B,)."""
    ce = F.cross_entropy(student_logits.reshape(-1, student_logits.size(-1)).float(), targets.reshape(-1))
    return blend(ce, student_logits, teacher_logits, weight, temperature)


class Teacher:
    """A frozen dense model that produces soft targets window by window, its hidden state carried like the student's.

    ``weight`` and ``temperature`` as in :func:`distill_loss`. The teacher's parameters are never trained (it runs
    without gradients) and it runs in eval mode (``model`` is switched to it here, once); ``state`` is a list of
    fixed tensors updated in place, so a captured CUDA graph (``train.graphed``) replays the teacher's forward too.
    """

    def __init__(self, model: nn.Module, weight: float, temperature: float = 1.0):
        check_distill(weight, temperature)
        check(hasattr(model, "init_state"), "the distillation teacher must be a language model with init_state()")
        # the teacher runs under no_grad (``logits``): its parameters' flags stay the caller's
        self.model, self.weight, self.temperature = model.eval(), float(weight), float(temperature)
        self.state = None

    def to(self, device: torch.device) -> Teacher:
        self.model = self.model.to(device)
        return self

    def reset_state(self, batch_size: int, device: torch.device) -> None:
        """Zero hidden state for a new epoch (the student's is zeroed at the same point)."""
        if self.state is None or self.state[0][0].shape[0] != batch_size or self.state[0][0].device != device:
            self.state = self.model.init_state(batch_size, device)
        else:
            zero_state_(self.state)

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs`` (T, B) -> (T, B, V); its hidden state moves on by the window."""
        out, new_state = self.model(inputs, self.state)
        copy_state_(self.state, new_state)
        return out

    def loss(self, student_logits: torch.Tensor, inputs: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        """The retraining objective per token for one window, from the data's cross-entropy ``ce`` (:func:`blend`)."""
        return blend(ce, student_logits, self.logits(inputs), self.weight, self.temperature)
