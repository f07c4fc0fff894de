"""Sparse (pruned) layers, stored so that bytes really shrink.

:class:`SparseLinear` / :class:`SparseEmbedding` store a pruned (rows, cols) weight in compressed
sparse row form with the narrowest integer types that fit:
- ``values`` (nnz,) float32, trainable (the sparsity pattern is fixed);
- ``col_idx`` (nnz,) uint8 when cols <= 256, else int16 (cols <= 32768), else int32;
- ``row_nnz`` (rows,) non-zeros per row, uint8 when cols <= 255, else int16 / int32.
Row pointers are the cumulative sum of ``row_nnz``, recomputed (and cached per device) on use, so
``bits()`` = nnz * (32 + index bits) + rows * count bits, exactly what is on disk.

Forward. On CPU at inference the product runs as a CSR sparse x dense matmul (MKL); on GPU, or while
training (so gradients reach ``values``), the dense weight is rebuilt per call by one scatter and a
cuBLAS GEMM runs -- per call, never cached. Embedding lookups on CPU gather only the rows asked for; on GPU
they rebuild the weight too and gather rows from it (``cuda_lookup``: measured faster, no host sync).

:class:`MaskedLinear` / :class:`MaskedEmbedding` are the training-time form of gradual pruning (AGP,
Zhu & Gupta 2017, "To prune, or not to prune", Eq. 1): a dense weight and a binary mask updated by
``training_step_hook``; :meth:`finalize` turns them into the sparse layers above once training ends.
Their ``bits()`` counts what they store (dense weight + one byte per mask entry), honestly larger.

Retraining a CSR layer. Its own forward rebuilds the weight by a scatter from index tensors whose sizes
depend on the data, which a CUDA graph cannot capture, so it trained eagerly and was the slowest run of
every GPU benchmark. :meth:`_SparseBase.training_form` therefore hands the retraining loop a
:class:`FixedMaskLinear` / :class:`FixedMaskEmbedding`: the same weights as a dense tensor times the fixed
0/1 pattern (gradients of pruned entries are zero, so the pattern cannot change), whose ``finalize``
returns the CSR layer with the trained values (:func:`lmshrink.compress.training_forms`). Measured on an H100
(stop 15, PTB small, 10 retraining epochs, 7 runs sharing the GPU): every pruning run captured its step as a CUDA
graph and took 235-245 s, as long as the SVD and GroupReduce runs beside it; in stop 14, eager, none finished
within ~15 minutes.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import check
from .base import CompressedLayer, DerivedCaches, register_layer, tensor_version


def col_dtype(cols: int) -> torch.dtype:
    return torch.uint8 if cols <= 256 else torch.int16 if cols <= 2**15 else torch.int32


def count_dtype(cols: int) -> torch.dtype:
    return torch.uint8 if cols <= 255 else torch.int16 if cols < 2**15 else torch.int32


def dtype_bits(dt: torch.dtype) -> int:
    return torch.empty((), dtype=dt).element_size() * 8


def sparse_bits(rows: int, cols: int, nnz: int) -> int:
    """Exact stored bits of a CSR (rows, cols) matrix with ``nnz`` fp32 values (see module doc)."""
    return nnz * (32 + dtype_bits(col_dtype(cols))) + rows * dtype_bits(count_dtype(cols))


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """torch's CSR tensor over our index buffers: their invariants hold by construction, so they are not checked,
    and torch's "CSR support is in beta" warning is silenced (it is what we want)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class _SparseBase(DerivedCaches, CompressedLayer):
    # torch's CSR matmul cannot be recorded in a CUDA graph (seen on an H100, torch 2.11: "operation failed due
    # to a previous error during capture"), so graph-replayed training (train.graphed) trains these eagerly
    graph_capturable = False
    # GPU embedding lookup: "rebuild" scatters the whole (rows, cols) weight, then gathers rows (as the GPU softmax
    # path rebuilds it too); "gather" selects only the asked rows' non-zeros, but repeat_interleave reads its output
    # size back to the host, a sync per call. Measured on an H100 (stop 15, logs/2026-11-23h/sparse_lookup_probe.*,
    # V 10000, D 1500, 6.6x, 64 x 35 ids): 0.14 ms against 0.29-0.50 ms per lookup; whole model 1.11x the gather path's tokens/s
    cuda_lookup = "rebuild"

    def __init__(self, rows: int, cols: int, nnz: int):
        super().__init__()
        self.rows, self.cols, self.nnz = rows, cols, nnz
        self.values = nn.Parameter(torch.zeros(nnz))
        self.register_buffer("col_idx", torch.zeros(nnz, dtype=col_dtype(cols)))
        self.register_buffer("row_nnz", torch.zeros(rows, dtype=count_dtype(cols)))
        self._cache: dict = {}

    @torch.no_grad()
    def set_from_dense(self, W: torch.Tensor, mask: torch.Tensor) -> None:
        """Store the entries of ``W`` (rows, cols) where ``mask`` is true, row-major."""
        r, c = mask.nonzero(as_tuple=True)  # row-major order
        assert r.numel() == self.nnz, (r.numel(), self.nnz)
        self.values.copy_(W[r, c].float())
        self.col_idx.copy_(c.to(self.col_idx.dtype))
        self.row_nnz.copy_(mask.sum(1).to(self.row_nnz.dtype))

    def clear_caches(self) -> None:
        """Drop the index and CSR caches (rebuilt at the next call; DerivedCaches)."""
        self._cache = {}

    def _index(self, device) -> dict:
        key = (device, tensor_version(self.col_idx), tensor_version(self.row_nnz), self.col_idx.data_ptr())
        if self._cache.get("key") != key:
            counts = self.row_nnz.to(device=device, dtype=torch.long)
            crow = torch.zeros(self.rows + 1, dtype=torch.long, device=device)
            crow[1:] = counts.cumsum(0)
            col = self.col_idx.to(device=device, dtype=torch.long)
            col = col & 0xFF if self.col_idx.dtype == torch.uint8 else col
            self._cache = {"key": key, "counts": counts, "crow": crow, "col": col,
                           "row": torch.repeat_interleave(torch.arange(self.rows, device=device), counts)}
        return self._cache

    def dense_weight(self) -> torch.Tensor:
        ix = self._index(self.values.device)
        W = self.values.new_zeros(self.rows, self.cols)
        return W.index_put((ix["row"], ix["col"]), self.values)  # out of place: differentiable in values

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        # x (..., cols) -> (..., rows)
        dt = x.dtype
        if x.device.type == "cpu" and not (torch.is_grad_enabled() and self.values.requires_grad):
            ix = self._index(x.device)
            # the CSR tensor is kept beside the index cache while the values stay the same: an LSTM calls each map
            # once per time step, and building it took ~10 us of a 75 us call at batch 1 (PTB medium, 25x)
            key = (self.values.data_ptr(), tensor_version(self.values), dt, torch.is_inference_mode_enabled())
            if ix.get("csr_key") != key:
                ix["csr"], ix["csr_key"] = csr_tensor(ix["crow"], ix["col"], self.values.to(dt), (self.rows, self.cols)), key
            W = ix["csr"]
            x2 = x.reshape(-1, self.cols)
            return (W @ x2.t()).t().reshape(*x.shape[:-1], self.rows)
        return F.linear(x, self.dense_weight().to(dt))

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        check(self.cuda_lookup in ("rebuild", "gather"), f"cuda_lookup must be 'rebuild' or 'gather', got {self.cuda_lookup!r}")
        if ids.device.type == "cuda" and self.cuda_lookup == "rebuild":
            return F.embedding(ids, self.dense_weight())  # one scatter, one gather: no host sync
        ix = self._index(ids.device)
        flat = ids.reshape(-1)
        cnt = ix["counts"][flat]  # (N,)
        seg = torch.repeat_interleave(torch.arange(flat.numel(), device=ids.device), cnt)  # (nnz_sel,)
        first = torch.cumsum(cnt, 0) - cnt
        pos = ix["crow"][flat][seg] + torch.arange(seg.numel(), device=ids.device) - first[seg]
        out = self.values.new_zeros(flat.numel(), self.cols).index_put((seg, ix["col"][pos]), self.values[pos])
        return out.view(*ids.shape, self.cols)

    def density(self) -> float:
        return self.nnz / (self.rows * self.cols)

    @torch.no_grad()
    def pattern(self) -> torch.Tensor:
        """The (rows, cols) bool mask of stored entries (a stored value may itself be 0)."""
        ix = self._index(self.values.device)
        mask = torch.zeros(self.rows, self.cols, dtype=torch.bool, device=self.values.device)
        return mask.index_put_((ix["row"], ix["col"]), torch.ones_like(ix["col"], dtype=torch.bool))

    @torch.no_grad()
    def _as_fixed_mask(self, layer: _MaskedBase) -> _MaskedBase:
        """``layer`` (a fixed-mask training form of this shape) on this device, holding this pattern and weight."""
        layer = layer.to(self.values.device)
        layer.mask.copy_(self.pattern())
        layer.weight.copy_(self.dense_weight())
        return layer


