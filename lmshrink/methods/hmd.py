"""Hybrid matrix decomposition (Thakker et al. 2019, "Run-Time Efficient RNN Compression for Inference
on Edge Devices", arXiv:1906.04886, Sec. 3): the upper rows of a weight stay dense, the lower rows are
a rank-r product. Initialised from a trained W: the upper rows copied, the lower rows by truncated SVD
(Eckart-Young). Applied per gate block of an LSTM map (LayerContext.num_gates), see
:class:`~lmshrink.layers.HMDLinear`.

Size: ``dense_rows`` (per gate) and ``rank`` fix it; with a ratio and one of them the other fills the
budget; with a ratio alone, ``dense_share`` of the budget goes to dense rows and the rest to the
low-rank part (the paper's split point is a tuning knob, half the rows at its 2-4x; at 10-50x half the
budget is the analogous middle ground).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..compress import LayerContext, SizeBudget, register_method
from ..errors import check
from ..layers.hmd import HMDLinear
from .svd import svd_factors


def _n(b) -> str:
    return "unlimited" if b is None else str(int(b))


def hmd_numbers(h: int, n: int, k: int, r: int) -> int:
    """Numbers stored per gate block of h rows, n columns: k dense rows + (h - k, r) + (r, n)."""
    return k * n + (h - k) * r + r * n


def hmd_shape(h: int, n: int, gates: int, budget_numbers, dense_rows, rank, dense_share: float, where: str):
    b = None if budget_numbers is None else budget_numbers / gates  # per gate
    if dense_rows is not None:
        check(0 <= dense_rows <= h, f"{where}: dense_rows {dense_rows} is outside [0, {h}] (rows per gate)")
    if dense_rows is not None and rank is not None:
        k, r = dense_rows, rank
    elif dense_rows is not None:
        k = dense_rows
        r = int((b - k * n) // (h - k + n)) if k < h else 0
    elif rank is not None:
        r = rank
        check(r < n, f"{where}: rank {r} must be below the {n} input features")
        k = int((b - r * (h + n)) // (n - r))
        k = min(k, h)
    else:
        k = min(h, int(dense_share * b // n))
        r = int((b - k * n) // (h - k + n)) if k < h else 0
    check(k >= 0, f"{where}: rank {r} alone exceeds the budget of {_n(b)} numbers per gate; use a lower rank or ratio")
    check(r >= 1 or k == h, f"{where}: the budget of {_n(b)} numbers per gate leaves no rank for the low-rank rows "
                            f"(dense_rows {k}); use fewer dense rows or a lower ratio")
    check(r <= min(h - k, n) or k == h, f"{where}: rank {r} exceeds min(rows, cols) = {min(h - k, n)} of the low-rank part; "
                                        f"use rank <= {min(h - k, n)}")
    numbers = hmd_numbers(h, n, k, r)
    check(numbers < h * n, f"{where}: {k} dense rows and rank {r} store {numbers} numbers per gate, not fewer than the "
                           f"dense {h * n}; use fewer dense rows or a lower rank")
    if b is not None:
        check(numbers <= b + 1e-9, f"{where}: {k} dense rows and rank {r} store {numbers} numbers per gate, over the budget "
                                   f"of {_n(b)}")
    return k, r


@dataclass
class HMDConfig(SizeBudget):
    """HMD: ``ratio``/``fraction`` and/or ``dense_rows`` (per gate) and ``rank``; ``dense_share`` of
    the budget for dense rows when only a ratio is given."""

    dense_rows: int | None = None
    dense_share: float = 0.5

    def validate(self) -> None:
        self.validate_budget()
        check(0 <= self.dense_share < 1, f"hmd: dense_share must be in [0, 1), got {self.dense_share}")
        check(self.dense_rows is None or (isinstance(self.dense_rows, int) and self.dense_rows >= 0),
              f"hmd: dense_rows must be a non-negative integer, got {self.dense_rows!r}")
        has_budget = self.target_ratio() is not None
        check(has_budget or (self.dense_rows is not None and self.rank is not None),
              "hmd: give a ratio or fraction, or both dense_rows and rank")


@register_method("hmd", HMDConfig, flavours=("linear",))
def hmd_compress(module: nn.Module, config: HMDConfig, ctx: LayerContext):
    """Dense upper rows + truncated-SVD lower rows, per gate block."""
    W = module.weight  # (out, in)
    out_f, in_f = W.shape
    g = ctx.num_gates
    where = f"hmd on {ctx.name}"
    check(out_f % g == 0, f"{where}: {out_f} output rows do not split into {g} gates")
    h = out_f // g
    ratio = config.target_ratio()
    budget = None if ratio is None else out_f * in_f / ratio
    k, r = hmd_shape(h, in_f, g, budget, config.dense_rows, config.rank, config.dense_share, where)
    layer = HMDLinear(in_f, out_f, k, r, g, bias=module.bias is not None)
    blocks = W.detach().reshape(g, h, in_f)  # (g, h, in): gate blocks i, f, g, o
    with torch.no_grad():
        layer.D.copy_(blocks[:, :k])
        if r > 0:
            for j in range(g):
                U, V = svd_factors(blocks[j, k:], r)
                layer.U[j].copy_(U)
                layer.V[j].copy_(V)
        if module.bias is not None:
            layer.bias.copy_(module.bias.data)
    return layer.to(W.device)
