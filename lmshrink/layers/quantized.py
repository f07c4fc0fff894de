"""Uniformly quantized layers: k-bit codes (k = 2..8) bit-packed in uint8 buffers, fp16 scales per group.

``PackedMatrix`` is the storage unit: a (rows, cols) matrix cut into groups of ``g`` values along each
row (``group_size``; ``None`` means one group per row), each group stored as ``g * k / 8`` bytes of
codes plus a float16 (scale, min) pair; ``layout`` says how long a group is (``"balanced"``, the
default, or ``"padded"`` for older model directories); see :mod:`lmshrink.layers.packing`. It
dequantizes on every call with vectorized shifts (never caching a float copy), and can dequantize only
some rows, which is how a quantized embedding looks words up without touching the rest of the table.
At inference on CPU, 4-bit matrices skip the float weight altogether: torch's int4 kernel multiplies
from the codes (``INT4_CPU_KERNEL``; stop 18: a 4-bit PTB-small embedding+softmax model went from 6,438 to
13,632 tokens/s, dense 10,995, test perplexity 237.863 -> 237.877).

Layers:
- :class:`QuantizedLinear` / :class:`QuantizedEmbedding`: a dense weight, quantized;
- :class:`QuantizedLowRankLinear` / :class:`QuantizedLowRankEmbedding`: both factors of a low-rank
  layer quantized (SVD + quantization);
- block low-rank layers (GroupReduce) take ``bits`` themselves (:mod:`lmshrink.layers.block_low_rank`),
  which is the paper's "GroupReduce + quantization" (Chen et al. 2018, Sec. 4, 26x on OBW).

Retraining: codes are frozen buffers; each group's (scale, min) is a trainable float16 parameter and
biases stay trainable. The intended order is the paper's: retrain the float factorization first,
then quantize (post-training quantization), optionally tuning only the scales afterwards. There is
no straight-through estimator here.

Loading: every layer here (and a block low-rank layer with ``bits``) puts ``layout`` in its ``spec()``. A
manifest written before that key existed describes padded storage, so :meth:`PackedLayer.from_spec`, the
loader's way in, reads a missing key as ``"padded"``; the constructors themselves default to ``"balanced"``
so that everything built in code (methods, tests, users) gets the smaller layout without asking for it.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import CompressedLayer, DerivedCaches, register_layer, tensor_version
from .packing import (DEFAULT_LAYOUT, PADDED, PARAM_DTYPE, group_layout, pack_codes, packed_bits, quantize_groups,
                      unpack_codes)


CHUNK_ELEMENTS = 1 << 17  # weights dequantized at once on CPU: 512 KiB of float32, cache resident

# 4-bit matrices run on CPU through PyTorch's int4 kernel (the one gpt-fast and torchao use; its groups are 32-256
# wide): it reads the 4-bit codes straight into its dot products, where our generic path writes a float chunk first. Its activations and outputs are bfloat16, so results differ from the float path by bfloat16 rounding;
# ``INT4_CPU_KERNEL = False`` (or the environment's ``LMSHRINK_INT4_KERNEL=0``) turns it off.
INT4_GROUP_WIDTHS = (32, 64, 128, 256)
INT4_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HAS_INT4_KERNEL = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")  # looked up once: it sits on a per-step path
INT4_CPU_KERNEL = os.environ.get("LMSHRINK_INT4_KERNEL", "1") != "0"


class PackedMatrix(DerivedCaches, nn.Module):
    """A (rows, cols) matrix as packed k-bit codes + float16 (scale, min) per group.

    Stored: ``codes`` uint8 (rows, groups, g*k/8) buffer and ``qparams`` float16 (rows, groups, 2)
    parameter. Two tensors per matrix keep the safetensors header small.
    """

    def __init__(self, rows: int, cols: int, bits: int, group_size: int | None = None, layout: str = DEFAULT_LAYOUT):
        super().__init__()
        assert 1 <= bits <= 8
        self.rows, self.cols, self.nbits, self.group_size, self.layout = rows, cols, bits, group_size, layout
        self.g, self.ngroups = group_layout(cols, group_size, layout)
        self.register_buffer("codes", torch.zeros(rows, self.ngroups, self.g * bits // 8, dtype=torch.uint8))
        self.qparams = nn.Parameter(torch.zeros(rows, self.ngroups, 2, dtype=PARAM_DTYPE))

    @torch.no_grad()
    def set_(self, w: torch.Tensor) -> PackedMatrix:
        """Quantize the float matrix ``w`` (rows, cols) into this storage."""
        assert tuple(w.shape) == (self.rows, self.cols), (tuple(w.shape), (self.rows, self.cols))
        pad = self.ngroups * self.g - self.cols
        x = w.detach().double()
        if pad:  # pad with each row's last value: it cannot widen the group's range
            x = torch.cat([x, x[:, -1:].expand(-1, pad)], 1)
        q, params = quantize_groups(x.reshape(self.rows, self.ngroups, self.g), self.nbits)
        self.codes.copy_(pack_codes(q, self.nbits).to(self.codes.device))
        self.qparams.copy_(params.to(self.qparams.device))
        self.clear_caches()
        return self

    def clear_caches(self) -> None:
        """Drop the int4 kernel's operands (rebuilt at the next CPU call; also on moves and loads, DerivedCaches)."""
        self.__dict__.pop("_int4_cache", None)

    def _dequant(self, codes: torch.Tensor, qparams: torch.Tensor, dtype) -> torch.Tensor:
        # codes (n, G, bytes), qparams (n, G, 2) -> (n, cols)
        q = unpack_codes(codes, self.nbits, self.g).to(dtype)  # (n, G, g), a fresh tensor
        qp = qparams.to(dtype)
        if torch.is_grad_enabled() and qparams.requires_grad:
            # min + code * scale, differentiable. Not torch.addcmul: CUDA autocast treats it as a type-promoting op
            # and this torch refuses its bfloat16 inputs under bfloat16 autocast ("Unexpected floating ScalarType in
            # at::autocast::prioritize"), which stopped every quantization retraining on the GPU (stop 22)
            w = q * qp[..., 0:1] + qp[..., 1:2]
        else:  # in place: ~3x faster on CPU than a broadcasting addcmul
            w = q.mul_(qp[..., 0:1]).add_(qp[..., 1:2])
        w = w.reshape(codes.shape[0], self.ngroups * self.g)
        return w[:, : self.cols] if self.ngroups * self.g != self.cols else w

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return self._dequant(self.codes, self.qparams, dtype)

    def matmul_t(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T`` for x (..., cols) -> (..., rows), W dequantized on the fly.

        On CPU without autograd, 4-bit matrices go through torch's int4 kernel (``INT4_CPU_KERNEL``); the others are done in cache-sized chunks (dequantize a chunk, one GEMM), so
        the float weight never exists whole and memory traffic stays near the packed size; elsewhere (GPU,
        or training) the whole matrix is dequantized once per call and one GEMM runs.
        """
        dt = x.dtype if x.is_floating_point() else torch.float32
        if x.device.type != "cpu" or (torch.is_grad_enabled() and self.qparams.requires_grad):
            return x @ self.dequantize(dt).t()
        x2 = x.reshape(-1, self.cols)
        if self.int4_kernel_ready() and dt in INT4_INPUT_DTYPES:  # float64 callers keep float64 precision
            return self._matmul_t_int4(x2, dt).view(*x.shape[:-1], self.rows)
        step = max(1, CHUNK_ELEMENTS // max(1, self.ngroups * self.g))
        outs = [x2 @ self._dequant(self.codes[r:r + step], self.qparams[r:r + step], dt).t()
                for r in range(0, self.rows, step)]
        return torch.cat(outs, 1).view(*x.shape[:-1], self.rows)

    def int4_kernel_ready(self) -> bool:
        """Whether ``matmul_t`` may take torch's int4 CPU kernel here (4-bit codes; ``INT4_CPU_KERNEL``)."""
        return INT4_CPU_KERNEL and self.nbits == 4 and _HAS_INT4_KERNEL

    def _int4_widths(self) -> tuple[int, int]:
        """(kernel group width, our group width padded to a multiple of it). The kernel groups are 32-256 wide; ours
        are any multiple of 8, so each of ours becomes one or more kernel groups sharing its (scale, min), padded
        with zero codes that meet zero inputs. The least padding wins, then the widest kernel group."""
        return min(((w, -(-self.g // w) * w) for w in INT4_GROUP_WIDTHS), key=lambda t: (t[1], -t[0]))

    def _int4_operands(self):
        """(packed weight, scales_and_zeros, column positions, kernel group width) for torch's int4 kernel, built from
        ``codes``/``qparams`` on first use and again whenever either changes (load, retraining of the scales). The
        kernel dequantizes ``(q - 8) * scale + zero``, so our ``min + q * scale`` is ``zero = min + 8 * scale``. Rows
        are padded to a multiple of 16 (the kernel's tile) with zero codes and zero scales; column ``j`` of the input
        goes to ``positions[j]`` of the kernel's (padded) columns. 4 bits a weight (plus the padding), a second
        compact copy while the model is used on CPU, never a float one; kept out of ``state_dict``."""
        # in-place changes outside set_/loading (an optimizer step on the scales) show in the version counters;
        # inference tensors have none, and set_/loading drop the cache themselves
        key = tuple(tensor_version(t) for t in (self.codes, self.qparams)) + (self.codes.data_ptr(), self.qparams.data_ptr())
        cached = self.__dict__.get("_int4_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        width, padded = self._int4_widths()
        rows = -(-self.rows // 16) * 16
        q = unpack_codes(self.codes, 4, self.g).to(torch.int32)  # (N, G, g)
        q = F.pad(q, (0, padded - self.g, 0, 0, 0, rows - self.rows)).reshape(rows, self.ngroups * padded)
        qp = self.qparams.detach().float()  # (N, G, 2): scale, min
        sz = torch.stack([qp[..., 0], qp[..., 1] + 8 * qp[..., 0]], -1)  # (N, G, 2): scale, zero
        sz = F.pad(sz, (0, 0, 0, 0, 0, rows - self.rows)).repeat_interleave(padded // width, dim=1)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        sz = sz.transpose(0, 1).contiguous().to(torch.bfloat16)  # (G * padded / width, N, 2)
        col = torch.arange(self.cols)
        positions = (col // self.g) * padded + col % self.g  # (cols,): where each input column sits
        ops = (packed, sz, positions, width, self.ngroups * padded)
        self.__dict__["_int4_cache"] = (key, ops)
        return ops

    def _matmul_t_int4(self, x2: torch.Tensor, dt) -> torch.Tensor:
        # x2 (M, cols) -> (M, rows), through torch's int4 kernel in bfloat16; as few small ops as possible, since an
        # LSTM calls this once per time step with M = batch
        packed, sz, positions, width, K = self._int4_operands()
        if K == self.cols:
            xb = x2.to(torch.bfloat16).contiguous()
        else:  # padding columns get zero inputs, so whatever codes sit there cancel
            xb = x2.new_zeros(x2.shape[0], K, dtype=torch.bfloat16)
            xb[:, positions] = x2.to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, width, sz)  # (M, rows rounded up to 16)
        return (y if y.shape[1] == self.rows else y[:, : self.rows]).to(dt)

    def rows_dequantize(self, idx: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """Rows ``idx`` (n,) only: (n, cols)."""
        return self._dequant(self.codes.index_select(0, idx), self.qparams.index_select(0, idx), dtype)

    def stored_bits(self) -> int:
        return packed_bits(self.rows, self.cols, self.nbits, self.group_size, self.layout)

    def extra_repr(self) -> str:
        return (f"rows={self.rows}, cols={self.cols}, bits={self.nbits}, group_size={self.group_size}, "
                f"layout={self.layout}")


def flat_group(group_size: int | None) -> int:
    """Group length for factors stored flat (a per-row group would pad every short row)."""
    return group_size if group_size else 128


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def spec_with_layout(spec: dict) -> dict:
    """A packed layer's manifest spec as its constructor takes it: no ``layout`` key means an older file,
    whose storage is padded (see the module doc)."""
    return spec if "layout" in spec else {**spec, "layout": PADDED}


class PackedLayer(CompressedLayer):
    """Base of the layers below: what a manifest spec without ``layout`` means."""

    @classmethod
    def from_spec(cls, spec: dict) -> CompressedLayer:
        return super().from_spec(spec_with_layout(spec))


@register_layer
class QuantizedLinear(PackedLayer):
    """``y = x W^T + b`` with W (out, in) stored as k-bit codes; unpacked per call, never cached."""

    layer_type = "quantized_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None = None, bias: bool = True,
                 layout: str = DEFAULT_LAYOUT):
        super().__init__()
        self.in_features, self.out_features, self.nbits, self.group_size = in_features, out_features, bits, group_size
        self.layout = layout
        self.weight_q = PackedMatrix(out_features, in_features, bits, group_size, layout)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.nbits,
                "group_size": self.group_size, "bias": self.bias is not None, "layout": self.layout}

    def dense_weight(self) -> torch.Tensor:
        return self.weight_q.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.weight_q.matmul_t(x)
        return out + self.bias.to(out.dtype) if self.bias is not None else out

    def step_fn(self):
        # Unpacking the codes costs several passes over W; an LSTM calls hh T times per sequence with a
        # (B, H) input, so unpack once per sequence (a transient float W, freed with the closure) -- unless
        # torch's int4 kernel takes the codes as they are (CPU, inference): then every step reads 4 bits a weight.
        q = self.weight_q
        if q.int4_kernel_ready() and q.codes.device.type == "cpu" and not (torch.is_grad_enabled() and q.qparams.requires_grad):
            return self.forward  # matmul_t still takes the float path for float64 inputs
        W, b = q.dequantize(), self.bias
        return lambda x: F.linear(x, W.to(x.dtype), None if b is None else b.to(x.dtype))


@register_layer
class QuantizedEmbedding(PackedLayer):
    """Embedding table (V, D) as k-bit codes; a lookup unpacks only the rows it needs."""

    layer_type = "quantized_embedding"
    flavour = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, group_size: int | None = None,
                 layout: str = DEFAULT_LAYOUT):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.nbits, self.group_size = num_embeddings, embedding_dim, bits, group_size
        self.layout = layout
        self.weight_q = PackedMatrix(num_embeddings, embedding_dim, bits, group_size, layout)

    def spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "bits": self.nbits,
                "group_size": self.group_size, "layout": self.layout}

    def dense_weight(self) -> torch.Tensor:
        return self.weight_q.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_q.rows_dequantize(ids.reshape(-1))  # (N, D)
        return rows.view(*ids.shape, self.embedding_dim)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.weight_q.matmul_t(h)  # (..., D) -> (..., V)


@register_layer
class QuantizedLowRankLinear(PackedLayer):
    """``y = A (B x) + b`` with both factors A (out, r), B (r, in) stored as k-bit codes."""

    layer_type = "quantized_low_rank_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, rank: int, bits: int, group_size: int | None = None,
                 bias: bool = True, layout: str = DEFAULT_LAYOUT):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.nbits, self.group_size, self.layout = bits, group_size, layout
        self.A = PackedMatrix(1, out_features * rank, bits, flat_group(group_size), layout)  # flat: no per-row padding
        self.B = PackedMatrix(rank, in_features, bits, group_size, layout)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bits": self.nbits, "group_size": self.group_size, "bias": self.bias is not None, "layout": self.layout}

    def a(self, dtype=torch.float32) -> torch.Tensor:
        return self.A.dequantize(dtype).view(self.out_features, self.rank)

    def set_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        self.A.set_(A.reshape(1, -1))
        self.B.set_(B)

    def dense_weight(self) -> torch.Tensor:
        return self.a() @ self.B.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = _float_dtype(x)
        b = None if self.bias is None else self.bias.to(dt)
        return F.linear(F.linear(x, self.B.dequantize(dt)), self.a(dt), b)

    def step_fn(self):
        A, B, b = self.a(), self.B.dequantize(), self.bias  # unpacked once per sequence (see QuantizedLinear)
        return lambda x: F.linear(F.linear(x, B.to(x.dtype)), A.to(x.dtype), None if b is None else b.to(x.dtype))


@register_layer
class QuantizedLowRankEmbedding(PackedLayer):
    """Embedding (V, D) ~ A (V, r) @ B (r, D), both factors k-bit (A stored flat in fixed-length groups)."""

    layer_type = "quantized_low_rank_embedding"
    flavour = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, bits: int, group_size: int | None = None,
                 layout: str = DEFAULT_LAYOUT):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.nbits, self.group_size, self.layout = bits, group_size, layout
        # flat: no per-row padding
        self.A = PackedMatrix(1, num_embeddings * rank, bits, flat_group(group_size), layout)
        self.B = PackedMatrix(rank, embedding_dim, bits, group_size, layout)

    def spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "rank": self.rank,
                "bits": self.nbits, "group_size": self.group_size, "layout": self.layout}

    def a(self, dtype=torch.float32) -> torch.Tensor:
        return self.A.dequantize(dtype).view(self.num_embeddings, self.rank)

    def set_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        self.A.set_(A.reshape(1, -1))
        self.B.set_(B)

    def dense_weight(self) -> torch.Tensor:
        return self.a() @ self.B.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        a = F.embedding(ids.reshape(-1), self.a())  # (N, r); A is small, unpacked whole
        return (a @ self.B.dequantize()).view(*ids.shape, self.embedding_dim)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        dt = _float_dtype(h)
        return F.linear(F.linear(h, self.B.dequantize(dt)), self.a(dt))  # (..., D) -> (..., r) -> (..., V)
