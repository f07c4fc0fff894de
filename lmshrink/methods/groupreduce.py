"""GroupReduce: block-wise, frequency-weighted low-rank approximation of vocabulary layers.

Chen, Si, Li, Chelba & Hsieh, "GroupReduce: Block-Wise Low-Rank Approximation for Neural Language
Model Shrinking", NeurIPS 2018. For an embedding or softmax matrix A (V, D) and training word counts f:

1. *Group by frequency* (Sec. 3, Fig. 2 step b): sort words by frequency and cut the sorted list into
   ``num_blocks`` blocks (``split="equal_size"``: equal word counts; ``"equal_mass"``: equal total
   frequency, an alternative we offer).
2. *Rank per block from its frequencies*: the paper gives frequent blocks larger ranks, driven by the
   block's average word frequency. Rule used (``rank_rule="frequency"``, default):
   ``r_t = clip(round(s * fbar_t / fbar_min), 1, cap_t)`` -- rank proportional to the block's mean count,
   with the least frequent block at rank ``s`` and the scale ``s`` the largest that fits the budget
   (bisection), then leftover budget spent one rank at a time on the most frequent blocks. Alternatives:
   ``"sqrt_frequency"`` (r ~ sqrt(fbar)), ``"log_frequency"`` (r ~ 1 + log(fbar / fbar_min)) and
   ``"uniform"`` (one rank for all). ``cap_t = floor(n_t D / (n_t + D))`` keeps every block smaller
   than its dense rows. With ``rank`` given, it is the least frequent block's rank ``s``.
   Measured (``benchmarks/results/``): without retraining the best rule depends on the rate (on an
   under-trained PTB small, sqrt won at 6.6x and frequency at 20x: ``groupreduce_sweep_cpu.md``), but after
   retraining ``num_blocks=10, rank_rule="sqrt_frequency"`` did better (PTB small 20x: 136.96 against 145.90
   with rank ~ frequency, ``vocab_ptb_small_cpu13_20x_*.md``), so the benchmarks use that; the defaults stay
   the paper's. ``rank_multiple`` (default 1) rounds every rank to a multiple (aligned GPU GEMM operands); at
   the PTB-large shape, 6.6x, 8 moved TF32 inference from 0.89x to 0.93x dense (graph vs graph): kept as an
   option, not a default (``lmshrink/layers/block_low_rank.py`` has the figures).
3. *Weighted low-rank fit per block* (Eq. 2): ``min_{U_t, V_t} sum_{i in block t} f_i ||A_i - U_{t,i} V_t||^2``.
   Row weights make this an ordinary SVD of ``diag(sqrt f) A_t``: its top-r right singular vectors are
   V_t and ``U_t = A_t V_t^T`` (the weights cancel in U). ``weighting="frequency"`` is Eq. 2; we offer
   ``"sqrt_frequency"`` and ``"none"`` (plain block SVD) as alternatives.
4. *Refine the grouping* (Eq. 5, Fig. 2 step d): with the block bases V_t fixed, word i's weighted error
   in block t is ``f_i ||A_i - A_i V_t^T V_t||^2``; move every word whose error is smaller in another block,
   then refit the changed blocks by step 3; iterate ``refine_iters`` times or until nothing moves. Moves
   are taken largest gain first and only while the layer stays within budget (a word joining a block of
   rank r costs r numbers of U) and no block falls below its rank. Each move lowers that word's error
   and each refit is optimal for its block, so the total weighted error never increases (tested).

Applied to embedding and softmax separately (the softmax bias stays dense); a tied pair is compressed
once (compress() shares it). Retraining of U and V afterwards is ``lmshrink.train.lm.finetune_lm``
(learning rate divided by 10 whenever validation perplexity stops improving). ``bits`` quantizes U and V
(k-bit, fp16 scale per group) -- GroupReduce + quantization, the paper's 26x. To retrain first and quantize
after, give ``plan_bits`` instead: the factors stay float (trainable) but the ranks are sized so that
:func:`lmshrink.methods.quantize.quantize_model_` with that many bits (same ``group_size``) afterwards
lands exactly on the budget. Packed factors use the ``"balanced"`` group layout
(:mod:`lmshrink.layers.packing`), and the sizes below take the same ``layout`` as the layer they size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..compress import LayerContext, SizeBudget, register_method
from ..errors import LmshrinkError, check
from ..layers.block_low_rank import BlockLowRankEmbedding, BlockLowRankLinear, index_dtype
from ..layers.packing import DEFAULT_LAYOUT, max_packed_cols, packed_bits
from ..layers.quantized import flat_group

RANK_RULES = ("frequency", "sqrt_frequency", "log_frequency", "uniform")
WEIGHTINGS = ("frequency", "sqrt_frequency", "none")
SPLITS = ("equal_size", "equal_mass")


@dataclass
class GroupReduceConfig(SizeBudget):
    """Budget (rank of the least frequent block, fraction or ratio) + GroupReduce options (see module doc)."""

    num_blocks: int = 5
    rank_rule: str = "frequency"
    weighting: str = "frequency"
    split: str = "equal_size"
    refine_iters: int = 5
    bits: int | None = None  # quantize the factors to this many bits (2..8)
    plan_bits: int | None = None  # keep float factors but size the ranks for quantizing them later to plan_bits
    group_size: int | None = 128  # values per quantization scale (None: one per row of V)
    rank_multiple: int = 1  # every rank a multiple of this (where the block's cap allows): aligned GPU GEMMs

    def validate(self) -> None:
        self.validate_budget()
        check(any(v is not None for v in (self.rank, self.ratio, self.fraction)), "groupreduce: give rank, ratio or fraction")
        check(isinstance(self.num_blocks, int) and self.num_blocks >= 1, f"groupreduce: num_blocks must be a positive integer, got {self.num_blocks}")
        check(self.rank_rule in RANK_RULES, f"groupreduce: rank_rule must be one of {', '.join(RANK_RULES)}, got {self.rank_rule!r}")
        check(self.weighting in WEIGHTINGS, f"groupreduce: weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        check(self.split in SPLITS, f"groupreduce: split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        check(isinstance(self.refine_iters, int) and self.refine_iters >= 0, f"groupreduce: refine_iters must be >= 0, got {self.refine_iters}")
        check(self.bits is None or (isinstance(self.bits, int) and 2 <= self.bits <= 8), f"groupreduce: bits must be 2..8 or unset, got {self.bits}")
        check(self.plan_bits is None or (isinstance(self.plan_bits, int) and 2 <= self.plan_bits <= 8),
              f"groupreduce: plan_bits must be 2..8 or unset, got {self.plan_bits}")
        check(self.bits is None or self.plan_bits is None, "groupreduce: give bits (quantize now) or plan_bits (later), not both")
        check(self.group_size is None or (isinstance(self.group_size, int) and self.group_size > 0 and self.group_size % 8 == 0),
              f"groupreduce: group_size must be a positive multiple of 8 or unset, got {self.group_size}")
        check(isinstance(self.rank_multiple, int) and not isinstance(self.rank_multiple, bool) and 1 <= self.rank_multiple <= 64,
              f"groupreduce: rank_multiple must be an integer in 1..64, got {self.rank_multiple!r}")


# ------------------------------------------------------------------------------------------ sizes
def layer_bits(sizes: list[int], ranks: list[int], dim: int, bits: int | None, group_size: int | None,
               layout: str = DEFAULT_LAYOUT) -> int:
    """Exact stored bits of a block low-rank layer (word_pos + U + V), as the layer reports them."""
    V = sum(sizes)
    pos = V * torch.empty((), dtype=index_dtype(V)).element_size() * 8
    L = sum(n * r for n, r in zip(sizes, ranks))
    R = sum(ranks)
    if bits is None:
        return pos + 32 * (L + R * dim)
    return (pos + packed_bits(1, L, bits, flat_group(group_size), layout)
            + packed_bits(R, dim, bits, group_size, layout))


def max_u_entries(budget_bits: float, V: int, dim: int, ranks: list[int], bits: int | None, group_size: int | None,
                  layout: str = DEFAULT_LAYOUT) -> int:
    """Largest total U length sum n_t r_t that keeps the layer within ``budget_bits`` (ranks fixed)."""
    pos = V * torch.empty((), dtype=index_dtype(V)).element_size() * 8
    R = sum(ranks)
    if bits is None:
        return int((budget_bits - pos - 32 * R * dim) // 32)
    # searched, not counted in whole groups of g: a balanced U's groups shrink with its length, so the longest U
    # that fits may need one more (shorter) group than whole groups of g would allow
    left = budget_bits - pos - packed_bits(R, dim, bits, group_size, layout)
    return max_packed_cols(left, bits, flat_group(group_size), layout)


def rank_caps(sizes: list[int], dim: int) -> list[int]:
    return [max(1, min(n, dim, (n * dim) // (n + dim))) for n in sizes]


def rank_scores(mean_freq: torch.Tensor, rule: str) -> list[float]:
    """Relative rank weight g_t >= 1 of each block (1 for the least frequent)."""
    f = mean_freq.double().clamp_min(1e-12)
    base = f.min()
    if rule == "frequency":
        g = f / base
    elif rule == "sqrt_frequency":
        g = (f / base).sqrt()
    elif rule == "log_frequency":
        g = 1 + (f / base).log()
    else:
        g = torch.ones_like(f)
    return [float(x) for x in g]


def assign_ranks(sizes: list[int], scores: list[float], dim: int, budget_bits: float | None, rank: int | None,
                 bits: int | None, group_size: int | None, where: str, dense_bits: int | None = None,
                 multiple: int = 1, layout: str = DEFAULT_LAYOUT) -> list[int]:
    """Ranks per block from the rule's scores and the budget (see module doc, step 2).

    ``multiple`` m > 1 rounds every rank to a multiple of m (at least m) and grows ranks m at a time; a block
    whose cap is below m keeps its cap, any other block's cap is rounded down to a multiple of m. Why: the
    block GEMMs read U_t and the block's columns of Z = h V^T at offsets and leading dimensions that are sums
    of n_t r_t and r_t; with ranks a multiple of 4 (fp32/TF32) or 8 (16-bit) every operand is 16-byte aligned,
    which cuBLAS needs for its vectorized tensor-core kernels.
    """
    m = multiple
    caps = [c if c < m else c - c % m for c in rank_caps(sizes, dim)]

    def ranks_at(s: float) -> list[int]:
        return [min(c, max(m, m * int(round(s * g / m)))) for g, c in zip(scores, caps)]

    if rank is not None:
        t_min = min(range(len(sizes)), key=lambda t: scores[t])  # the anchor: least frequent block
        check(rank <= caps[t_min], f"{where}: rank {rank} would make the least frequent block ({sizes[t_min]} x {dim}) "
                                   f"no smaller than dense; use rank <= {caps[t_min]}")
        return ranks_at(float(rank))
    assert budget_bits is not None

    def fits(r):
        return layer_bits(sizes, r, dim, bits, group_size, layout) <= budget_bits

    ones = [min(m, c) for c in caps]
    if not fits(ones):
        best = layer_bits(sizes, ones, dim, bits, group_size, layout)
        raise_budget(where, budget_bits, best, len(sizes), dense_bits, m)
    lo, hi = 0.0, float(max(caps))
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(ranks_at(mid)) else (lo, mid)
    ranks = ranks_at(lo)
    order = sorted(range(len(sizes)), key=lambda t: -scores[t])
    changed = True
    while changed:  # spend what the rounding left, most frequent blocks first
        changed = False
        for t in order:
            if ranks[t] + m <= caps[t]:
                trial = ranks[:t] + [ranks[t] + m] + ranks[t + 1:]
                if fits(trial):
                    ranks, changed = trial, True
    return ranks


def raise_budget(where: str, budget_bits: float, best_bits: int, blocks: int, dense_bits: int | None,
                 multiple: int = 1) -> None:
    largest = f"{dense_bits / best_bits:.3g}" if dense_bits else f"{budget_bits / best_bits:.3g} x the one given"
    floor = "rank 1" if multiple == 1 else f"rank {multiple} (rank_multiple)"
    raise LmshrinkError(
        f"{where}: the budget ({budget_bits / 8:,.0f} bytes) is below the smallest GroupReduce layer with {blocks} "
        f"blocks, all at {floor} ({best_bits / 8:,.0f} bytes); the largest reachable ratio is {largest} "
        f"(fewer blocks{'' if multiple == 1 else ' or a smaller rank_multiple'} reach higher)")


# ------------------------------------------------------------------------------------------ fitting
def row_weights(counts: torch.Tensor, weighting: str) -> torch.Tensor:
    f = counts.double()
    f = f / f.sum()
    if weighting == "frequency":
        return f
    if weighting == "sqrt_frequency":
        return f.sqrt()
    return torch.ones_like(f)


def weighted_basis(A: torch.Tensor, w: torch.Tensor, rank: int) -> torch.Tensor:
    """Eq. 2 for one block: orthonormal V (r, D) minimizing sum_i w_i ||A_i - A_i V^T V||^2 (float64)."""
    M = w.sqrt()[:, None] * A  # (n, D)
    _, _, Vh = torch.linalg.svd(M, full_matrices=False)
    Vt = Vh[:rank]
    if Vt.shape[0] < rank:  # fewer rows than the rank: pad with any orthonormal completion
        Q, _ = torch.linalg.qr(torch.cat([Vt, torch.eye(A.shape[1], dtype=A.dtype, device=A.device)], 0).t())
        Vt = Q.t()[:rank]
    return Vt


def word_errors(A: torch.Tensor, w: torch.Tensor, bases: list[torch.Tensor]) -> torch.Tensor:
    """(V, c): w_i ||A_i - A_i V_t^T V_t||^2 for every word i and block t (Eq. 5's per-word cost)."""
    norms = (A * A).sum(1)  # (V,)
    Vall = torch.cat(bases, 0)  # (sum r, D)
    P = (A @ Vall.t()) ** 2  # (V, sum r)
    cols, start = [], 0
    for B in bases:
        cols.append(P[:, start:start + B.shape[0]].sum(1))
        start += B.shape[0]
    return w[:, None] * (norms[:, None] - torch.stack(cols, 1)).clamp_min(0)


@dataclass
class GroupReduceFit:
    blocks: list[torch.Tensor]  # word ids of each block (long)
    ranks: list[int]
    bases: list[torch.Tensor]  # orthonormal V_t (r_t, D), float64
    history: list[float] = field(default_factory=list)  # total weighted error after each fit (Eq. 5 objective)
    moves: list[int] = field(default_factory=list)


def total_error(A, w, blocks, bases) -> float:
    return float(sum((w[b] * ((A[b] - (A[b] @ V.t()) @ V) ** 2).sum(1)).sum() for b, V in zip(blocks, bases)))


def split_blocks(counts: torch.Tensor, num_blocks: int, split: str) -> list[torch.Tensor]:
    V = counts.numel()
    order = torch.sort(-counts.double(), stable=True).indices  # most frequent first, ties by id
    c = min(num_blocks, V)
    if split == "equal_size":
        sizes = [V // c + (1 if t < V % c else 0) for t in range(c)]
    else:  # equal_mass: cut the cumulative frequency into c equal parts, at least one word per block
        cum = counts.double()[order].cumsum(0) / counts.double().sum()
        cuts = [int(torch.searchsorted(cum, torch.tensor((t + 1) / c, dtype=cum.dtype))) + 1 for t in range(c - 1)]
        bounds, prev = [], 0
        for t, cut in enumerate(cuts):
            cut = min(max(cut, prev + 1), V - (c - 1 - t))
            bounds.append(cut)
            prev = cut
        edges = [0, *bounds, V]
        sizes = [edges[t + 1] - edges[t] for t in range(c)]
    out, start = [], 0
    for n in sizes:
        out.append(order[start:start + n])
        start += n
    return out


def groupreduce_fit(W: torch.Tensor, counts: torch.Tensor, config: GroupReduceConfig, budget_bits: float | None,
                    where: str = "groupreduce", dense_bits: int | None = None,
                    layout: str = DEFAULT_LAYOUT) -> GroupReduceFit:
    """Steps 1-4 of the module doc on a (V, D) matrix; float64 on W's device. ``layout``: the packed layout the
    budget is for (that of the layer built, or of quantizing it later with ``plan_bits``)."""
    A = W.detach().double()
    V, D = A.shape
    counts = counts.to(A.device).double()
    w = row_weights(counts, config.weighting)
    blocks = split_blocks(counts, config.num_blocks, config.split)
    sizes = [b.numel() for b in blocks]
    mean_f = torch.stack([counts[b].mean() for b in blocks])
    bits = config.bits or config.plan_bits  # the size the ranks are chosen for
    ranks = assign_ranks(sizes, rank_scores(mean_f, config.rank_rule), D, budget_bits, config.rank,
                         bits, config.group_size, where, dense_bits, config.rank_multiple, layout)
    if budget_bits is None:  # a rank was given: the refinement may not grow the layer
        budget_bits = layer_bits(sizes, ranks, D, bits, config.group_size, layout)
    bases = [weighted_basis(A[b], w[b], r) for b, r in zip(blocks, ranks)]
    fit = GroupReduceFit(blocks, ranks, bases, [total_error(A, w, blocks, bases)])
    L_max = max_u_entries(budget_bits, V, D, ranks, bits, config.group_size, layout)
    assign = torch.empty(V, dtype=torch.long, device=A.device)
    for t, b in enumerate(blocks):
        assign[b] = t
    for _ in range(config.refine_iters):
        E = word_errors(A, w, bases)  # (V, c)
        cur = E.gather(1, assign[:, None]).squeeze(1)
        best = E.argmin(1)
        gain = cur - E.gather(1, best[:, None]).squeeze(1)
        tol = 1e-12 * float(cur.max().clamp_min(1e-300))
        cand = torch.nonzero((gain > tol) & (best != assign)).squeeze(1)
        cand = cand[torch.argsort(gain[cand], descending=True)].tolist()
        n = [int(x) for x in torch.bincount(assign, minlength=len(blocks)).tolist()]
        L = sum(ni * r for ni, r in zip(n, ranks))
        best_l, assign_l = best.tolist(), assign.tolist()
        moved, touched = 0, set()
        for i in cand:
            s, t = assign_l[i], best_l[i]
            delta = ranks[t] - ranks[s]
            if n[s] - 1 < ranks[s] or L + delta > L_max:
                continue
            n[s] -= 1
            n[t] += 1
            L += delta
            assign_l[i] = t
            touched.update((s, t))
            moved += 1
        if not moved:
            break
        assign = torch.tensor(assign_l, device=A.device)
        blocks = [torch.nonzero(assign == t).squeeze(1) for t in range(len(blocks))]
        bases = [weighted_basis(A[b], w[b], r) if t in touched else B
                 for t, (b, r, B) in enumerate(zip(blocks, ranks, bases))]
        fit.history.append(total_error(A, w, blocks, bases))
        fit.moves.append(moved)
    fit.blocks, fit.bases = blocks, bases
    return fit


def balanced_factors(A: torch.Tensor, Vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U = A V^T, V as given, with each rank-1 term's norm split evenly between U's column and V's row."""
    C = A @ Vt.t()  # (n, r)
    a = C.norm(dim=0)
    s = torch.where(a > 0, a.sqrt(), torch.ones_like(a))
    return C / s, Vt * s[:, None]


def build_layer(W: torch.Tensor, fit: GroupReduceFit, flavour: str, bias: torch.Tensor | None,
                bits: int | None, group_size: int | None, layout: str = DEFAULT_LAYOUT) -> nn.Module:
    A = W.detach().double()
    V, D = A.shape
    blocks = [torch.sort(b).values for b in fit.blocks]  # ascending ids inside a block
    order = torch.cat(blocks)
    word_pos = torch.empty(V, dtype=torch.long, device=A.device)
    word_pos[order] = torch.arange(V, device=A.device)
    Us, Vs = zip(*(balanced_factors(A[b], B) for b, B in zip(blocks, fit.bases)))
    sizes = [b.numel() for b in blocks]
    if flavour == "embedding":
        layer = BlockLowRankEmbedding(V, D, sizes, fit.ranks, bits, group_size, layout)
    else:
        layer = BlockLowRankLinear(V, D, sizes, fit.ranks, bits, group_size, bias=bias is not None, layout=layout)
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
    layer = layer.to(W.device)
    layer.set_factors(word_pos, list(Us), list(Vs))
    return layer


@register_method("groupreduce", GroupReduceConfig, needs_counts=True)
def groupreduce_compress(module: nn.Module, config: GroupReduceConfig, ctx: LayerContext):
    """GroupReduce (Chen et al. 2018): frequency blocks, weighted SVD per block (Eq. 2), refinement (Eq. 5)."""
    W = module.weight  # (V, D) for both the embedding and the softmax
    V, D = W.shape
    where = f"groupreduce on {ctx.name}"
    check(ctx.word_counts is not None, f"{where}: needs the training word counts of the vocabulary")
    check(ctx.word_counts.numel() == V, f"{where}: frequency vector has {ctx.word_counts.numel()} entries but the layer has {V} words")
    check(config.num_blocks <= V, f"{where}: num_blocks {config.num_blocks} exceeds the vocabulary size {V}")
    dense = ctx.dense_bits(module)
    ratio = config.target_ratio()
    budget = dense / ratio if ratio is not None else None
    # one layout for the ranks' budget and the layer built (with plan_bits: that quantize_model_ defaults to)
    layout = DEFAULT_LAYOUT
    fit = groupreduce_fit(W, ctx.word_counts, config, budget, where, dense, layout)
    sizes = [b.numel() for b in fit.blocks]
    got = layer_bits(sizes, fit.ranks, D, config.bits or config.plan_bits, config.group_size, layout)
    check(got < dense, f"{where}: ranks {fit.ranks} would store {got:,} bits, not fewer than the dense {dense:,}; "
                       f"use a smaller rank (the least frequent block's rank) or a ratio > 1")
    layer = build_layer(W, fit, ctx.flavour, getattr(module, "bias", None), config.bits, config.group_size, layout)
    layer.fit_history = fit.history
    return layer


__all__ = ["GroupReduceConfig", "groupreduce_fit", "layer_bits", "split_blocks", "weighted_basis", "word_errors",
           "total_error"]
