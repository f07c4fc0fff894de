"""Tensor-train compression of linear maps (Grachev, Ignatov & Savchenko 2019, "Compression of
recurrent neural networks for efficient language modeling", Applied Soft Computing 79, Sec. 3.3;
the TT-matrix format of Novikov et al. 2015, "Tensorizing Neural Networks", Eq. 4), initialised by
TT-SVD (Oseledets 2011, Alg. 1) through TensorLy.

Gates: the (4H, in) LSTM map is one TT-matrix (gates jointly), as in Grachev et al., who tensorize the
LSTM's weight matrices whole.

Modes: ``in_modes``/``out_modes`` give the factorisations of the input and output sizes; otherwise
each size is split into ``cores`` factors as equal as possible (prime factors dealt, largest first,
to the smallest factor so far), both sorted ascending. Ranks: ``ranks`` (one int for every inner
rank, or the inner list r_1..r_{d-1}), else the largest uniform rank whose cores fit the budget;
ranks are capped at their maximum (the rank of the matching unfolding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

from ..compress import LayerContext, SizeBudget, register_method
from ..errors import check
from ..layers.tensor_train import TTLinear, tt_max_ranks, tt_params, tt_svd


def prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def split_modes(n: int, d: int) -> list[int]:
    """n as d factors, as equal as possible, ascending (trailing factors may be 1 for small n)."""
    buckets = [1] * d
    for p in sorted(prime_factors(n), reverse=True):
        i = min(range(d), key=lambda k: buckets[k])
        buckets[i] *= p
    return sorted(buckets)


def tt_ranks_for(out_modes, in_modes, ranks, budget_numbers, where: str) -> list[int]:
    d = len(out_modes)
    cap = tt_max_ranks(out_modes, in_modes)
    if ranks is not None:
        inner = [ranks] * (d - 1) if isinstance(ranks, int) else list(ranks)
        check(len(inner) == d - 1, f"{where}: give {d - 1} inner TT ranks for {d} cores, got {len(inner)}")
        for k, (r, c) in enumerate(zip(inner, cap[1:-1])):
            check(isinstance(r, int) and r >= 1, f"{where}: TT ranks must be positive integers, got {r!r}")
            check(r <= c, f"{where}: TT rank r_{k + 1} = {r} exceeds its maximum {c} for modes {out_modes} x {in_modes}; "
                          f"use r_{k + 1} <= {c}")
        full = [1] + inner + [1]
    else:
        best = None
        for r in range(1, max(cap) + 1):
            full = [1] + [min(r, c) for c in cap[1:-1]] + [1]
            if tt_params(out_modes, in_modes, full) > budget_numbers:
                break
            best = full
        check(best is not None, f"{where}: even TT rank 1 ({tt_params(out_modes, in_modes, [1] * (d + 1))} numbers) exceeds "
                                f"the budget of {(budget_numbers if budget_numbers is None else int(budget_numbers))}; use a lower ratio or more cores")
        full = best
    return full


@dataclass
class TTConfig(SizeBudget):
    """TT-matrix: ``ratio``/``fraction`` (or ``ranks``) size it; ``cores`` (default 3) or explicit
    ``in_modes``/``out_modes`` shape it. ``rank`` (SizeBudget) is a uniform inner rank."""

    ranks: list[int] | None = None
    cores: int = 3
    in_modes: list[int] | None = None
    out_modes: list[int] | None = None

    def validate(self) -> None:
        self.validate_budget()
        check(isinstance(self.cores, int) and self.cores >= 2, f"tt: cores must be an integer >= 2, got {self.cores!r}")
        check(not (self.rank is not None and self.ranks is not None), "tt: give rank (uniform) or ranks (list), not both")
        check(self.rank is not None or self.ranks is not None or self.target_ratio() is not None,
              "tt: give a ratio, fraction, rank or ranks")
        check((self.in_modes is None) == (self.out_modes is None), "tt: give both in_modes and out_modes, or neither")
        if self.in_modes is not None:
            check(len(self.in_modes) == len(self.out_modes) >= 2,
                  f"tt: in_modes and out_modes need the same length >= 2, got {self.in_modes} and {self.out_modes}")


@register_method("tt", TTConfig, flavours=("linear",))
def tt_compress(module: nn.Module, config: TTConfig, ctx: LayerContext):
    """TT-SVD of the weight into trainable TT cores."""
    W = module.weight  # (out, in)
    out_f, in_f = W.shape
    where = f"tt on {ctx.name}"
    if config.in_modes is not None:
        in_modes, out_modes = list(config.in_modes), list(config.out_modes)
        check(math.prod(in_modes) == in_f and math.prod(out_modes) == out_f,
              f"{where}: modes {out_modes} x {in_modes} multiply to {math.prod(out_modes)}x{math.prod(in_modes)}, "
              f"not the weight's {out_f}x{in_f}")
    else:
        in_modes, out_modes = split_modes(in_f, config.cores), split_modes(out_f, config.cores)
    ratio = config.target_ratio()
    budget = out_f * in_f / ratio if ratio is not None else None
    ranks = config.ranks if config.ranks is not None else config.rank
    full = tt_ranks_for(out_modes, in_modes, ranks, budget, where)
    numbers = tt_params(out_modes, in_modes, full)
    check(numbers < out_f * in_f, f"{where}: TT ranks {full[1:-1]} store {numbers} numbers, not fewer than the dense "
                                  f"{out_f * in_f}; use smaller ranks")
    layer = TTLinear(in_f, out_f, in_modes, out_modes, full, bias=module.bias is not None)
    for core, init in zip(layer.cores, tt_svd(W, out_modes, in_modes, full)):
        core.data.copy_(init)
    if module.bias is not None:
        layer.bias.data.copy_(module.bias.data)
    return layer.to(W.device)
