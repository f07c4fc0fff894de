"""Tensor-train compression of linear maps (Grachev, Ignatov & Savchenko 2019, "Compression of
recurrent neural networks for efficient language modeling", Applied Soft Computing 79, Sec. 3.3;
the TT-matrix format of Novikov et al. 2015, "Tensorizing Neural Networks", Eq. 4), initialised by
TT-SVD (Oseledets 2011, Alg. 1) through TensorLy.

Gates: the (4H, in) LSTM map is one TT-matrix (gates jointly), as in Grachev et al., who tensorize the
LSTM's weight matrices whole.

Modes: ``in_modes``/``out_modes`` give the factorisations of the input and output sizes, used as
given; otherwise each size is split into ``cores`` factors as equal as possible (prime factors dealt,
largest first, to the smallest factor so far) and ``order`` arranges them:

- ``"ascending"``: both sorted ascending (the only rule before ``order`` existed; kept so that old
  results can be reproduced).
- ``"fast"`` (default): the arrangement whose matrix-vector product costs the fewest multiply-adds
  (:func:`~lmshrink.layers.tensor_train.tt_matvec_macs` on one row) at the ranks it gets, among the
  arrangements that store at least 97% (``PARAMS_SLACK``) of the numbers the ascending order stores
  within the budget (speed without giving up capacity against the previous default). Candidates are every distinct permutation of the in-factors times every distinct
  permutation of the out-factors for ``cores`` <= 4, else the four ascending/descending combinations.
  Each candidate gets its own ranks (the budget's largest uniform rank, capped for that order, or the
  given ranks; an order whose caps the given ranks exceed is skipped). Ties go to the candidate storing
  more numbers, then to the ascending order, then to the lexicographically smaller modes.

Why: ``tt_matvec`` contracts x one core at a time, and step k costs
rows * m_1..m_{k-1} * r_{k-1} * n_k * n_{k+1}..n_d * m_k * r_k multiply-adds (m: out-modes, n: in-modes,
r: ranks). Ascending in-modes keep the largest input factors waiting until last, so the middle steps
carry both a large n_{k+1}..n_d and a rank on each side: on a 2600x650 LSTM map at 25x with 3 cores,
ascending modes cost 4.9x the dense MACs, the fast order 1.9x. The order of the modes is a free
choice of the TT-matrix format (Novikov et al. 2015, Sec. 3: row and column indices are mapped to
multi-indices by any bijection, so any factorisation of the sizes, in any order, tensorizes the same W),
but it changes which unfoldings TT-SVD truncates (the k-th unfolding groups (m_1 n_1 .. m_k n_k) against
the rest), so the reconstruction error at a given budget, and hence the accuracy before retraining, can
move either way. Why the parameter floor: the order with the fewest MACs outright is often one with a
large factor in the middle core, whose r^2 term buys lower ranks (2600x650: ranks 15 against 21, 61.0k
against 63.8k numbers) for little real speed. Measured on PTB small after one epoch (800x200 maps, 25x,
3 cores, before retraining; pooled relative TT-SVD error, test perplexity, dense 180.6):

- ascending [8,10,10] x [5,5,8], ranks 10, 2.50x the dense MACs: 0.939, 738.0;
- fewest MACs outright [8,10,10] x [5,8,5], ranks 8, 1.56x: 0.945, 744.0;
- fewest MACs at >= 97% of ascending's numbers (the rule) [8,10,10] x [8,5,5], ranks 10, 1.60x: 0.941,
  729.7. On one thread, a 2600x650 map takes 191-202 us in that order against 206-209 us for the
  cheapest outright and 349-367 us ascending (dense 137-151 us).

After retraining (PTB medium, 25x, 10 epochs at lr 0.2 -> 0.005, both orders in one run; H100 logs of stop 17):
this rule's order 100.90 (+21.54%, 26.1x) against ascending 100.36 (+20.88%, 25.5x), at 1.14 against 2.14 ms
per token on one CPU thread at batch 1 (dense 1.23). PTB large, same recipe: 150.86 (+92.09%) against 148.40
(+88.95%), 8.49 against 37.55 ms per token (dense 7.15); that fast-order model's validation perplexity was
erratic (275 against test 151), which ``benchmarks/results/logs/2026-11-23m`` leaves open.

Ranks: ``ranks`` (one int for every inner rank, or the inner list r_1..r_{d-1}), else the largest
uniform rank whose cores fit the budget; ranks are capped at their maximum (the rank of the matching
unfolding).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch.nn as nn

from ..compress import LayerContext, SizeBudget, register_method
from ..errors import LmshrinkError, check
from ..layers.tensor_train import TTLinear, tt_matvec_macs, tt_max_ranks, tt_params, tt_svd

ORDERS = ("fast", "ascending")
PARAMS_SLACK = 0.03  # "fast" considers the orders storing at least 97% of the numbers the ascending order stores


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


def mode_orders(in_modes, out_modes) -> list[tuple[list[int], list[int]]]:
    """Candidate (in_modes, out_modes) arrangements, the given (ascending) one first.

    All distinct permutations up to 4 cores (at most 24 x 24 = 576 candidates, each a cheap rank search);
    beyond that the count explodes (5 cores: 14,400), so only ascending/descending combinations.
    """
    if len(in_modes) <= 4:
        ins = sorted(set(itertools.permutations(in_modes)))
        outs = sorted(set(itertools.permutations(out_modes)))
    else:
        ins = sorted({tuple(in_modes), tuple(reversed(in_modes))})
        outs = sorted({tuple(out_modes), tuple(reversed(out_modes))})
    first = (list(in_modes), list(out_modes))
    return [first] + [(list(i), list(o)) for i in ins for o in outs if (list(i), list(o)) != first]


def fast_modes(in_modes, out_modes, ranks, budget_numbers, dense_numbers: int, where: str):
    """The candidate of :func:`mode_orders` with the fewest ``tt_matvec`` MACs at one row, among those that
    store at least ``1 - PARAMS_SLACK`` of the numbers the ascending order stores (of the most any candidate
    stores, where the ascending order fails).

    Each candidate is sized on its own (the caps, hence the budget's ranks, depend on the order).
    Candidates whose ranks fail (given ranks over their caps, budget below rank 1, no saving over dense)
    are skipped; if all fail, the ascending order is returned so the caller raises its usual error.
    Among the rest: fewest MACs, then most numbers, then the ascending order, then the smaller modes, so
    the choice is deterministic.
    """
    cands = []
    for idx, (i_m, o_m) in enumerate(mode_orders(in_modes, out_modes)):
        try:
            full = tt_ranks_for(o_m, i_m, ranks, budget_numbers, where)
        except LmshrinkError:
            continue
        numbers = tt_params(o_m, i_m, full)
        if numbers < dense_numbers:
            cands.append(((tt_matvec_macs(o_m, i_m, full), -numbers, idx != 0, o_m, i_m), i_m, o_m))
    if not cands:
        return list(in_modes), list(out_modes)
    # the cheapest order outright often buys its MACs with lower ranks (a large middle factor makes r^2
    # costly): speed may not cost capacity against the ascending order, the default before this rule
    asc = [-key[1] for key, _, _ in cands if not key[2]]
    floor = (1 - PARAMS_SLACK) * (asc[0] if asc else max(-key[1] for key, _, _ in cands))
    _, i_m, o_m = min(c for c in cands if -c[0][1] >= floor)
    return i_m, o_m


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
    ``in_modes``/``out_modes`` shape it. ``rank`` (SizeBudget) is a uniform inner rank. ``order``
    ("fast" or "ascending") arranges split modes; explicit modes are used as given (module docstring)."""

    ranks: list[int] | None = None
    cores: int = 3
    in_modes: list[int] | None = None
    out_modes: list[int] | None = None
    order: str = "fast"

    def validate(self) -> None:
        self.validate_budget()
        check(isinstance(self.cores, int) and self.cores >= 2, f"tt: cores must be an integer >= 2, got {self.cores!r}")
        check(self.order in ORDERS, f"tt: order must be one of {', '.join(map(repr, ORDERS))}, got {self.order!r}")
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
    ratio = config.target_ratio()
    budget = out_f * in_f / ratio if ratio is not None else None
    ranks = config.ranks if config.ranks is not None else config.rank
    if config.in_modes is not None:
        in_modes, out_modes = list(config.in_modes), list(config.out_modes)
        check(math.prod(in_modes) == in_f and math.prod(out_modes) == out_f,
              f"{where}: modes {out_modes} x {in_modes} multiply to {math.prod(out_modes)}x{math.prod(in_modes)}, "
              f"not the weight's {out_f}x{in_f}")
    else:
        in_modes, out_modes = split_modes(in_f, config.cores), split_modes(out_f, config.cores)
        if config.order == "fast":
            in_modes, out_modes = fast_modes(in_modes, out_modes, ranks, budget, out_f * in_f, where)
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
