"""Uniform k-bit quantization (k = 2..8) of a dense weight or of the factors of a factorized layer.

Codes are uniform and asymmetric per group of ``group_size`` consecutive values along a row (``None``:
one group per row), ``x ~ min + scale * q`` with fp16 (scale, min) per group, bit-packed in uint8
buffers (:mod:`lmshrink.layers.packing`) and unpacked on every call with vectorized shifts.

Three ways in:
- ``quantize`` alone on a dense layer: ``bits`` given, or derived from ``ratio`` / ``fraction`` as the
  most bits (2..8) whose packed size meets the budget;
- ``quantize`` with ``base = {method = "groupreduce", ...}`` (or ``svd``): run the base method on
  quantized factors. With ``ratio`` given here it is the *overall* target, met exactly: GroupReduce
  sizes its ranks for the packed factors (about 6.7x in float terms at 26x and 8 bits, the paper's
  GroupReduce + quantization, Chen et al. 2018, Sec. 4); SVD gets the largest rank whose packed
  factors fit;
- :func:`quantize_model_` on a model whose factorized layers were already retrained: quantize after
  retraining, which is the order we recommend (and the benchmark uses). There is no straight-through
  estimator: codes are frozen; only each group's (scale, min) and the biases remain trainable.

Every layer built here uses the ``"balanced"`` group layout (:mod:`lmshrink.layers.packing`), and every
budget here is computed for the layout of the layer it sizes (``layout`` arguments, default balanced), so
a ratio-derived size is what gets built. ``layout="padded"`` reproduces layers of older model directories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..compress import LayerContext, MethodConfig, SizeBudget, get_method, register_method, rebind_tied
from ..errors import LmshrinkError, check
from ..layers import LowRankEmbedding, LowRankLinear
from ..layers.block_low_rank import BlockLowRankEmbedding, BlockLowRankLinear, _BlockLowRank
from ..layers.packing import DEFAULT_LAYOUT, packed_bits
from ..layers.quantized import (QuantizedEmbedding, QuantizedLinear, QuantizedLowRankEmbedding, QuantizedLowRankLinear,
                                flat_group)

FACTORIZABLE_BASES = ("svd", "groupreduce")


@dataclass
class QuantizeConfig(SizeBudget):
    """``bits`` (2..8) or a ratio/fraction; ``group_size`` values per fp16 scale; optional ``base`` method."""

    bits: int | None = None
    group_size: int | None = 128
    base: dict | None = None

    def validate(self) -> None:
        self.validate_budget()
        check(self.rank is None, "quantize: a rank does not apply here; give bits, ratio or fraction (a rank goes in base)")
        check(self.bits is None or (isinstance(self.bits, int) and 2 <= self.bits <= 8), f"quantize: bits must be an integer in 2..8, got {self.bits}")
        check(self.group_size is None or (isinstance(self.group_size, int) and self.group_size > 0 and self.group_size % 8 == 0),
              f"quantize: group_size must be a positive multiple of 8 or unset (one group per row), got {self.group_size}")
        if self.base is None:
            check((self.bits is None) != (self.target_ratio() is None),
                  "quantize: give bits, or a ratio/fraction to derive bits from (not both)")
        else:
            check(isinstance(self.base, dict) and self.base.get("method") in FACTORIZABLE_BASES,
                  f"quantize: base must be a table with method one of {', '.join(FACTORIZABLE_BASES)}, got {self.base!r}")
            self.base_config()

    def overhead_bits(self, cols: int | None = None) -> float:
        g = self.group_size if self.group_size else (cols or 128)
        return 32 / g  # fp16 scale + fp16 min per group

    def base_config(self, rows: int | None = None, cols: int | None = None,
                    layout: str = DEFAULT_LAYOUT) -> MethodConfig:
        """The base method's config. An overall ratio here is met exactly: GroupReduce gets it with ``bits``
        (it sizes its ranks for packed factors); SVD gets the largest rank whose packed factors fit."""
        d = dict(self.base)
        bits = self.bits or 8
        ratio = self.target_ratio()
        check(d.get("bits") is None and d.get("plan_bits") is None, "quantize: set bits here, not in base")
        if ratio is not None:
            check(not any(k in d for k in ("rank", "ratio", "fraction")),
                  "quantize: give the size either here (overall ratio) or in base, not both")
        if d["method"] == "groupreduce":
            d.update(bits=bits, group_size=self.group_size)
            if ratio is not None:
                d["ratio"] = ratio
        elif ratio is not None and rows is not None:
            budget = rows * cols * 32 / ratio
            r = max([0] + [r for r in range(1, min(rows, cols) + 1)
                           if packed_bits(1, rows * r, bits, flat_group(self.group_size), layout)
                           + packed_bits(r, cols, bits, self.group_size, layout) <= budget])
            check(r >= 1, f"quantize: overall ratio {ratio:g} leaves no rank for svd at {bits} bits")
            d["rank"] = r
        elif ratio is not None:
            d["ratio"] = ratio * (bits + self.overhead_bits()) / 32  # validation only (no shape known)
            check(d["ratio"] > 1, f"quantize: overall ratio {ratio:g} at {bits} bits leaves nothing for {d['method']}")
        return MethodConfig.from_dict(d)


def bits_for_ratio(rows: int, cols: int, ratio: float, group_size: int | None, where: str,
                   layout: str = DEFAULT_LAYOUT) -> int:
    dense = rows * cols * 32
    for k in range(8, 1, -1):
        if packed_bits(rows, cols, k, group_size, layout) <= dense / ratio:
            return k
    best = dense / packed_bits(rows, cols, 2, group_size, layout)
    raise LmshrinkError(f"{where}: ratio {ratio:g} needs fewer than 2 bits per weight; the largest ratio of "
                        f"2-bit codes here is {best:.1f} (combine with base = {{method = \"groupreduce\"}} to go further)")


def quantize_layer(layer: nn.Module, bits: int, group_size: int | None, flavour: str | None = None,
                   layout: str = DEFAULT_LAYOUT) -> nn.Module:
    """A quantized copy of a dense (Linear/Embedding) or factorized (low-rank, block low-rank) layer."""
    dev = next(layer.parameters()).device
    if isinstance(layer, nn.Embedding) or (flavour == "embedding" and isinstance(layer, nn.Linear)):
        V, D = layer.weight.shape
        q = QuantizedEmbedding(V, D, bits, group_size, layout=layout).to(dev)
        q.weight_q.set_(layer.weight)
    elif isinstance(layer, nn.Linear):
        q = QuantizedLinear(layer.in_features, layer.out_features, bits, group_size, layer.bias is not None,
                            layout=layout).to(dev)
        q.weight_q.set_(layer.weight)
    elif isinstance(layer, LowRankLinear):
        q = QuantizedLowRankLinear(layer.in_features, layer.out_features, layer.rank, bits, group_size,
                                   layer.bias is not None, layout=layout).to(dev)
        q.set_factors(layer.A, layer.B)
    elif isinstance(layer, LowRankEmbedding):
        q = QuantizedLowRankEmbedding(layer.num_embeddings, layer.embedding_dim, layer.rank, bits, group_size,
                                      layout=layout).to(dev)
        q.set_factors(layer.A, layer.B)
    elif isinstance(layer, _BlockLowRank):
        check(layer.nbits is None, "layer is already quantized")
        kw = dict(bits=bits, group_size=group_size, layout=layout)
        if isinstance(layer, BlockLowRankLinear):
            q = BlockLowRankLinear(layer.num_rows, layer.dim, layer.block_sizes, layer.ranks, **kw, bias=layer.bias is not None)
        else:
            q = BlockLowRankEmbedding(layer.num_rows, layer.dim, layer.block_sizes, layer.ranks, **kw)
        q = q.to(dev)
        blocks = layer.block_factors()
        q.set_factors(layer.word_pos, [u for u, _ in blocks], [v for _, v in blocks])
    else:
        raise LmshrinkError(f"quantize: cannot quantize a {type(layer).__name__} layer; it takes dense, svd or groupreduce layers")
    if getattr(layer, "bias", None) is not None and getattr(q, "bias", None) is not None:
        q.bias.data.copy_(layer.bias.data)
    return q


@register_method("quantize", QuantizeConfig)
def quantize_compress(module: nn.Module, config: QuantizeConfig, ctx: LayerContext):
    """Uniform k-bit codes (2..8, fp16 scale per group, bit-packed) of a dense layer or of a base method's factors."""
    where = f"quantize on {ctx.name}"
    layout = DEFAULT_LAYOUT  # one value for the budget and the layer it sizes
    rows, cols = module.weight.shape
    if config.base is None:
        bits = config.bits or bits_for_ratio(rows, cols, config.target_ratio(), config.group_size, where, layout)
        q = quantize_layer(module, bits, config.group_size, ctx.flavour, layout)
    else:
        base_cfg = config.base_config(rows, cols, layout)
        base = get_method(base_cfg.method).apply(module, base_cfg, ctx)
        # GroupReduce quantizes its own factors (bits passed on; it sizes and builds them in DEFAULT_LAYOUT too);
        # SVD's factors are quantized here
        q = base if isinstance(base, _BlockLowRank) else quantize_layer(base, config.bits or 8, config.group_size,
                                                                       layout=layout)
    dense = ctx.dense_bits(module)
    check(q.bits() < dense, f"{where}: {q.bits():,} bits is not fewer than the dense {dense:,}; use fewer bits or a larger group_size")
    return q


def quantize_model_(model: nn.Module, bits: int, group_size: int | None = 128, names: list[str] | None = None,
                    layout: str = DEFAULT_LAYOUT) -> list[str]:
    """Quantize the factorized layers (low-rank, block low-rank) of ``model`` in place, e.g. after retraining.

    ``names``: module names to convert (default: every svd / groupreduce layer). Returns the names done.
    ``layout``: the packed layout (keep the default: GroupReduce's ``plan_bits`` sizes ranks for it).
    """
    check(2 <= bits <= 8, f"bits must be in 2..8, got {bits}")
    done = []
    for name, m in list(model.named_modules()):
        ok = isinstance(m, (LowRankLinear, LowRankEmbedding)) or (isinstance(m, _BlockLowRank) and m.nbits is None)
        if not ok or (names is not None and name not in names):
            continue
        q = quantize_layer(m, bits, group_size, layout=layout)
        cfg = getattr(m, "method_config", None)
        q.method_config = {"method": "quantize", "bits": bits, "group_size": group_size, "base": cfg}
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
        done.append(name)
    rebind_tied(model)
    return done
