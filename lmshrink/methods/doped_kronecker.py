"""Doped Kronecker products with co-matrix dropout regularisation (CMR).

Thakker, Whatmough, Liu, Mattina, Beu, "Compressing Language Models using Doped Kronecker Products"
(arXiv:2001.08896, 2020) and its extension "Doping: A technique for extreme compression of LSTM models
using sparse structured additive matrices" (MLSys 2021):

- Eq. 1: ``W = A (x) B + S`` with S extremely sparse ("doping"): a few weights may leave the KP
  structure, which recovers the accuracy plain KP loses on large language models.
- Training: S is introduced dense and its sparsity is annealed slowly to the target (here the cubic
  schedule of Zhu & Gupta 2017, :mod:`lmshrink.train.schedules`), keeping the largest |S|.
- Co-matrix adaptation (CMA): as S is sparsified the KP part has learned to lean on entries that then
  vanish, and perplexity degrades. CMR applies dropout to the sparse matrix during training so the KP
  part keeps working without it. The fused LSTM kernel takes one weight per BPTT window, so our
  dropout masks live on S, one per window, at a granularity of choice: ``"element"`` (default; each
  entry of S dropped, DropConnect-style: per pre-activation the noise averages over many inputs, the
  closest weight-level match of per-token dropout on S's output), ``"row"`` (whole output units of
  ``S x``, shared by every token of the window: much harsher) or ``"matrix"`` (all of S at once, the
  KP part alone for that window). The papers' text does not pin this down; the granularity is our
  choice and a config field. CMR stops at ``cmr_until`` (default: when annealing ends): after the
  last removal there is nothing left to co-adapt to, and the dropout would only add noise. The
  default probability, 0.3, is our choice for short retraining; ``cmr`` is a config field.

Two ways to use it:
1. Compress a trained model, then retrain (``anneal=True``, the default): the KP part is the nearest
   Kronecker product of W (Van Loan & Pitsianis 1993) and S starts as the full residual ``W - A (x) B``,
   so the doped layer equals the dense one at density 1; retraining anneals S to ``density``.
2. ``anneal=False``: one shot, the ``density`` largest residual entries, packed at once.
Training the structure from scratch is (1) applied to an untrained model.

Gates: as in the paper, one KP and one S for the whole (4H, in) LSTM map, gates jointly.

Size: with ``ratio``, S gets what the KP factors leave of the budget; each kept entry costs its fp32
value plus a column index (16 bits when the input has < 32768 features), plus an int32 row pointer
per output row (CSR). ``density`` gives the final density directly instead.

How the budget is split: by default the KP part is one term of balanced factors (for a 2600x650 map,
2,602 numbers out of 1.69M) and S gets everything else, so at 25x S keeps about 2.6% of the entries
and doped KP is close to pruning with a tiny KP beside it. The papers call S "extremely sparse"
(about 1% or less) and give the structured matrix most of the budget. ``kp_share`` does that: the KP
factors get this share of the layer's budget (as many balanced terms as fit, or the factorisation
that fills it with ``terms``), S the rest; ``kp_share=0.6`` at 25x leaves S about 1% of the entries.
Measured on PTB medium at 25x (20 retraining epochs, lr 1, ``recurrent_medium_e20_kp_share.md``): every
share above the default did worse, monotonically (one term +7.64%, 0.3 +8.82%, 0.6 +11.48%, 0.8
+16.06%), with or without CMR, so the default stays one term. Our retrained LSTMs gain more from
free-standing weights than from more Kronecker terms.

The one exception is the low-rank corner of the Kronecker family: ``a_shape=[-1, 1]`` (-1: the whole output
dimension, here 4H) makes A a column and B a row, so each term ``A_t (x) B_t`` is an outer product and ``terms``
is a rank (the nearest-KP initialisation is then the truncated SVD): low rank plus sparse doping, what the MLSys
paper calls doped LMF. On PTB medium at 25x
(20 epochs, lr 0.5, ``recurrent_medium_e20_doped_lowrank*.md``) ``kp_share=0.5`` (rank 10, S 1.3% dense) reached
+5.42% (mean of three seeds: +5.81, +5.29, +5.16%), ahead of every balanced-factor doped KP (+7.64% at best) but
behind LMF alone at the same rate (+4.76%, mean of three seeds: ``recurrent_recipes.md``): at 25x the sparse part
buys less than the low-rank part it displaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..compress import LayerContext, SizeBudget, register_method
from ..errors import check
from ..layers.kronecker import DopedKroneckerLinear, index_dtype, kron_dense, nearest_kronecker
from ..train.schedules import check_schedule, nnz_for_density
from .kronecker import choose_kronecker


def sparse_bits_per_entry(in_features: int) -> int:
    return 32 + torch.iinfo(index_dtype(in_features)).bits


@dataclass
class DopedKroneckerConfig(SizeBudget):
    """Doped KP: ``ratio`` (or ``fraction``) or a final ``density`` of S; ``a_shape``/``terms`` shape
    the KP part (default: balanced factors, one term; ``a_shape=[-1, 1]``: low rank plus sparse, module doc).
    Doping schedule: S goes from ``initial_density`` to ``density`` between ``anneal_start`` and ``anneal_end``
    (fractions of the training run, <= 1), pruned every ``prune_every`` steps. CMR: dropout probability ``cmr``
    on S (elements, rows or all) until ``cmr_until`` (default ``anneal_end``). ``anneal=False`` packs S at the
    final density at once.
    ``kp_share`` (with ``ratio``/``fraction``): the share of the budget the KP factors get (module doc)."""

    density: float | None = None
    a_shape: list[int] | None = None
    terms: int | None = None
    anneal: bool = True
    initial_density: float = 1.0
    anneal_start: float = 0.0
    anneal_end: float = 0.75
    prune_every: int = 50
    cmr: float = 0.3
    cmr_until: float | None = None
    cmr_granularity: str = "element"
    kp_share: float | None = None

    def validate(self) -> None:
        self.validate_budget()
        check(self.rank is None, "doped_kronecker: 'rank' does not apply; give ratio, fraction or density")
        has_budget = self.target_ratio() is not None
        check(has_budget != (self.density is not None),
              "doped_kronecker: give exactly one of ratio/fraction (S gets the rest of the budget) or density")
        final = self.density if self.density is not None else self.initial_density
        check_schedule(self.initial_density, final, self.anneal_start, self.anneal_end, "doped_kronecker")
        check(self.terms is None or (isinstance(self.terms, int) and self.terms >= 1),
              f"doped_kronecker: terms must be a positive integer, got {self.terms!r}")
        check(isinstance(self.prune_every, int) and self.prune_every >= 1,
              f"doped_kronecker: prune_every must be a positive integer, got {self.prune_every!r}")
        check(isinstance(self.cmr, (int, float)) and 0 <= self.cmr < 1, f"doped_kronecker: cmr (dropout probability) must be in [0, 1), got {self.cmr}")
        check(self.cmr_until is None or 0 <= self.cmr_until <= 1,
              f"doped_kronecker: cmr_until {self.cmr_until} is outside training (use a fraction in [0, 1])")
        check(self.cmr_granularity in ("element", "row", "matrix"),
              f"doped_kronecker: cmr_granularity must be 'element', 'row' or 'matrix', got {self.cmr_granularity!r}")
        if self.kp_share is not None:
            check(isinstance(self.kp_share, (int, float)) and 0 < self.kp_share < 1,
                  f"doped_kronecker: kp_share (the KP factors' share of the budget) must be in (0, 1), got {self.kp_share!r}")
            check(has_budget, "doped_kronecker: kp_share splits a ratio or fraction budget; with density, size the KP "
                              "part with terms or a_shape")
        if self.a_shape is not None:
            self.a_shape = list(self.a_shape)


def doped_plan(out_f: int, in_f: int, config: DopedKroneckerConfig, where: str):
    """(A shape, B shape, terms, final nnz) for a layer; refuses budgets S cannot fit."""
    numel = out_f * in_f
    if config.kp_share is not None:
        kp_budget = config.kp_share * numel / config.target_ratio()  # fp32 numbers
        sa, sb, terms = choose_kronecker(out_f, in_f, kp_budget, config.a_shape, config.terms, where)
    else:
        sa, sb, terms = choose_kronecker(out_f, in_f, None, config.a_shape, config.terms or 1, where)
    kp_numbers = terms * (sa[0] * sa[1] + sb[0] * sb[1])
    if config.density is not None:
        nnz = nnz_for_density(config.density, numel)
    else:
        ratio = config.target_ratio()
        budget_bits = 32 * numel / ratio
        left = budget_bits - 32 * kp_numbers - 32 * (out_f + 1)
        nnz = int(left // sparse_bits_per_entry(in_f))
        check(nnz >= 1, f"{where}: at ratio {ratio:g} the KP factors ({kp_numbers} numbers) and row pointers leave no room "
                        f"for S; use a lower ratio or a smaller a_shape")
    check(nnz / numel <= config.initial_density,
          f"{where}: the final density {nnz / numel:.4g} is above initial_density {config.initial_density}; "
          f"raise initial_density or the ratio")
    total_bits = 32 * kp_numbers + 32 * (out_f + 1) + nnz * sparse_bits_per_entry(in_f)
    check(total_bits < 32 * numel, f"{where}: density {nnz / numel:.3g} stores {total_bits} bits, not fewer than the dense "
                                   f"{32 * numel}; use a lower density")
    return sa, sb, terms, nnz


@register_method("doped_kronecker", DopedKroneckerConfig, flavours=("linear",))
def doped_kronecker_compress(module: nn.Module, config: DopedKroneckerConfig, ctx: LayerContext):
    """KP (nearest Kronecker product) + sparse residual, annealed during retraining (or packed at once)."""
    W = module.weight  # (out, in)
    out_f, in_f = W.shape
    where = f"doped_kronecker on {ctx.name}"
    sa, sb, terms, nnz = doped_plan(out_f, in_f, config, where)
    final_density = nnz / (out_f * in_f)
    A, B = nearest_kronecker(W, sa, sb, terms)
    residual = (W.detach() - kron_dense(A, B)).float()  # (out, in): what the KP part misses
    common = dict(in_features=in_f, out_features=out_f, a_shape=sa, b_shape=sb, terms=terms,
                  bias=module.bias is not None, density=final_density, initial_density=config.initial_density,
                  anneal_start=config.anneal_start, anneal_end=config.anneal_end, prune_every=config.prune_every,
                  cmr=config.cmr, cmr_until=config.cmr_until, cmr_granularity=config.cmr_granularity)
    if config.anneal:
        layer = DopedKroneckerLinear(form="train", **common).to(W.device)
        layer.S.data.copy_(residual)
        if config.initial_density < 1:
            layer.set_density(config.initial_density)
    else:
        layer = DopedKroneckerLinear(form="train", **common).to(W.device)
        layer.S.data.copy_(residual)
        layer.set_density(final_density)
        layer.pack()
    layer.A.data.copy_(A)
    layer.B.data.copy_(B)
    if module.bias is not None:
        layer.bias.data.copy_(module.bias.data)
    # keep the replaced module's mode: a fresh module is in training mode, where dense_weight() applies CMR
    return layer.train(module.training)
