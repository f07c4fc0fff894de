"""Magnitude pruning: one-shot, or gradual during retraining (AGP), stored sparse; gate-aware for LSTM maps.

- One-shot (``schedule="oneshot"``): keep the largest-|w| entries, drop the rest (Han et al. 2015 style
  magnitude pruning; the pruning baseline of GroupReduce, Chen et al. 2018, Sec. 4), store CSR
  (:class:`~lmshrink.layers.SparseLinear` / ``SparseEmbedding``); the kept values stay trainable.
- Gradual (``schedule="agp"``): Zhu & Gupta 2017, Eq. 1, ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3``
  over training progress ``[agp_start, agp_end]``, pruning every ``prune_every`` optimizer steps through
  the ``training_step_hook`` protocol; masks only grow (a pruned weight stays pruned). The layer is a
  :class:`~lmshrink.layers.MaskedLinear` while training; :func:`finalize_pruning_` turns it into the CSR
  layer afterwards (call it before saving; its exact final sparsity is reached at ``agp_end``).
- Gate-aware: when the module is an LSTM map (``LayerContext.num_gates == 4``: the (4H, in) weight is the
  i, f, g, o gate matrices stacked along the output axis) every gate is pruned to the same sparsity on
  its own, never ranking one gate's weights against another's.

Size: ``density`` (kept share of the weights), or ``ratio`` / ``fraction`` in theoretical bits against
dense fp32, where a kept weight costs 32 bits of value + its column index (8/16/32 bits) and each row
its non-zero count. ``granularity="row"`` keeps the same number of weights in every row instead of
ranking the whole layer (or gate) at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..compress import LayerContext, SizeBudget, register_method, replace_modules_
from ..errors import check
from ..layers.sparse import (MaskedEmbedding, MaskedLinear, SparseEmbedding, SparseLinear, _MaskedBase, col_dtype,
                             count_dtype, dtype_bits, keep_count, magnitude_mask, sparse_bits)


@dataclass
class PruneConfig(SizeBudget):
    """Budget (density, ratio or fraction) + schedule (oneshot | agp) + granularity (layer | row)."""

    density: float | None = None
    schedule: str = "oneshot"
    granularity: str = "layer"
    gate_aware: bool = True
    initial_density: float = 1.0  # AGP: density at agp_start (1 - s_i)
    agp_start: float = 0.0  # AGP: training progress (0..1) where pruning starts
    agp_end: float = 0.75  # AGP: progress where the final density is reached
    prune_every: int = 10  # AGP: optimizer steps between mask updates (dt)

    def validate(self) -> None:
        self.validate_budget()
        check(self.rank is None, "prune: a rank does not apply; give density, ratio or fraction")
        given = [n for n in ("density", "ratio", "fraction") if getattr(self, n) is not None]
        check(len(given) == 1, f"prune: give exactly one of density, ratio, fraction (got {', '.join(given) or 'none'})")
        if self.density is not None:
            check(0 < self.density < 1, f"prune: density must be in (0, 1), got {self.density}")
        check(self.schedule in ("oneshot", "agp"), f"prune: schedule must be 'oneshot' or 'agp', got {self.schedule!r}")
        check(self.granularity in ("layer", "row"), f"prune: granularity must be 'layer' or 'row', got {self.granularity!r}")
        check(0 < self.initial_density <= 1, f"prune: initial_density must be in (0, 1], got {self.initial_density}")
        check(0 <= self.agp_start <= self.agp_end <= 1, f"prune: need 0 <= agp_start <= agp_end <= 1, got {self.agp_start}, {self.agp_end}")
        check(isinstance(self.prune_every, int) and self.prune_every >= 1, f"prune: prune_every must be a positive integer, got {self.prune_every}")


def groups_for(rows: int, config: PruneConfig, ctx: LayerContext) -> int:
    """Row groups ranked separately: each row, each gate block (LSTM maps), or the whole layer."""
    if config.granularity == "row":
        return rows
    if config.gate_aware and ctx.num_gates > 1:
        check(rows % ctx.num_gates == 0, f"prune on {ctx.name}: {rows} rows do not split into {ctx.num_gates} gates")
        return ctx.num_gates
    return 1


def keep_per_group(rows: int, cols: int, groups: int, config: PruneConfig, dense_bits: int, where: str) -> int:
    """Kept entries per group meeting the budget; refuses budgets that cannot be met or do not shrink."""
    numel_g = rows * cols // groups
    max_smaller = (dense_bits - rows * dtype_bits(count_dtype(cols)) - 1) // (32 + dtype_bits(col_dtype(cols)))
    if config.density is not None:
        keep = keep_count(numel_g, config.density)
    else:
        ratio = config.target_ratio()
        budget = dense_bits / ratio
        nnz = int((budget - rows * dtype_bits(count_dtype(cols))) // (32 + dtype_bits(col_dtype(cols))))
        keep = nnz // groups
        largest = dense_bits / sparse_bits(rows, cols, groups)
        check(keep >= 1, f"{where}: ratio {ratio:g} leaves no weight in some {'row' if groups == rows else 'group'}; "
                         f"the largest reachable ratio is {largest:.1f}")
    nnz = keep * groups
    bits = sparse_bits(rows, cols, nnz)
    check(bits < dense_bits, f"{where}: keeping {nnz:,} of {rows * cols:,} weights stores {bits:,} bits, not fewer than the "
                             f"dense {dense_bits:,} (values + column indices); use density <= {max_smaller / (rows * cols):.3f}")
    return keep


@register_method("prune", PruneConfig)
def prune_compress(module: nn.Module, config: PruneConfig, ctx: LayerContext):
    """Magnitude pruning to a density or ratio, one-shot or AGP, stored CSR; gate-aware on LSTM maps."""
    W = module.weight.detach()  # (rows, cols): (V, D) embedding or (out, in) linear
    rows, cols = W.shape
    where = f"prune on {ctx.name}"
    groups = groups_for(rows, config, ctx)
    keep = keep_per_group(rows, cols, groups, config, ctx.dense_bits(module), where)
    bias = getattr(module, "bias", None)
    if config.schedule == "oneshot":
        mask = magnitude_mask(W, keep, groups)
        if ctx.flavour == "embedding":
            layer = SparseEmbedding(rows, cols, keep * groups)
        else:
            layer = SparseLinear(cols, rows, keep * groups, bias=bias is not None)
        layer = layer.to(W.device)
        layer.set_from_dense(W, mask)
    else:
        sched = dict(final_keep=keep, groups=groups, initial_density=config.initial_density, start=config.agp_start,
                     end=config.agp_end, prune_every=config.prune_every)
        if ctx.flavour == "embedding":
            layer = MaskedEmbedding(rows, cols, **sched)
        else:
            layer = MaskedLinear(cols, rows, **sched, bias=bias is not None)
        layer = layer.to(W.device)
        layer.weight.data.copy_(W)
        if config.initial_density < 1:
            layer.prune_to_keep(max(keep, keep_count(rows * cols // groups, config.initial_density)))
    if bias is not None and ctx.flavour != "embedding":
        layer.bias.data.copy_(bias.detach())
    return layer


def finalize_pruning_(model: nn.Module) -> list[str]:
    """Replace every AGP training-time layer by its compact CSR layer (in place). Returns the names.

    Call after retraining and before saving or measuring. Tied softmaxes are re-bound to the new layer.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, _MaskedBase)]
    return replace_modules_(model, names, lambda m: m.finalize())


def gate_densities(layer: nn.Module, num_gates: int = 4) -> list[float]:
    """Density of each gate block of a pruned (4H, in) map, from its dense weight."""
    W = layer.dense_weight().detach()
    return [float((g != 0).float().mean()) for g in W.chunk(num_gates, 0)]


__all__ = ["PruneConfig", "finalize_pruning_", "gate_densities", "magnitude_mask"]
