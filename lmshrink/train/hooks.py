"""How layers take part in training without the loop knowing about them.

Any module may define
- ``training_step_hook(progress: float, step: int)``: called after every optimizer step, with
  ``progress`` = step / total_steps in [0, 1]; gradual pruning (AGP) updates its masks here and doped
  Kronecker layers anneal their density here;
- ``extra_loss() -> Tensor``: added to the task loss before backward (regularizers).
Every training loop in lmshrink calls :func:`after_step` and :func:`extra_loss`.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def after_step(model: nn.Module, step: int, total_steps: int) -> None:
    progress = min(1.0, step / max(1, total_steps))
    for m in model.modules():
        hook = getattr(m, "training_step_hook", None)
        if hook is not None:
            hook(progress, step)


def extra_loss(model: nn.Module) -> torch.Tensor | float:
    total: torch.Tensor | float = 0.0
    for m in model.modules():
        fn = getattr(m, "extra_loss", None)
        if fn is not None:
            total = total + fn()
    return total
