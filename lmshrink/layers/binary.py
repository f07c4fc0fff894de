"""Binary embedding layer: one bit per code dimension, bit-packed, unpacked on lookup (CPU or CUDA).

Stands in for ``nn.Embedding`` in two ways:

* *codes as features* (``decode=False``): ``E[w] = s * b_w`` with ``b_w in {-1, +1}^c``, the way Liao et al. (AAAI
  2020, Sec. 5, "downstream tasks") feed binary word vectors to classifiers (frozen, ``embedding_dim == bits``);
  ``s`` is one global scale, one float16 scale per word, or none (plain +-1).
* *decoded* (``decode=True``): ``E[w] = offset + s * b_w @ decoder`` with ``decoder`` (c, D) and ``offset`` (D,),
  the affine inverse of the quantizer's encoder (``decoder = encoder^T``, ``offset = mean``), so the layer returns
  vectors in the original D coordinates and can replace a trained model's embedding (method ``binary``).

Storage: ``codes`` (V, ceil(c/8)) uint8 buffer in the numpy.packbits layout of :mod:`lmshrink.binary.codes`
(bit j at byte j // 8, position 7 - j % 8, 1 = +1); scale/decoder/offset are (small) parameters. ``bits()`` counts
V * c code bits exactly (not the padding of the last byte) plus the float tensors at their widths.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import check
from .base import CompressedLayer, register_layer, tensor_bits

SCALES = ("global", "word", "none")


def _unpack(packed: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    from ..binary.codes import unpack_signs

    return unpack_signs(packed, bits, dtype)


@register_layer
class BinaryEmbedding(CompressedLayer):
    """Embedding table of packed +-1 codes (see the module docstring)."""

    layer_type = "binary_embedding"
    flavour = "embedding"

    def __init__(self, num_embeddings: int, bits: int, embedding_dim: int | None = None, scale: str = "global",
                 decode: bool = False):
        super().__init__()
        check(scale in SCALES, f"BinaryEmbedding: scale must be one of {', '.join(SCALES)}, got {scale!r}")
        check(bits >= 1 and num_embeddings >= 1, "BinaryEmbedding: bits and num_embeddings must be >= 1")
        embedding_dim = bits if embedding_dim is None else embedding_dim
        check(decode or embedding_dim == bits,
              f"BinaryEmbedding: without a decoder the output size is the code length ({bits}), not {embedding_dim}")
        self.num_embeddings, self.bits_per_word, self.embedding_dim = num_embeddings, bits, embedding_dim
        self.scale_kind, self.decode = scale, decode
        self.register_buffer("codes", torch.zeros(num_embeddings, (bits + 7) // 8, dtype=torch.uint8))
        if scale == "global":
            self.scale = nn.Parameter(torch.ones(1))
        elif scale == "word":
            self.scale = nn.Parameter(torch.ones(num_embeddings, dtype=torch.float16))
        else:
            self.scale = None
        if decode:
            self.decoder = nn.Parameter(torch.zeros(bits, embedding_dim))  # (c, D)
            self.offset = nn.Parameter(torch.zeros(embedding_dim))  # (D,)
        else:
            self.decoder = self.offset = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_codes(cls, codes: np.ndarray | torch.Tensor, bits: int | None = None, scale=None, decoder=None,
                   offset=None) -> BinaryEmbedding:
        """Build from codes: (V, c) bool (True = +1), or (V, ceil(c/8)) packed uint8 with ``bits`` given.

        ``scale``: None (+-1 output), a float (global) or a (V,) array (per word, stored in float16).
        ``decoder`` (c, D) / ``offset`` (D,): give both to output decoded D-dimensional vectors.
        """
        from ..binary.codes import pack_bits

        codes = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        if codes.dtype == np.bool_:
            bits = codes.shape[1] if bits is None else bits
            check(bits == codes.shape[1], f"bits={bits} but the codes have {codes.shape[1]} columns")
            packed = pack_bits(codes)
        else:
            check(codes.dtype == np.uint8 and bits is not None, "packed codes need dtype uint8 and bits=")
            check(codes.shape[1] == (bits + 7) // 8,
                  f"{bits} bits need {(bits + 7) // 8} bytes per row, got {codes.shape[1]}")
            packed = codes
        V = packed.shape[0]
        if scale is None:
            kind = "none"
        elif np.ndim(scale) == 0 or np.size(scale) == 1:
            kind = "global"
        else:
            check(np.shape(scale) == (V,), f"per-word scale must have shape ({V},), got {np.shape(scale)}")
            kind = "word"
        check((decoder is None) == (offset is None), "give both decoder and offset, or neither")
        D = None if decoder is None else int(np.shape(decoder)[1])
        layer = cls(V, bits, D, kind, decode=decoder is not None)
        with torch.no_grad():
            layer.codes.copy_(torch.from_numpy(np.ascontiguousarray(packed)))
            if kind != "none":
                s = torch.as_tensor(np.asarray(scale, dtype=np.float64).reshape(-1))
                layer.scale.copy_(s.to(layer.scale.dtype))
            if decoder is not None:
                layer.decoder.copy_(torch.as_tensor(np.asarray(decoder, dtype=np.float32)))
                layer.offset.copy_(torch.as_tensor(np.asarray(offset, dtype=np.float32)))
        return layer

    @classmethod
    def from_vector_dir(cls, path, scale: bool = True, decode: bool = False) -> tuple[BinaryEmbedding, list[str]]:
        """A binary word-vector directory (``lmshrink binarize --out DIR``) as a layer, plus its words."""
        from ..binary.store import load_vector_dir

        vs = load_vector_dir(path)
        check(not isinstance(vs, tuple), f"{path} holds float vectors, not binary codes")
        s = (vs.scale if vs.scale.size > 1 else float(vs.scale[0])) if scale else None
        dec, off = (vs.encoder.T, vs.mean) if decode else (None, None)
        return cls.from_codes(vs.packed, vs.bits, scale=s, decoder=dec, offset=off), vs.words

    # ------------------------------------------------------------------ interface
    def spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "bits": self.bits_per_word, "embedding_dim": self.embedding_dim,
                "scale": self.scale_kind, "decode": self.decode}

    def _dtype(self) -> torch.dtype:
        return self.decoder.dtype if self.decoder is not None else torch.float32

    def _scaled_signs(self, packed: torch.Tensor, ids: torch.Tensor | None, dtype) -> torch.Tensor:
        s = _unpack(packed, self.bits_per_word, dtype)  # (..., c) of +-1
        if self.scale_kind == "global":
            s = s * self.scale.to(dtype)
        elif self.scale_kind == "word":
            w = self.scale if ids is None else self.scale[ids]
            s = s * w.to(dtype).unsqueeze(-1)
        return s

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        dtype = self._dtype()
        s = self._scaled_signs(self.codes[ids], ids, dtype)  # (..., c)
        if self.decode:
            return F.linear(s, self.decoder.T, self.offset)  # (..., D)
        return s

    def dense_weight(self) -> torch.Tensor:
        s = self._scaled_signs(self.codes, None, self._dtype())  # (V, c)
        return s @ self.decoder + self.offset if self.decode else s

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) logits against the table, without building (V, D) when decoding."""
        s = self._scaled_signs(self.codes, None, h.dtype)  # (V, c)
        if self.decode:
            return F.linear(F.linear(h, self.decoder.to(h.dtype)), s) + (h @ self.offset.to(h.dtype)).unsqueeze(-1)
        return F.linear(h, s)

    def bits(self) -> int:
        extra = sum(tensor_bits(t) for t in (self.scale, self.decoder, self.offset) if t is not None)
        return self.num_embeddings * self.bits_per_word + extra

    def num_params(self) -> int:
        extra = sum(t.numel() for t in (self.scale, self.decoder, self.offset) if t is not None)
        return self.num_embeddings * self.bits_per_word + extra
