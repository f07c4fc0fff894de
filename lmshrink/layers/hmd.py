"""Hybrid matrix decomposition (HMD) layers (Thakker, Beu, Gope, Dasika, Mattina 2019, "Run-Time
Efficient RNN Compression for Inference on Edge Devices", arXiv:1906.04886, Sec. 3).

HMD splits a weight's rows into an unconstrained upper part and a lower part of low rank,

    W = [ W_u ]      W_u (k, in) dense,   U (h - k, r), V (r, in),
        [ U V ]

so the upper outputs keep "richer" features and the lower ones are constrained; both parts are plain
dense products at run time (unlike pruning's irregular ones). For an LSTM map (4H, in) we apply it to
each gate block separately (``gates`` = 4): every gate keeps its first k rows dense and the other
H - k low rank, so no gate is left all dense or all low rank.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import CompressedLayer, register_layer


@register_layer
class HMDLinear(CompressedLayer):
    """Per gate g: rows [0, k) dense ``D[g]`` (k, in); rows [k, h) = ``U[g] @ V[g]`` (h - k, r)(r, in)."""

    layer_type = "hmd_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, dense_rows: int, rank: int, gates: int = 1, bias: bool = True):
        super().__init__()
        assert out_features % gates == 0
        h = out_features // gates
        assert 0 <= dense_rows <= h and rank >= 0
        self.in_features, self.out_features, self.gates = in_features, out_features, gates
        self.dense_rows, self.rank = dense_rows, rank
        self.D = nn.Parameter(torch.zeros(gates, dense_rows, in_features))
        self.U = nn.Parameter(torch.zeros(gates, h - dense_rows, rank))
        self.V = nn.Parameter(torch.zeros(gates, rank, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "dense_rows": self.dense_rows,
                "rank": self.rank, "gates": self.gates, "bias": self.bias is not None}

    def dense_weight(self) -> torch.Tensor:
        low = torch.matmul(self.U, self.V)  # (g, h - k, in)
        return torch.cat([self.D, low], dim=1).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(x, self.dense_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        D, U, V = self.D.to(x.dtype), self.U.to(x.dtype), self.V.to(x.dtype)
        top = torch.matmul(D, x2.T)  # (g, k, N): dense rows of every gate
        low = torch.matmul(U, torch.matmul(V, x2.T))  # (g, h - k, N): through the rank-r bottleneck
        y = torch.cat([top, low], dim=1).reshape(self.out_features, -1).T  # (N, out)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)
