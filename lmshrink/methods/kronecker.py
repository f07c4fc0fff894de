"""Kronecker-product compression of linear maps (Thakker et al. 2019, "Compressing RNNs for IoT
devices by 15-38x using Kronecker products", Sec. 3), the structured part of doped KP (Thakker et al.
2020, "Compressing Language Models using Doped Kronecker Products", arXiv:2001.08896).

``W (m1 m2, n1 n2) ~ sum_{t<T} A_t (x) B_t`` with A_t (m1, n1), B_t (m2, n2), initialised by the
nearest-Kronecker-product SVD of Van Loan & Pitsianis (1993) and trainable afterwards.

Gates: an LSTM map (in -> 4H) is compressed *jointly*, one KP for the full (4H, in) matrix, as the
paper's KP-LSTM does; the factor shapes need not respect the gate blocks (a per-gate KP would spend
4x the factor numbers for the same shapes).

Shapes: ``a_shape`` = (m1, n1) picks them; otherwise, with no ``terms`` given, the factorisation with
the fewest numbers per term (balanced factors) gets as many terms as the budget allows; with ``terms``
given, the factorisation that uses most of the budget with that many terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..compress import LayerContext, SizeBudget, register_method
from ..errors import check
from ..layers.kronecker import (KroneckerLinear, balanced_kronecker_shape, kronecker_shapes, max_kronecker_terms,
                                nearest_kronecker)


def _n(budget) -> str:
    return "unlimited" if budget is None else str(int(budget))


def valid_a_shape(a_shape) -> bool:
    """Two entries, each a positive integer or -1 (the layer's whole dimension)."""
    return (isinstance(a_shape, (list, tuple)) and len(a_shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1) for v in a_shape))


