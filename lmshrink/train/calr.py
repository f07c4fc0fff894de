"""Cyclically Annealed Learning Rate (CALR) of Acharya et al. 2019 ("Online Embedding Compression for Text
Classification using Low Rank Matrix Factorization", Sec. 3.3), as a standard PyTorch scheduler.

CALR is a triangular cyclic learning rate (Smith 2017) between ``lr_low`` and an upper bound that is
annealed: every ``decay_every`` epochs the upper bound is multiplied by ``decay``, and once it has fallen
to ``lr_low`` it restarts at its initial value. As in the authors' code (``get_triangular_lr`` and the
epoch loop of ``train.py``), with the iteration counter ``i`` = 1, 2, ... running across epochs::

    cycle = i mod (2 * step_size);  bump = (high_e - low) / step_size
    lr_i  = low + cycle * bump                     if cycle < step_size
            high_e - (cycle - step_size) * bump    otherwise

where ``high_e`` is the upper bound of the epoch that iteration ``i`` falls in: ``high_0 = lr_high``,
``high_e = high_{e-1} * decay`` at every epoch ``e > 0`` with ``e % decay_every == 0``, reset to
``lr_high`` when ``high_e <= low``. Defaults are the paper's (Adam, LR_high = 1e-3, LR_low =
LR_high * decay^5, decay 0.1 every epoch, step 1000 iterations).

The scheduler is stepped once per optimizer step (like ``CyclicLR`` / ``OneCycleLR``) and needs the
epoch length ``steps_per_epoch`` to know where epochs end.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..errors import check


def calr_high(epoch: int, lr_high: float, lr_low: float, decay: float, decay_every: int = 1) -> float:
    """Upper bound of 0-based ``epoch`` (the authors' per-epoch update, replayed from epoch 0)."""
    high = lr_high
    for e in range(1, epoch + 1):
        if e % decay_every == 0:
            high *= decay
        if high <= lr_low * (1 + 1e-9):  # tolerance: 1e-3 * 0.1**5 in floats is not exactly 1e-8
            high = lr_high
    return high


def calr_lr(iteration: int, steps_per_epoch: int, lr_high: float = 1e-3, lr_low: float | None = None,
            step_size: int = 1000, decay: float = 0.1, decay_every: int = 1) -> float:
    """Learning rate of 1-based ``iteration`` (the i-th optimizer step)."""
    low = lr_high * decay ** 5 if lr_low is None else lr_low
    epoch = (iteration - 1) // steps_per_epoch
    high = calr_high(epoch, lr_high, low, decay, decay_every)
    bump = (high - low) / step_size
    cycle = iteration % (2 * step_size)
    return low + cycle * bump if cycle < step_size else high - (cycle - step_size) * bump


class CALR(LRScheduler):
    """CALR for any optimizer (the paper pairs it with Adam, eps = 0.01); step it after every ``optimizer.step()``.

    ``lr_high`` may be one value or one per parameter group. The learning rate before the first step is
    that of iteration 1, the first iteration of the authors' loop.
    """

    def __init__(self, optimizer: Optimizer, steps_per_epoch: int, lr_high: float | list[float] = 1e-3,
                 lr_low: float | list[float] | None = None, step_size: int = 1000, decay: float = 0.1,
                 decay_every: int = 1, last_epoch: int = -1):
        n = len(optimizer.param_groups)
        highs = list(lr_high) if isinstance(lr_high, (list, tuple)) else [float(lr_high)] * n
        lows = list(lr_low) if isinstance(lr_low, (list, tuple)) else [lr_low] * n
        check(len(highs) == n and len(lows) == n, f"CALR: give one lr_high/lr_low or one per parameter group ({n})")
        check(isinstance(steps_per_epoch, int) and steps_per_epoch >= 1, f"CALR: steps_per_epoch must be a positive int, got {steps_per_epoch}")
        check(isinstance(step_size, int) and step_size >= 1, f"CALR: step_size must be a positive int, got {step_size}")
        check(0 < decay < 1, f"CALR: decay must be in (0, 1), got {decay}")
        check(isinstance(decay_every, int) and decay_every >= 1, f"CALR: decay_every must be a positive int, got {decay_every}")
        self.lows = [h * decay ** 5 if lo is None else float(lo) for h, lo in zip(highs, lows)]
        for h, lo in zip(highs, self.lows):
            check(math.isfinite(h) and h > 0, f"CALR: lr_high must be positive, got {h}")
            check(0 <= lo < h, f"CALR: lr_low must be in [0, lr_high), got {lo} with lr_high {h}")
        self.highs, self.steps_per_epoch, self.step_size = highs, steps_per_epoch, step_size
        self.decay, self.decay_every = decay, decay_every
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, iteration: int) -> list[float]:
        return [calr_lr(iteration, self.steps_per_epoch, h, lo, self.step_size, self.decay, self.decay_every)
                for h, lo in zip(self.highs, self.lows)]

    def get_lr(self) -> list[float]:
        # last_epoch counts scheduler steps: 0 at construction, so the lr in force for optimizer step i is lr(i)
        return self._lr_at(self.last_epoch + 1)

    def _get_closed_form_lr(self) -> list[float]:
        return self._lr_at(self.last_epoch + 1)
