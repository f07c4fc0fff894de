"""Block low-rank vocabulary layers: GroupReduce's compressed embedding and softmax.

Chen et al. 2018 ("GroupReduce", Sec. 3) partition the vocabulary into ``c`` blocks and approximate
the rows of block ``t`` (n_t words, D columns) by ``U_t V_t`` with U_t (n_t, r_t), V_t (r_t, D).

Storage (three tensors, whatever ``c`` is, so safetensors headers stay negligible):
- ``word_pos`` (V,) int16/int32: the position of each word in block order (blocks concatenated);
- ``U``: every U_t flattened row-major and concatenated, (sum n_t r_t,);
- ``V``: every V_t stacked, (sum r_t, D).
Block sizes and ranks are in ``spec()`` (the manifest), so offsets are recomputed, never stored.
With ``bits`` set, U and V are k-bit packed (:class:`~lmshrink.layers.quantized.PackedMatrix`) --
the paper's GroupReduce + quantization.

Fast paths (no (V, D) matrix is ever built in forward):
- softmax ``project(h)``: one GEMM ``Z = h V^T`` for all blocks at once (N, sum r_t), then one GEMM
  per block ``b_t + Z_t U_t^T`` (c matmuls, a fixed small number; the softmax bias, permuted to block
  order, rides in the GEMM), put back in vocabulary order with a single ``index_select`` by ``word_pos``.
  Without autograd each block GEMM writes straight into its columns of one (N, V) buffer (``out=``), so
  the (N, V) logits cross memory three times (GEMM write, permutation read and write) instead of seven
  (GEMM, ``cat``, permutation, bias add). Measured on an H100 at PTB-large shapes (V 10000, D 1500, 10
  blocks, N 2240) that saved little (whole model 1.19x dense vs 1.17x before, within noise): the ten
  small-rank block GEMMs take most of the softmax's time (~0.29 ms of 0.65 ms at fp32), so with TF32
  matmuls, where the dense softmax drops to 0.30 ms, GroupReduce's softmax (0.49 ms) is the slower one;
- embedding lookup: each id's U row is scattered into its block's columns of an (N, sum r_t) matrix,
  then one GEMM with V; where each word's U row starts, its rank and its block's first column of V
  are cached per word, so a lookup is three gathers, a scatter and the GEMM.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import check
from .base import CompressedLayer, register_layer
from .quantized import PackedMatrix


def index_dtype(n: int) -> torch.dtype:
    """Smallest signed integer dtype holding 0..n-1 (safetensors and torch lack uint16)."""
    return torch.int16 if n <= 2**15 else torch.int32


def default_flat_group(group_size: int | None) -> int:
    return group_size if group_size else 128


class _BlockLowRank(CompressedLayer):
    def __init__(self, num_rows: int, dim: int, block_sizes: list[int], ranks: list[int],
                 bits: int | None = None, group_size: int | None = None):
        super().__init__()
        check(len(block_sizes) == len(ranks) and len(ranks) > 0, "block_sizes and ranks must have one entry per block")
        check(sum(block_sizes) == num_rows, f"block sizes sum to {sum(block_sizes)}, not {num_rows}")
        check(all(n >= 1 for n in block_sizes) and all(1 <= r <= min(n, dim) for n, r in zip(block_sizes, ranks)),
              "every block needs >= 1 word and a rank in [1, min(words, dim)]")
        self.num_rows, self.dim = num_rows, dim
        self.block_sizes, self.ranks = [int(n) for n in block_sizes], [int(r) for r in ranks]
        self.nbits, self.group_size = bits, group_size
        self.u_len = sum(n * r for n, r in zip(self.block_sizes, self.ranks))
        self.r_total = sum(self.ranks)
        self.register_buffer("word_pos", torch.zeros(num_rows, dtype=index_dtype(num_rows)))
        if bits is None:
            self.U = nn.Parameter(torch.zeros(self.u_len))
            self.V = nn.Parameter(torch.zeros(self.r_total, dim))
        else:
            # U is flat: quantize it in fixed-length groups along the flattened order
            self.U = PackedMatrix(1, self.u_len, bits, default_flat_group(group_size))
            self.V = PackedMatrix(self.r_total, dim, bits, group_size)
        # offsets derived from the spec (Python ints; never stored)
        self._u_off, self._r_off, self._starts = [0], [0], [0]
        for n, r in zip(self.block_sizes, self.ranks):
            self._u_off.append(self._u_off[-1] + n * r)
            self._r_off.append(self._r_off[-1] + r)
            self._starts.append(self._starts[-1] + n)
        self._cache: dict = {}

    # ------------------------------------------------------------------ storage helpers
    def spec(self) -> dict:
        return {"num_rows": self.num_rows, "dim": self.dim, "block_sizes": self.block_sizes, "ranks": self.ranks,
                "bits": self.nbits, "group_size": self.group_size}

    def factors(self, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(U flat (sum n_t r_t,), V (sum r_t, D)) as float tensors (dequantized if packed)."""
        if self.nbits is None:
            return self.U.to(dtype), self.V.to(dtype)
        return self.U.dequantize(dtype).view(-1), self.V.dequantize(dtype)

    @torch.no_grad()
    def set_factors(self, word_pos: torch.Tensor, U_blocks: list[torch.Tensor], V_blocks: list[torch.Tensor]) -> None:
        """Fill from per-block factors U_t (n_t, r_t), V_t (r_t, D) and the word -> position map."""
        U = torch.cat([u.reshape(-1) for u in U_blocks]).float()
        V = torch.cat(V_blocks, 0).float()
        assert U.numel() == self.u_len and tuple(V.shape) == (self.r_total, self.dim)
        self.word_pos.copy_(word_pos.to(self.word_pos.dtype))
        self._cache = {}
        if self.nbits is None:
            self.U.copy_(U)
            self.V.copy_(V)
        else:
            self.U.set_(U.view(1, -1))
            self.V.set_(V)

    def block_factors(self, dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
        U, V = self.factors(dtype)
        return [(U[self._u_off[t]:self._u_off[t + 1]].view(n, r), V[self._r_off[t]:self._r_off[t + 1]])
                for t, (n, r) in enumerate(zip(self.block_sizes, self.ranks))]

    def _index(self, device) -> dict:
        """Derived int64 index tensors, cached per device and per version of ``word_pos``."""
        # an inference tensor (a buffer moved under inference_mode) keeps no version counter; ``set_factors``
        # clears the cache itself, so the data pointer is enough there
        version = -1 if torch.is_inference(self.word_pos) else self.word_pos._version
        key = (device, version, self.word_pos.data_ptr())
        if self._cache.get("key") != key:
            dev = device
            pos = self.word_pos.to(device=dev, dtype=torch.long)  # (V,) word -> position in block order
            block = torch.bucketize(pos, torch.tensor(self._starts[1:-1], device=dev), right=True)  # (V,)
            ranks = torch.tensor(self.ranks, device=dev)[block]  # (V,) rank of each word's block
            start = torch.tensor(self._starts[:-1], device=dev)[block]
            u_src = torch.tensor(self._u_off[:-1], device=dev)[block] + (pos - start) * ranks  # first U entry
            r_off = torch.tensor(self._r_off[:-1], device=dev)[block]  # first column of the block in Z / row of V
            self._cache = {
                "key": key,
                "pos": pos,
                "order": torch.empty_like(pos).scatter_(0, pos, torch.arange(self.num_rows, device=dev)),  # inverse
                "word": torch.stack([u_src, ranks, r_off], 1),  # (V, 3): one gather per lookup
                "k": torch.arange(max(self.ranks), device=dev),
            }
        return self._cache

    # ------------------------------------------------------------------ math
    def dense_weight(self) -> torch.Tensor:
        blocks = [u @ v for u, v in self.block_factors()]  # each (n_t, D), block order
        W = torch.cat(blocks, 0)  # (V, D) in block order
        return W.index_select(0, self._index(W.device)["pos"])  # vocabulary order

    def _project(self, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # h (..., D) -> logits (..., V) in vocabulary order (+ bias (V,) in vocabulary order)
        dt = h.dtype if h.is_floating_point() else torch.float32
        U, V = self.factors(dt)
        ix = self._index(h.device)
        lead = h.shape[:-1]
        h2 = h.reshape(-1, self.dim)
        Z = h2 @ V.t()  # (N, sum r_t): all blocks' inner projections in one GEMM
        b = bias.to(dt).index_select(0, ix["order"]) if bias is not None else None  # (V,) block order
        blocks = [(U[self._u_off[t]:self._u_off[t + 1]].view(n, r), Z[:, self._r_off[t]:self._r_off[t + 1]],
                   self._starts[t], self._starts[t + 1]) for t, (n, r) in enumerate(zip(self.block_sizes, self.ranks))]
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (Z, U, b)):
            # autograd cannot record out= writes: per-block results, then one cat
            outs = [Zt @ Ut.t() if b is None else torch.addmm(b[s:e], Zt, Ut.t()) for Ut, Zt, s, e in blocks]
            logits = torch.cat(outs, 1) if len(outs) > 1 else outs[0]  # (N, V) block order
        else:
            logits = Z.new_empty(Z.shape[0], self.num_rows)  # (N, V) block order, each block writes its columns
            for Ut, Zt, s, e in blocks:
                if b is None:
                    torch.mm(Zt, Ut.t(), out=logits[:, s:e])
                else:
                    torch.addmm(b[s:e], Zt, Ut.t(), out=logits[:, s:e])
        logits = logits.index_select(1, ix["pos"])  # vocabulary order
        return logits.view(*lead, self.num_rows)

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        # ids (...,) -> rows (..., D)
        ix = self._index(ids.device)
        U, V = self.factors()
        flat = ids.reshape(-1)
        u_src, r, r_off = ix["word"].index_select(0, flat).unbind(1)  # each (N,)
        k = ix["k"]  # (R,) R = largest rank
        valid = k[None, :] < r[:, None]  # (N, R)
        vals = torch.where(valid, U[torch.where(valid, u_src[:, None] + k[None, :], 0)], U.new_zeros(()))  # (N, R)
        cols = torch.where(valid, r_off[:, None] + k[None, :], self.r_total)  # dummy column for padding
        X = U.new_zeros(flat.numel(), self.r_total + 1).scatter(1, cols, vals)  # (N, sum r + 1)
        out = X[:, : self.r_total] @ V  # (N, D)
        return out.view(*ids.shape, self.dim)


@register_layer
class BlockLowRankEmbedding(_BlockLowRank):
    """GroupReduce embedding (V, D): per-block low-rank factors; ``project`` serves a tied softmax."""

    layer_type = "block_low_rank_embedding"
    flavour = "embedding"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._lookup(ids)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self._project(h)


@register_layer
class BlockLowRankLinear(_BlockLowRank):
    """GroupReduce softmax layer (in = D, out = V rows): ``logits = block-low-rank(h) + b``, bias dense."""

    layer_type = "block_low_rank_linear"
    flavour = "linear"

    def __init__(self, num_rows: int, dim: int, block_sizes: list[int], ranks: list[int],
                 bits: int | None = None, group_size: int | None = None, bias: bool = True):
        super().__init__(num_rows, dim, block_sizes, ranks, bits, group_size)
        self.in_features, self.out_features = dim, num_rows
        self.bias = nn.Parameter(torch.zeros(num_rows)) if bias else None

    def spec(self) -> dict:
        return {**super().spec(), "bias": self.bias is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x, self.bias)

