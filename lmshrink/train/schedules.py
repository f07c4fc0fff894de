"""Annealing schedules for structure that changes during training (doping density, CMR).

The doping matrix of a doped Kronecker layer (Thakker et al. 2021, "Doping: A technique for extreme
compression of LSTM models using sparse structured additive matrices", MLSys; first as Thakker et al.
2020, "Compressing Language Models using Doped Kronecker Products", arXiv:2001.08896) starts dense and
is sparsified *slowly* while the network trains. We anneal it with the cubic schedule of gradual
magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune", Eq. 1):

    d(t) = d_f + (d_i - d_f) * (1 - (t - t_0) / (t_1 - t_0)) ** 3      for t_0 <= t <= t_1

written here for *density* d (kept share) instead of sparsity; it removes many entries early, while
the rest of the network can still recover, and few at the end. Times are fractions of the training run
(the ``progress`` of :mod:`lmshrink.train.hooks`), so one schedule fits any number of epochs.
"""

from __future__ import annotations

import math

from ..errors import check


def check_schedule(initial: float, final: float, start: float, end: float, where: str = "schedule") -> None:
    """Refuse densities outside (0, 1], a schedule that ends after training ends, or one that ends
    before it starts. One line each, saying what would work."""
    for name, v in (("initial density", initial), ("final density", final)):
        check(isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1,
              f"{where}: {name} must be in (0, 1], got {v}")
    check(final <= initial, f"{where}: final density {final} is above the initial density {initial}; "
                            f"annealing only removes entries")
    check(0 <= start <= 1, f"{where}: anneal start must be a fraction of training in [0, 1], got {start}")
    check(end <= 1, f"{where}: anneal end {end} is after training ends (progress 1.0); use an end <= 1")
    check(start <= end, f"{where}: anneal end {end} comes before its start {start}")


def cubic_density(progress: float, initial: float, final: float, start: float, end: float, power: float = 3.0) -> float:
    """Density at ``progress`` in [0, 1] (Zhu & Gupta 2017, Eq. 1, in density form).

    ``initial`` before ``start``, exactly ``final`` from ``end`` on, a polynomial of degree ``power``
    in between (decreasing fast first, slowly last).
    """
    if progress <= start:
        return initial
    if progress >= end or end <= start:
        return final
    frac = (progress - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** power


def nnz_for_density(density: float, numel: int) -> int:
    """Number of kept entries for a density: rounded, at least 1 (a density > 0 keeps something)."""
    return max(1, min(numel, int(round(density * numel))))
