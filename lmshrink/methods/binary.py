"""Method ``binary``: an embedding table as binary codes (IIQ, Liao et al. AAAI 2020; or ITQ / sign / PCA-sign).

The table W (V, D) is quantized row-wise by :func:`lmshrink.binary.binarize` into codes ``b_w in {-1,+1}^c`` with
the affine encoder ``b = sign((w - mean) @ E)``, E (D, c). The layer decodes ``w ~ mean + s * b @ E^T`` (``s``: the
mean least-squares scale, or per word), so it outputs D-dimensional vectors and replaces the embedding of a
trained model; a tied softmax projects through the same codes. IIQ removes the top ``remove_top`` principal
directions before quantizing (the isotropy step), so those directions are absent from the decoded table too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..binary.quantizers import METHODS, binarize
from ..compress import LayerContext, MethodConfig, register_method
from ..errors import check
from ..layers.binary import BinaryEmbedding


@dataclass
class BinaryConfig(MethodConfig):
    """algorithm: iiq | itq | sign | pca-sign; bits: code length (default: the embedding dimension, 32x of the
    codes against float32); scale: global | word; remove_top: IIQ's D (default None = 'auto': the D
    that leaves the most isotropic vectors)."""

    algorithm: str = "iiq"
    bits: int | None = None
    seed: int = 0
    remove_top: int | str | None = None
    tol: float = 1e-4
    max_iter: int = 50
    scale: str = "global"

    def validate(self) -> None:
        check(self.algorithm in METHODS,
              f"binary: algorithm must be one of {', '.join(METHODS)}, got {self.algorithm!r}")
        check(self.bits is None or (isinstance(self.bits, int) and self.bits >= 1),
              f"binary: bits must be a positive integer, got {self.bits!r}")
        check(self.scale in ("global", "word"), f"binary: scale must be 'global' or 'word', got {self.scale!r}")
        check(self.remove_top is None or self.algorithm == "iiq", "binary: remove_top applies to algorithm 'iiq' only")
        check(isinstance(self.max_iter, int) and self.max_iter >= 0,
              f"binary: max_iter must be >= 0, got {self.max_iter!r}")
        check(self.tol >= 0, f"binary: tol must be >= 0, got {self.tol!r}")


@register_method("binary", BinaryConfig, flavours=("embedding",))
def binary_compress(module: nn.Module, config: BinaryConfig, ctx: LayerContext):
    """Binary codes of every row of an embedding table, decoded to its dimension on lookup."""
    W = module.weight.detach().float().cpu().numpy()  # (V, D)
    q = binarize(W, config.algorithm, config.bits, seed=config.seed, tol=config.tol, max_iter=config.max_iter,
                 remove_top=config.remove_top)
    scale = q.scale if config.scale == "word" else float(q.scale.mean())
    layer = BinaryEmbedding.from_codes(q.codes, scale=scale, decoder=q.encoder.T, offset=q.mean)
    layer.quantizer_info = {k: v for k, v in q.info.items() if k != "loss_history"}
    return layer.to(module.weight.device)