@register_layer
class SparseLinear(_SparseBase):
    """Pruned linear layer ``y = W_sparse x + b`` (W stored CSR, bias dense)."""

    layer_type = "sparse_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, nnz: int, bias: bool = True):
        super().__init__(out_features, in_features, nnz)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "nnz": self.nnz,
                "bias": self.bias is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._matmul(x)
        return out + self.bias.to(out.dtype) if self.bias is not None else out

    @torch.no_grad()
    def training_form(self) -> FixedMaskLinear:
        """This layer as a dense weight times its fixed pattern, for retraining (see module doc)."""
        layer = self._as_fixed_mask(FixedMaskLinear(self.in_features, self.out_features, self.nnz, bias=self.bias is not None))
        if self.bias is not None:
            layer.bias.copy_(self.bias)
        return layer


@register_layer
class SparseEmbedding(_SparseBase):
    """Pruned embedding table (V, D) stored CSR; ``project`` serves a tied softmax."""

    layer_type = "sparse_embedding"
    flavour = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, nnz: int):
        super().__init__(num_embeddings, embedding_dim, nnz)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    def spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "nnz": self.nnz}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._lookup(ids)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self._matmul(h)

    @torch.no_grad()
    def training_form(self) -> FixedMaskEmbedding:
        """This table as a dense weight times its fixed pattern, for retraining (see module doc)."""
        return self._as_fixed_mask(FixedMaskEmbedding(self.num_embeddings, self.embedding_dim, self.nnz))


