"""Low-rank layers: ``W ~ A @ B`` with A (m, r) and B (r, n), applied as two small products.

Used by plain SVD compression (the baseline of Chen et al. 2018, "GroupReduce", Table 1) and by
online low-rank training of Acharya et al. 2019 ("Online Embedding Compression for Text
Classification using Low Rank Matrix Factorization", Sec. 3), where both factors keep training.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import CompressedLayer, register_layer


@register_layer
class LowRankLinear(CompressedLayer):
    """``y = A (B x) + b``: weight (out, in) ~ A (out, r) @ B (r, in); never forms the (out, in) matrix."""

    layer_type = "low_rank_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.A = nn.Parameter(torch.zeros(out_features, rank))
        self.B = nn.Parameter(torch.zeros(rank, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.bias is not None}

    def dense_weight(self) -> torch.Tensor:
        return self.A @ self.B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.B), self.A, self.bias)  # (..., in) -> (..., r) -> (..., out)


@register_layer
class LowRankEmbedding(CompressedLayer):
    """Embedding table (V, D) ~ A (V, r) @ B (r, D): look up r numbers per word, then expand."""

    layer_type = "low_rank_embedding"
    flavour = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.A = nn.Parameter(torch.zeros(num_embeddings, rank))
        self.B = nn.Parameter(torch.zeros(rank, embedding_dim))

    def spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "rank": self.rank}

    def dense_weight(self) -> torch.Tensor:
        return self.A @ self.B

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.A) @ self.B  # (...,) -> (..., r) -> (..., D)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(h, self.B), self.A)  # (..., D) -> (..., r) -> (..., V)
