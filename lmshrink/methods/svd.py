"""Truncated-SVD low rank: the plain baseline of Chen et al. 2018 (GroupReduce, Sec. 4) and the
initialisation of online low-rank training (Acharya et al. 2019, Sec. 3.1).

By Eckart-Young, ``W_r = U_r S_r V_r^T`` is the best rank-r approximation in Frobenius norm; we store
``A = U_r S_r^{1/2}`` (m, r) and ``B = S_r^{1/2} V_r^T`` (r, n), splitting the singular values evenly so
both factors have the same scale when they are retrained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..compress import LayerContext, SizeBudget, register_method
from ..errors import check
from ..layers import LowRankEmbedding, LowRankLinear


def rank_for_budget(m: int, n: int, budget: SizeBudget, where: str, value_bits: int = 32) -> int:
    """Rank r of an (m, n) matrix factorized as (m, r)(r, n) that meets ``budget``.

    A ratio R keeps ``r (m + n) value_bits <= 32 m n / R``. Refuses ranks that leave the layer no
    smaller than dense (``r >= m n / (m + n)``) and names the largest rank that would be smaller.
    """
    largest_smaller = (m * n - 1) // (m + n)  # largest r with r (m + n) < m n
    if budget.rank is not None:
        r = budget.rank
    else:
        ratio = budget.target_ratio()
        check(ratio is not None, f"{where}: give a rank, ratio or fraction")
        r = int((32 * m * n / ratio) // ((m + n) * value_bits))
        check(r >= 1, f"{where}: ratio {ratio:g} needs rank < 1 for a {m}x{n} matrix; the largest ratio with "
                      f"rank 1 is {32 * m * n / ((m + n) * value_bits):.1f}")
    check(r <= min(m, n), f"{where}: rank {r} exceeds min(m, n) = {min(m, n)} of the {m}x{n} weight")
    check(r <= largest_smaller, f"{where}: rank {r} would store {r * (m + n)} numbers, not fewer than the dense "
                                f"{m * n}; use rank <= {largest_smaller}")
    return r


def svd_factors(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, n) -> A (m, r), B (r, n) with A @ B the best rank-r approximation. Computed in float64."""
    U, S, Vh = torch.linalg.svd(W.detach().double(), full_matrices=False)
    root = S[:rank].sqrt()
    return (U[:, :rank] * root).to(W.dtype), (root[:, None] * Vh[:rank]).to(W.dtype)


@dataclass
class SVDConfig(SizeBudget):
    """Truncated SVD to a rank, a kept fraction of the bits, or a compression ratio."""

    def validate(self) -> None:
        self.validate_budget()
        check(any(v is not None for v in (self.rank, self.ratio, self.fraction)), "svd: give rank, ratio or fraction")


@register_method("svd", SVDConfig)
def svd_compress(module: nn.Module, config: SVDConfig, ctx: LayerContext):
    """Truncated SVD into two trainable factors."""
    W = module.weight  # (V, D) embedding or (out, in) linear
    m, n = W.shape
    r = rank_for_budget(m, n, config, f"svd on {ctx.name}")
    A, B = svd_factors(W, r)
    if ctx.flavour == "embedding":
        layer = LowRankEmbedding(m, n, r)
    else:
        layer = LowRankLinear(n, m, r, bias=module.bias is not None)
        if module.bias is not None:
            layer.bias.data.copy_(module.bias.data)
    layer.A.data.copy_(A)
    layer.B.data.copy_(B)
    return layer.to(W.device)