def check_factor_shape(out_features: int, in_features: int, a_shape, where: str):
    """(A shape, B shape) from a user's ``a_shape`` = [m1, n1]; refuses shapes that do not divide.

    -1 stands for the layer's whole dimension, so one plan fits maps of different sizes: ``[-1, 1]`` makes A a
    column (out x 1) and B a row (1 x in), every term an outer product, and ``terms`` a rank (low rank as a
    Kronecker sum; the nearest-KP initialisation is then the truncated SVD)."""
    check(valid_a_shape(a_shape), f"{where}: a_shape must be two positive integers (or -1 for the whole dimension) "
                                  f"[m1, n1], got {a_shape!r}")
    m1, n1 = (out_features if a_shape[0] == -1 else a_shape[0]), (in_features if a_shape[1] == -1 else a_shape[1])
    ok_m = [d for d in range(1, out_features + 1) if out_features % d == 0]
    ok_n = [d for d in range(1, in_features + 1) if in_features % d == 0]
    check(out_features % m1 == 0 and in_features % n1 == 0,
          f"{where}: factor A of shape {m1}x{n1} does not divide the {out_features}x{in_features} weight "
          f"(m1 must divide {out_features}: {ok_m[:12]}...; n1 must divide {in_features}: {ok_n[:12]}...)")
    return (m1, n1), (out_features // m1, in_features // n1)


def choose_kronecker(out_features: int, in_features: int, budget_numbers: float | None, a_shape=None,
                     terms: int | None = None, where: str = "kronecker"):
    """Pick (A shape, B shape, T) for a budget of ``budget_numbers`` stored numbers (None: no budget)."""
    dense = out_features * in_features
    if a_shape is not None:
        sa, sb = check_factor_shape(out_features, in_features, a_shape, where)
        per = sa[0] * sa[1] + sb[0] * sb[1]
        if terms is None:
            terms = 1 if budget_numbers is None else int(budget_numbers // per)
            check(terms >= 1, f"{where}: one Kronecker term of A {sa} and B {sb} needs {per} numbers, over the budget of "
                              f"{_n(budget_numbers)}; give a smaller a_shape or a lower ratio")
            terms = min(terms, max_kronecker_terms(sa, sb))
        shape = (sa, sb)
    else:
        shapes = kronecker_shapes(out_features, in_features)
        check(bool(shapes), f"{where}: a {out_features}x{in_features} weight has no non-trivial Kronecker factorisation")
        if terms is None:
            shape = balanced_kronecker_shape(out_features, in_features)
            per = shape[0][0] * shape[0][1] + shape[1][0] * shape[1][1]
            terms = 1 if budget_numbers is None else int(budget_numbers // per)
            check(terms >= 1, f"{where}: even the smallest Kronecker term ({per} numbers, A {shape[0]}, B {shape[1]}) "
                              f"exceeds the budget of {_n(budget_numbers)} numbers; use a lower ratio")
            terms = min(terms, max_kronecker_terms(*shape))
        else:
            fits = [s for s in shapes if budget_numbers is None or terms * (s[0][0] * s[0][1] + s[1][0] * s[1][1]) <= budget_numbers]
            check(bool(fits), f"{where}: no factorisation of the {out_features}x{in_features} weight fits {terms} terms in "
                              f"{_n(budget_numbers)} numbers; use fewer terms or a lower ratio")
            if budget_numbers is None:
                shape = balanced_kronecker_shape(out_features, in_features)
            else:
                shape = max(fits, key=lambda s: (s[0][0] * s[0][1] + s[1][0] * s[1][1], -abs(s[0][0] * s[0][1] - s[1][0] * s[1][1])))
    sa, sb = shape
    check(isinstance(terms, int) and terms >= 1, f"{where}: terms must be a positive integer, got {terms}")
    limit = max_kronecker_terms(sa, sb)
    check(terms <= limit, f"{where}: {terms} Kronecker terms exceed the maximum {limit} for A {sa}, B {sb} "
                          f"(the Kronecker rank of the weight); use terms <= {limit}")
    numbers = terms * (sa[0] * sa[1] + sb[0] * sb[1])
    check(numbers < dense, f"{where}: {terms} term(s) of A {sa}, B {sb} store {numbers} numbers, not fewer than the "
                           f"dense {dense}; use fewer terms")
    if budget_numbers is not None:
        check(numbers <= budget_numbers + 1e-9, f"{where}: {terms} term(s) of A {sa}, B {sb} store {numbers} numbers, over "
                                                f"the budget of {_n(budget_numbers)}")
    return sa, sb, terms


@dataclass
class KroneckerConfig(SizeBudget):
    """Kronecker product ``sum_t A_t (x) B_t``. ``ratio``/``fraction`` size it; ``rank`` is not used
    (give ``terms``). ``a_shape`` = [m1, n1] fixes A's shape (B's follows; -1: the whole dimension, see
    :func:`check_factor_shape`); ``terms`` the number of terms."""

    a_shape: list[int] | None = None
    terms: int | None = None

    def validate(self) -> None:
        self.validate_budget()
        check(self.rank is None, "kronecker: 'rank' does not apply; give terms (number of Kronecker terms) or a ratio")
        check(self.terms is None or (isinstance(self.terms, int) and self.terms >= 1),
              f"kronecker: terms must be a positive integer, got {self.terms!r}")
        check(self.a_shape is not None or self.terms is not None or self.target_ratio() is not None,
              "kronecker: give a ratio, fraction, terms or a_shape")
        if self.a_shape is not None:
            check(valid_a_shape(self.a_shape),
                  f"kronecker: a_shape must be two positive integers (or -1 for the whole dimension) [m1, n1], "
                  f"got {self.a_shape!r}")
            self.a_shape = list(self.a_shape)


@register_method("kronecker", KroneckerConfig, flavours=("linear",))
def kronecker_compress(module: nn.Module, config: KroneckerConfig, ctx: LayerContext):
    """Nearest Kronecker product (sum of terms) of the weight, factors trainable."""
    W = module.weight  # (out, in)
    out_f, in_f = W.shape
    ratio = config.target_ratio()
    budget = None if ratio is None else out_f * in_f / ratio
    sa, sb, terms = choose_kronecker(out_f, in_f, budget, config.a_shape, config.terms, f"kronecker on {ctx.name}")
    layer = KroneckerLinear(in_f, out_f, sa, sb, terms, bias=module.bias is not None)
    A, B = nearest_kronecker(W, sa, sb, terms)
    layer.A.data.copy_(A)
    layer.B.data.copy_(B)
    if module.bias is not None:
        layer.bias.data.copy_(module.bias.data)
    return layer.to(W.device)
