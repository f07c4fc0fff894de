"""Tensor-train (TT) matrices (Oseledets 2011, "Tensor-Train Decomposition"; Novikov et al. 2015,
"Tensorizing Neural Networks", Eq. 4), as used for LSTM language models by Grachev, Ignatov & Savchenko
(2019, "Compression of recurrent neural networks for efficient language modeling", Applied Soft
Computing 79, Sec. 3.3).

With out = m_1 ... m_d and in = n_1 ... n_d, row index (i_1..i_d) and column index (j_1..j_d) read
row-major,

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] G_2[:, i_2, j_2, :] ... G_d[:, i_d, j_d, :]

with cores G_k (r_{k-1}, m_k, n_k, r_k), r_0 = r_d = 1. The product ``W x`` contracts x core by core
and never forms W.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import CompressedLayer, register_layer


def tt_max_ranks(out_modes, in_modes) -> list[int]:
    """Largest meaningful TT ranks r_0..r_d: r_k <= min(prod_{<=k} m n, prod_{>k} m n)."""
    sizes = [m * n for m, n in zip(out_modes, in_modes)]
    d = len(sizes)
    return [1] + [min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(d - 1)] + [1]


def tt_params(out_modes, in_modes, ranks) -> int:
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(out_modes, in_modes)))


def tt_dense(cores, out_modes, in_modes) -> torch.Tensor:
    """Contract the cores into W (out, in). Differentiable."""
    d = len(cores)
    T = cores[0].reshape(out_modes[0], in_modes[0], -1)  # (m1, n1, r1)
    for k in range(1, d):
        # CPU autocast runs tensordot's matmul in bfloat16 but not tensordot itself: keep the cores in T's dtype
        T = torch.tensordot(T, cores[k].to(T.dtype), dims=([T.dim() - 1], [0]))  # (..., m_k, n_k, r_k)
    T = T.reshape(*[s for mn in zip(out_modes, in_modes) for s in mn])  # (m1, n1, ..., md, nd)
    perm = list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2))
    return T.permute(*perm).reshape(math.prod(out_modes), math.prod(in_modes))


def tt_matvec_macs(out_modes, in_modes, ranks, rows: int = 1) -> int:
    """Multiply-adds of :func:`tt_matvec` on ``rows`` vectors (exact: one per term of each einsum).

    Step k contracts (P, r_{k-1}, n_k, q) with G_k (r_{k-1}, m_k, n_k, r_k), where P = rows m_1..m_{k-1}
    (outputs already produced) and q = n_{k+1}..n_d (inputs still waiting), so it costs

        rows * prod(m_1..m_{k-1}) * r_{k-1} * n_k * prod(n_{k+1}..n_d) * m_k * r_k.

    Large in-modes late and large out-modes early make the middle terms big, which is why the order of
    the modes matters for speed (see ``methods.tensor_train``).
    """
    d = len(out_modes)
    return sum(rows * math.prod(out_modes[:k]) * ranks[k] * in_modes[k] * math.prod(in_modes[k + 1:]) * out_modes[k]
               * ranks[k + 1] for k in range(d))


def tt_matvec(cores, out_modes, in_modes, x: torch.Tensor) -> torch.Tensor:
    """``W x`` for x (..., in) -> (..., out), contracting one core at a time."""
    lead = x.shape[:-1]
    N = math.prod(lead) if lead else 1
    rest = math.prod(in_modes)
    t = x.reshape(N, 1, rest)  # (P, r_0, n_1 .. n_d) with P = N
    for k, G in enumerate(cores):
        r, m, n, s = G.shape
        rest //= n
        t = t.reshape(-1, r, n, rest)  # (P, r_{k-1}, n_k, n_{k+1} .. n_d)
        t = torch.einsum("prnq,rmns->pmsq", t, G)  # (P, m_k, r_k, rest): outputs gather in front
        t = t.reshape(-1, s, rest)
    return t.reshape(*lead, math.prod(out_modes))


def tt_svd(W: torch.Tensor, out_modes, in_modes, ranks) -> list[torch.Tensor]:
    """TT-SVD of a matrix (Oseledets 2011, Alg. 1) through TensorLy's ``tensor_train_matrix``.

    W (out, in) is reshaped to (m_1..m_d, n_1..n_d) and decomposed with the given ranks r_0..r_d.
    """
    import tensorly as tl
    from tensorly.decomposition import tensor_train_matrix

    d = len(out_modes)
    tensor = W.detach().double().cpu().reshape(*out_modes, *in_modes).numpy()
    with tl.backend_context("numpy"):
        ttm = tensor_train_matrix(tensor, list(ranks))
    cores = [torch.from_numpy(c.copy()).to(W.dtype) for c in ttm.factors]
    assert len(cores) == d
    return cores


@register_layer
class TTLinear(CompressedLayer):
    """``y = W x + b`` with W a TT-matrix of cores ``core0 .. core{d-1}`` (r_{k-1}, m_k, n_k, r_k)."""

    layer_type = "tt_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, in_modes, out_modes, ranks, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.in_modes, self.out_modes, self.ranks = list(in_modes), list(out_modes), list(ranks)
        assert math.prod(self.in_modes) == in_features and math.prod(self.out_modes) == out_features
        assert len(self.ranks) == len(self.in_modes) + 1 == len(self.out_modes) + 1
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(self.ranks[k], m, n, self.ranks[k + 1]))
            for k, (m, n) in enumerate(zip(self.out_modes, self.in_modes)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "in_modes": self.in_modes,
                "out_modes": self.out_modes, "ranks": self.ranks, "bias": self.bias is not None}

    def dense_weight(self) -> torch.Tensor:
        return tt_dense(list(self.cores), self.out_modes, self.in_modes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # one (out, in) product is cheaper than d small contractions per call
            return F.linear(x, self.dense_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        y = tt_matvec([c.to(x.dtype) for c in self.cores], self.out_modes, self.in_modes, x)
        return y + self.bias.to(y.dtype) if self.bias is not None else y
