"""One LSTM-LM training step on fixed-shape buffers, optionally captured once as a CUDA graph and replayed.

Why: a batch-20 LSTM step on an H100 is ~7 ms of kernel *launches* (embedding, two cuDNN LSTM calls,
dropout, softmax, backward, clipping, SGD: hundreds of small kernels), not arithmetic. Replaying a
captured graph submits the whole step at once, the way the CUDA-graphs notes of PyTorch describe for
whole-network capture ("Whole-network capture", torch.cuda.graph).

What it needs: shapes that never change (the BPTT windows of an epoch, all but the last, shorter one,
which the caller runs eagerly through :meth:`StaticLMStep.eager`), no host synchronisation inside the
step, and a learning rate that lives on the device (it changes per epoch without re-capture). So
the step is written out here: SGD as ``p -= lr * g`` with ``lr`` a device scalar, and global-norm
clipping (Zaremba et al.'s) with device-side arithmetic, as ``clip_grad_norm_`` does.

The same object runs eagerly on any device (``capture=False``), which is how the CPU tests check it
against the ordinary loop of :func:`lmshrink.train.lm.train_lm`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..errors import check
from ..models.lstm_lm import copy_state_, lm_loss, zero_state_


class StaticLMStep:
    """Forward, loss (summed over the window, averaged over the batch), backward, clipping and SGD on static
    buffers ``inputs`` / ``targets`` (T, B) and hidden ``state``, which carries over between calls.
    With a ``teacher`` (``train.distill.Teacher``) the step trains on its soft targets too; the returned loss
    stays the data's cross-entropy.

    ``capture=True`` (CUDA only) runs ``warmup`` real steps eagerly on a side stream (cuDNN and the
    allocator settle there), captures the next step as a graph, and from then on replays it.
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], bptt: int, batch_size: int,
                 max_grad_norm: float | None, device: torch.device, capture: bool = False, warmup: int = 3,
                 teacher=None):
        self.model, self.params, self.max_grad_norm, self.teacher = model, params, max_grad_norm, teacher
        self.device, self.capture, self.warmup = device, capture, warmup
        self.inputs = torch.zeros(bptt, batch_size, dtype=torch.long, device=device)  # (T, B)
        self.targets = torch.zeros(bptt, batch_size, dtype=torch.long, device=device)  # (T, B)
        self.state = model.init_state(batch_size, device)  # [(h, c)] per layer, each (B, H)
        self.lr = torch.zeros((), device=device)
        self.loss = torch.zeros((), device=device)  # mean cross-entropy of the last step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm_steps = 0
        self.fallback_reason: str | None = None  # set when capture failed and the step runs eagerly

    # ------------------------------------------------------------------ state between steps
    def set_lr(self, lr: float) -> None:
        self.lr.fill_(lr)

    def load_state(self, state) -> None:
        copy_state_(self.state, state)

    def reset_state(self) -> None:
        zero_state_(self.state)

    # ------------------------------------------------------------------ the step
    def _sgd_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward, backward, clipping, SGD; the new hidden state goes into ``self.state``. Returns the loss."""
        for p in self.params:
            p.grad = None  # backward then *writes* fresh gradients (inside a graph: its own static buffers)
        logits, new_state = self.model(inputs, self.state)  # (T, B, V)
        loss = lm_loss(logits, targets)
        # the teacher's forward (and its in-place state update) is captured with the step
        fit = self.teacher.loss(logits, inputs, loss) if self.teacher is not None else loss
        (fit * inputs.size(0)).backward()
        with torch.no_grad():
            grads = [p.grad for p in self.params]
            if self.max_grad_norm:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                torch._foreach_mul_(grads, (self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
            torch._foreach_mul_(grads, self.lr)
            torch._foreach_sub_(self.params, grads)
            self.load_state(new_state)
        return loss.detach()

    def _step(self) -> None:
        loss = self._sgd_step(self.inputs, self.targets)
        self.loss.copy_(loss)

    def eager(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One step without the graph, for windows of another shape (the last of an epoch). Returns the loss."""
        return self._sgd_step(inputs, targets)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One step on ``inputs`` / ``targets`` of the static shape; returns the (static) loss tensor."""
        self.inputs.copy_(inputs)
        self.targets.copy_(targets)
        if not self.capture:
            self._step()
            return self.loss
        if self.graph is None:
            if self.warm_steps < self.warmup:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._step()
                torch.cuda.current_stream().wait_stream(side)
                self.warm_steps += 1
                return self.loss
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):  # records the step; nothing runs until replay
                    self._step()
                self.graph = graph
            except (RuntimeError, AssertionError) as e:  # an op that cannot be captured: train on, eagerly
                self.capture, self.fallback_reason = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                warnings.warn(f"CUDA graph capture failed, training eagerly instead ({self.fallback_reason})")
                self._step()
                return self.loss
        self.graph.replay()
        return self.loss


def check_graphable(device: torch.device, precision: str) -> None:
    """The settings ``--cuda-graph`` needs; one clear error otherwise (checked before any data is read)."""
    check(device.type == "cuda", "--cuda-graph needs a CUDA device")
    check(precision == "fp32", "--cuda-graph trains in fp32 (TF32 matmuls) only: add --precision fp32")


def graph_ready(model: nn.Module) -> str | None:
    """Why ``model`` cannot train under a captured graph, or None. Layers with training hooks (AGP masks,
    doped-KP annealing, CMR) change their computation from step to step in Python, which a graph would freeze;
    layers whose ops cannot be captured (``graph_capturable = False``: CSR sparse storage) are asked up front
    rather than tried, since a failed capture is only noticed after a wasted warm-up."""
    for name, m in model.named_modules():
        if getattr(m, "training_step_hook", None) is not None or getattr(m, "extra_loss", None) is not None:
            return f"module {name or 'model'} changes between steps (training hook or extra loss)"
        if not getattr(m, "graph_capturable", True):
            return f"module {name or 'model'} ({type(m).__name__}) uses ops a CUDA graph cannot capture"
    return None