# ---------------------------------------------------------------------------------------------- masks
def group_view(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(rows, cols) -> (groups, rows * cols / groups): gate blocks (rows split evenly) or single rows."""
    return t.reshape(groups, -1)


def keep_count(group_numel: int, density: float) -> int:
    """Entries kept in a group of ``group_numel`` at ``density`` (floor, at least 1)."""
    return max(1, min(group_numel, int(math.floor(density * group_numel + 1e-9))))


@torch.no_grad()
def magnitude_mask(W: torch.Tensor, keep: int, groups: int, current: torch.Tensor | None = None) -> torch.Tensor:
    """Keep exactly ``keep`` largest-|w| entries in each of ``groups`` row groups (among ``current``)."""
    score = W.detach().abs().float()
    if current is not None:
        score = torch.where(current, score, torch.full_like(score, -1.0))  # pruned entries stay pruned
    s = group_view(score, groups)
    idx = s.topk(keep, dim=1, sorted=False).indices
    mask = torch.zeros_like(s, dtype=torch.bool).scatter_(1, idx, True)
    return mask.view_as(W)


def agp_density(progress: float, initial: float, final: float, start: float, end: float) -> float:
    """Zhu & Gupta (2017) Eq. 1 in density terms: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3."""
    if end <= start:
        frac = 1.0 if progress >= end else 0.0
    else:
        frac = min(1.0, max(0.0, (progress - start) / (end - start)))
    s_i, s_f = 1.0 - initial, 1.0 - final
    return 1.0 - (s_f + (s_i - s_f) * (1.0 - frac) ** 3)


class _MaskedBase(CompressedLayer):
    def __init__(self, rows: int, cols: int, final_keep: int, groups: int = 1, initial_density: float = 1.0,
                 start: float = 0.0, end: float = 0.75, prune_every: int = 10):
        super().__init__()
        self.rows, self.cols, self.groups, self.final_keep = rows, cols, groups, final_keep
        self.initial_density, self.start, self.end, self.prune_every = initial_density, start, end, prune_every
        self.weight = nn.Parameter(torch.zeros(rows, cols))
        self.register_buffer("mask", torch.ones(rows, cols, dtype=torch.bool))

    def _sched(self) -> dict:
        return {"final_keep": self.final_keep, "groups": self.groups, "initial_density": self.initial_density,
                "start": self.start, "end": self.end, "prune_every": self.prune_every}

    def group_numel(self) -> int:
        return self.rows * self.cols // self.groups

    @torch.no_grad()
    def prune_to_keep(self, keep: int) -> None:
        current = int(group_view(self.mask, self.groups).sum(1).max())
        if keep >= current:
            return
        self.mask.copy_(magnitude_mask(self.weight, keep, self.groups, self.mask))
        self.weight.mul_(self.mask)

    def training_step_hook(self, progress: float, step: int) -> None:
        """AGP: every ``prune_every`` steps (and once ``end`` is reached) prune to the scheduled density."""
        final_density = self.final_keep / self.group_numel()
        if progress < self.end and step % self.prune_every != 0:
            return
        d = agp_density(progress, self.initial_density, final_density, self.start, self.end)
        keep = self.final_keep if progress >= self.end else max(self.final_keep, keep_count(self.group_numel(), d))
        self.prune_to_keep(keep)

    def dense_weight(self) -> torch.Tensor:
        return self.weight * self.mask  # differentiable; pruned entries get no gradient

    def finalize(self) -> _SparseBase:
        """The compact sparse layer at the final sparsity (call after training; prunes the rest if needed)."""
        raise NotImplementedError


@register_layer
class MaskedLinear(_MaskedBase):
    """Training-time AGP layer for a linear map; becomes :class:`SparseLinear` via ``finalize``."""

    layer_type = "masked_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, final_keep: int, groups: int = 1,
                 initial_density: float = 1.0, start: float = 0.0, end: float = 0.75, prune_every: int = 10,
                 bias: bool = True):
        super().__init__(out_features, in_features, final_keep, groups, initial_density, start, end, prune_every)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, **self._sched(),
                "bias": self.bias is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def finalize(self) -> SparseLinear:
        self.prune_to_keep(self.final_keep)  # a run cut short of agp_end still ends at the target sparsity
        layer = SparseLinear(self.in_features, self.out_features, int(self.mask.sum()), self.bias is not None)
        layer = layer.to(self.weight.device)
        layer.set_from_dense(self.weight, self.mask)
        if self.bias is not None:
            layer.bias.copy_(self.bias)
        return layer


@register_layer
class MaskedEmbedding(_MaskedBase):
    """Training-time AGP layer for an embedding; becomes :class:`SparseEmbedding` via ``finalize``."""

    layer_type = "masked_embedding"
    flavour = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, final_keep: int, groups: int = 1,
                 initial_density: float = 1.0, start: float = 0.0, end: float = 0.75, prune_every: int = 10):
        super().__init__(num_embeddings, embedding_dim, final_keep, groups, initial_density, start, end, prune_every)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    def spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, **self._sched()}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.dense_weight())

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.dense_weight().to(h.dtype))

    @torch.no_grad()
    def finalize(self) -> SparseEmbedding:
        self.prune_to_keep(self.final_keep)  # a run cut short of agp_end still ends at the target sparsity
        layer = SparseEmbedding(self.num_embeddings, self.embedding_dim, int(self.mask.sum())).to(self.weight.device)
        layer.set_from_dense(self.weight, self.mask)
        return layer


class FixedMaskLinear(MaskedLinear):
    """A :class:`SparseLinear` while it retrains: dense weight times a pattern that never changes.

    No ``training_step_hook``: nothing changes between steps, so a CUDA graph can replay the step.
    ``final_keep`` is the pattern's non-zero count with one group, so ``finalize`` prunes nothing.
    """

    layer_type = "fixed_mask_linear"
    training_step_hook = None

    def __init__(self, in_features: int, out_features: int, nnz: int, bias: bool = True):
        super().__init__(in_features, out_features, final_keep=nnz, bias=bias)


class FixedMaskEmbedding(MaskedEmbedding):
    """A :class:`SparseEmbedding` while it retrains (see :class:`FixedMaskLinear`)."""

    layer_type = "fixed_mask_embedding"
    training_step_hook = None

    def __init__(self, num_embeddings: int, embedding_dim: int, nnz: int):
        super().__init__(num_embeddings, embedding_dim, final_keep=nnz)
