"""Block low-rank vocabulary layers: GroupReduce's compressed embedding and softmax.

Chen et al. 2018 ("GroupReduce", Sec. 3) partition the vocabulary into ``c`` blocks and approximate
the rows of block ``t`` (n_t words, D columns) by ``U_t V_t`` with U_t (n_t, r_t), V_t (r_t, D).

Storage (three tensors, whatever ``c`` is, so safetensors headers stay negligible):
- ``word_pos`` (V,) int16/int32: the position of each word in block order (blocks concatenated);
- ``U``: every U_t flattened row-major and concatenated, (sum n_t r_t,);
- ``V``: every V_t stacked, (sum r_t, D).
Block sizes and ranks are in ``spec()`` (the manifest), so offsets are recomputed, never stored.
With ``bits`` set, U and V are k-bit packed (:class:`~lmshrink.layers.quantized.PackedMatrix`) --
the paper's GroupReduce + quantization -- in ``layout`` ``"balanced"`` (default) or ``"padded"``
(:mod:`lmshrink.layers.packing`); only then does ``spec()`` hold a ``layout``, and a manifest's packed spec
without one was written before layouts existed, so it loads as padded (``from_spec``).

Fast paths (no (V, D) matrix is ever built in forward):
- softmax ``project(h)``: one GEMM ``Z = h V^T`` for all blocks at once (N, sum r_t), then one GEMM
  per block ``b_t + Z_t U_t^T`` (c matmuls, a fixed small number; the softmax bias, permuted to block
  order, rides in the GEMM), put back in vocabulary order with a single ``index_select`` by ``word_pos``.
  Without autograd each block GEMM writes straight into its columns of one (N, V) buffer (``out=``), so
  the (N, V) logits cross memory three times (GEMM write, permutation read and write) instead of seven
  (GEMM, ``cat``, permutation, bias add). Measured on an H100 at PTB-large shapes (V 10000, D 1500, 10
  blocks, N 2240) that saved little (whole model 1.19x dense vs 1.17x before, within noise): the ten
  small-rank block GEMMs take most of the softmax's time (~0.29 ms of 0.65 ms at fp32), so with TF32
  matmuls, where the dense softmax drops to 0.30 ms, GroupReduce's softmax (0.49 ms) is the slower one. Not launch overhead:
  with the whole forward replayed as one CUDA graph (``benchmarks/speed.py --cuda-graph``, TF32,
  ``results/vocab_speed_gpu_graph.md``) the GroupReduce model still runs at 0.90x the dense model's
  tokens/s (SVD 1.04x), so the time is in the kernels themselves;
- alignment (stop 14): the inference path's block-order logits buffer starts every block on an ``ALIGN``-column
  boundary, the lookup's scatter matrix has an ``ALIGN``-multiple width and the grouped path pads n_max / r_max
  to ``ALIGN``; with GroupReduce's ``rank_multiple=8`` every U_t and Z column slice is aligned too. Measured on
  an H100 at the PTB-large shape (``results/vocab_speed_gpu_aligned_{tf32,fp32}.md``): whole model, graph vs
  graph, TF32 0.93x dense with aligned ranks against 0.89x without, true fp32 1.26x against 1.25x -- so operand
  alignment is not where GroupReduce's TF32 gap lies either. The eager breakdown there puts half of the gap in
  the embedding lookup (0.38-0.43 ms against dense's 0.05 ms per 64 x 35 window), the other half in the softmax;
- embedding lookup (``layer.lookup = "scatter"``, the default): each id's U row is scattered into its block's
  columns of an (N, sum r_t) matrix, then one GEMM with V; where each word's U row starts, its rank and its
  block's first column of V are cached per word, so a lookup is three gathers, a scatter and the GEMM.
  ``layer.lookup = "bag"`` (a runtime knob, not saved) instead sums each word's r_t rows of V weighted by its
  U row in one ``embedding_bag`` (N x R_max x D reads, R_max the largest rank; padding slots weigh 0), with no
  (N, sum r_t) intermediate. On 2 CPU threads at V 10000, D 650, 10 blocks, 6.6x: 16.9 ms against 21.3 ms per
  2240 ids, 0.09 against 0.12 ms per id. On an H100 it loses (``results/vocab_speed_gpu_bag_tf32.md``, PTB-large
  shape, 6.6x, TF32): encoder 2.09 ms per 64 x 35 window against 0.47 (dense 0.12), whole model 0.53x dense
  against 0.89x (graph vs graph) -- the bag kernel reads R_max rows of V per id, the scatter + TF32 GEMM path is
  the faster one there. So the default stays ``"scatter"``; ``speed.py --bag-lookup`` times both. Rebuilding the
  whole (V, D) table from its blocks per call and gathering rows (what the pruned layers' GPU lookup does) was
  tried too and dropped: 0.40-0.46 ms against scatter's 0.47-0.48, whole model 0.86x dense[graph] against 0.88x
  (``results/logs/2026-11-23h/gr_lookup_probe.*``) -- the ten block GEMMs cost what the scatter path costs;

Block-diagonal path (``layer.blockdiag``, a runtime knob: ``"auto"`` (default), ``"on"``, ``"off"``; or
:func:`set_blockdiag`): at inference U is expanded once into ``Ubd`` (V, R), R = sum r_t rounded up to ``ALIGN``,
in *vocabulary* order -- word w's U row sits in its block's columns, zeros elsewhere -- and V into ``Vp``
(R, D) with zero rows past sum r_t. Then the softmax is two plain GEMMs, ``b + (h Vp^T) Ubd^T``, with the logits
born in vocabulary order (no permutation, the bias rides in the addmm), and the lookup is one row gather and one
GEMM, ``Ubd[ids] Vp``. It spends c times the block path's multiply-adds (every word meets every block's
columns), R/D of the dense layer's, on two big aligned GEMMs instead of c small ones plus a (N, V) permutation.
Why: profiled on an H100 at the PTB-large shape, TF32, per 64 x 35 window as CUDA-graph replays
(``results/logs/2026-11-24d/gr_profile.log``), the block softmax spent 0.42 ms (dense 0.26): its first GEMM ran
cuBLAS's ``align1`` kernels because sum r_t = 907 leaves every later operand misaligned (92 us for 3 GFLOP), the ten
block GEMMs took 0.16 ms, the per-block bias fills 0.07 ms and the permutation 0.08 ms; the block-diagonal
softmax took 0.21 ms (aligned ranks), the lookup 0.047 against the scatter path's 0.10-0.14 (dense gather 0.018).
The cost is memory: ``Ubd`` holds V x R floats (R/D of a dense weight, 0.61 at 6.6x there: 36 MB beside the
layer's 9 MB of factors and the dense layer's 60 MB), rebuilt when a factor, ``word_pos`` or the dtype/device
changes, dropped by ``.to()`` / ``.cpu()`` and state-dict loading, never saved. ``"auto"`` takes it only where it
pays and stays smaller than dense: on CUDA, on tensor cores (float32 with TF32 matmuls allowed, or half types),
without autograd, when the operands plus the layer's factors hold fewer values than the dense weight
(:meth:`blockdiag_fits`; until stop 22 the rule was R < D, which let a 5x layer outgrow dense) and no other knob
was set (``group_gemms``, ``lookup``). Whole model at that shape,
3 interleaved rounds, graph vs graph (``results/vocab_speed_gpu_auto_{high,highest}.md``; eager rows wander by up to
40% there): with TF32 1.01x dense's tokens/s against the block path's 0.89x, GroupReduce+q8 1.03x against 0.88x;
at true fp32 (no TF32) the multiply-adds decide again and the block path wins (graph 1.26x against the block-diagonal
1.07x, both above dense: ``results/vocab_speed_gpu_blockdiag_highest.md``), as on CPU, so "auto" keeps the block
path there (1.25x). ``"off"`` keeps GPU memory at the factors' size.

Grouped softmax (an inference serving knob, ``layer.group_gemms = G`` or :func:`set_group_gemms`; ``None``,
the default, keeps the per-block path): the c block GEMMs become at most G batched GEMMs (``baddbmm``), each
over a group of blocks zero-padded to the group's largest block size and rank. Why: at PTB-large shapes the
ten block GEMMs are small, so fewer, larger launches can win although the padding adds multiply-adds.
Measured on an H100 (``benchmarks/results/vocab_speed_gpu_grouped_*.md``, softmax ms per 64 x 35 window):
TF32 per-block 0.56, G = 2 0.51, G = 3 0.50, dense 0.33; true fp32 per-block 0.77, G = 2 0.70, G = 3 0.67,
dense 1.58. A 10-13% cut, not enough to beat the dense softmax with TF32, so the default stays per block;
on CPU (2 threads) the grouped path is no faster. :func:`plan_block_groups` picks the groups that
minimise the padded multiply-adds ``sum_g k_g n_max r_max`` for the allowed number of launches (exact DP over the blocks sorted by
rank). The padded U, (k_g, n_max, r_max) per group, is an inference cache derived from U (never saved, not
in ``spec()``): its size is ``sum_g k_g n_max r_max`` entries against U's ``sum_t n_t r_t``, i.e. U's size
times (padded multiply-adds / exact ones) -- at the PTB-large ranks above (10 blocks of 1000 words) 4.16x
with G = 1, 1.58x with G = 2, 1.19x with G = 3, 1.0x with G = c; in float32 whatever U's storage is. The
padded logits of all groups go to vocabulary order with one ``index_select`` (no block-order buffer, no
separate ``word_pos`` permutation). It is rebuilt when U, the bias or ``word_pos``
change (data pointer and version, like the index cache) and after ``set_factors``; for a quantized layer
(``bits``) it is not cached at all (U is dequantized per call anyway, and a cache keyed on the float copy
could serve stale values after requantization), the padded copy is rebuilt per call with one ``index_copy_``.
Only without autograd: training keeps the per-block path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import check
from .base import CompressedLayer, DerivedCaches, register_layer, tensor_version
from .packing import DEFAULT_LAYOUT, check_layout
from .quantized import PackedMatrix, flat_group, spec_with_layout

ALIGN = 8  # elements: 32 bytes of fp32, 16 of bf16 -- what cuBLAS's vectorized tensor-core kernels need


LOOKUPS = ("scatter", "bag")
BLOCKDIAG = ("auto", "on", "off")


def up(n: int) -> int:
    """n rounded up to a multiple of ALIGN."""
    return -(-n // ALIGN) * ALIGN


def index_dtype(n: int) -> torch.dtype:
    """Smallest signed integer dtype holding 0..n-1 (safetensors and torch lack uint16)."""
    return torch.int16 if n <= 2**15 else torch.int32


def check_group_gemms(max_groups, none_ok: bool = False) -> None:
    """``group_gemms`` is an integer >= 1 (a bool is not), or None where ``none_ok`` (the per-block path)."""
    check((none_ok and max_groups is None)
          or (isinstance(max_groups, int) and not isinstance(max_groups, bool) and max_groups >= 1),
          f"group_gemms must be an integer >= 1{' or None' if none_ok else ''}, got {max_groups!r}")


def plan_block_groups(block_sizes: list[int], ranks: list[int], max_groups: int) -> list[list[int]]:
    """Split blocks into at most ``max_groups`` groups for batched GEMMs, minimising padded multiply-adds.

    Blocks are sorted by rank (descending, ties by index) and cut into contiguous runs of that order; a group
    costs ``len(g) * max n_t * max r_t`` per token (every block padded to the group's largest size and rank).
    Exact DP over the cut points, O(G c^2): c is at most a few hundred. Among equally cheap plans the one with
    the fewest groups (launches) wins. Groups come out in rank order, each group's blocks in index order.
    """
    check_group_gemms(max_groups)
    c = len(ranks)
    check(c == len(block_sizes) and c > 0, "block_sizes and ranks must have one entry per block")
    if max_groups >= c:
        return [[t] for t in range(c)]
    order = sorted(range(c), key=lambda t: (-ranks[t], t))
    # cost[i][j]: blocks order[i:j] as one group (j > i)
    cost = [[0] * (c + 1) for _ in range(c + 1)]
    for i in range(c):
        n_max = 0
        for j in range(i + 1, c + 1):
            n_max = max(n_max, block_sizes[order[j - 1]])
            cost[i][j] = (j - i) * n_max * ranks[order[i]]  # order[i] has the group's largest rank
    inf = float("inf")
    best = [[inf] * (c + 1) for _ in range(max_groups + 1)]  # best[g][j]: first j blocks in g groups
    cut = [[0] * (c + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for g in range(1, max_groups + 1):
        for j in range(g, c + 1):
            for i in range(g - 1, j):
                v = best[g - 1][i] + cost[i][j]
                if v < best[g][j]:
                    best[g][j], cut[g][j] = v, i
    g = min(range(1, max_groups + 1), key=lambda k: (best[k][c], k))
    groups, j = [], c
    while g > 0:
        i = cut[g][j]
        groups.append(sorted(order[i:j]))
        j, g = i, g - 1
    return groups[::-1]


def _set_knob(model: nn.Module, name: str, value) -> int:
    """Set runtime knob ``name`` on every block low-rank layer of ``model``; how many layers were set."""
    layers = [m for m in model.modules() if isinstance(m, _BlockLowRank)]
    for m in layers:
        setattr(m, name, value)
    return len(layers)


def set_group_gemms(model: nn.Module, max_groups: int | None) -> int:
    """Set ``group_gemms`` (the grouped softmax's number of batched GEMMs, ``None``: per block) on every
    block low-rank layer of ``model``; returns how many layers were set. A runtime knob, never saved."""
    check_group_gemms(max_groups, none_ok=True)
    return _set_knob(model, "group_gemms", max_groups)


def set_lookup(model: nn.Module, mode: str) -> int:
    """Set the embedding ``lookup`` path (``"scatter"`` or ``"bag"``) on every block low-rank layer of ``model``;
    returns how many layers were set. A runtime knob, never saved."""
    check(mode in LOOKUPS, f"lookup must be one of {', '.join(LOOKUPS)}, got {mode!r}")
    return _set_knob(model, "lookup", mode)


def set_blockdiag(model: nn.Module, mode: str) -> int:
    """Set the block-diagonal inference path (``"auto"``, ``"on"`` or ``"off"``, see the module docstring) on every
    block low-rank layer of ``model``; returns how many layers were set. A runtime knob, never saved."""
    check(mode in BLOCKDIAG, f"blockdiag must be one of {', '.join(BLOCKDIAG)}, got {mode!r}")
    return _set_knob(model, "blockdiag", mode)


def tf32_matmuls() -> bool:
    """Whether float32 CUDA matmuls may run as TF32. ``fp32_precision`` answers under both the legacy switches
    (``allow_tf32``, ``set_float32_matmul_precision``) and the new ones; reading the legacy ones after the new API
    was used raises."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    return precision == "tf32" if precision is not None else bool(torch.backends.cuda.matmul.allow_tf32)


class _BlockLowRank(DerivedCaches, CompressedLayer):
    def __init__(self, num_rows: int, dim: int, block_sizes: list[int], ranks: list[int],
                 bits: int | None = None, group_size: int | None = None, layout: str = DEFAULT_LAYOUT):
        super().__init__()
        check_layout(layout)
        check(len(block_sizes) == len(ranks) and len(ranks) > 0, "block_sizes and ranks must have one entry per block")
        check(sum(block_sizes) == num_rows, f"block sizes sum to {sum(block_sizes)}, not {num_rows}")
        check(all(n >= 1 for n in block_sizes) and all(1 <= r <= min(n, dim) for n, r in zip(block_sizes, ranks)),
              "every block needs >= 1 word and a rank in [1, min(words, dim)]")
        self.num_rows, self.dim = num_rows, dim
        self.block_sizes, self.ranks = [int(n) for n in block_sizes], [int(r) for r in ranks]
        self.nbits, self.group_size = bits, group_size
        self.layout = layout if bits is not None else None  # float factors have no layout (nor a spec key for it)
        self.u_len = sum(n * r for n, r in zip(self.block_sizes, self.ranks))
        self.r_total = sum(self.ranks)
        self.register_buffer("word_pos", torch.zeros(num_rows, dtype=index_dtype(num_rows)))
        if bits is None:
            self.U = nn.Parameter(torch.zeros(self.u_len))
            self.V = nn.Parameter(torch.zeros(self.r_total, dim))
        else:
            # U is flat: quantize it in fixed-length groups along the flattened order
            self.U = PackedMatrix(1, self.u_len, bits, flat_group(group_size), layout)
            self.V = PackedMatrix(self.r_total, dim, bits, group_size, layout)
        # offsets derived from the spec (Python ints; never stored)
        self._u_off, self._r_off, self._starts, self._pstarts = [0], [0], [0], [0]
        for n, r in zip(self.block_sizes, self.ranks):
            self._u_off.append(self._u_off[-1] + n * r)
            self._r_off.append(self._r_off[-1] + r)
            self._starts.append(self._starts[-1] + n)
            # the inference path's block-order logits buffer starts every block on a 32-byte boundary (GEMM output)
            self._pstarts.append(up(self._pstarts[-1] + n))
        self._cache: dict = {}
        self.group_gemms: int | None = None  # grouped softmax (see the module docstring); a runtime knob
        self.lookup = "scatter"  # embedding lookup path, "scatter" or "bag" (see the module docstring); a runtime knob
        self._gcache: dict = {}  # the grouped path's plan, indices and padded U / bias
        self.blockdiag = "auto"  # block-diagonal inference path (see the module docstring); a runtime knob
        self._bcache: dict = {}  # the block-diagonal path's Ubd / Vp

    # ------------------------------------------------------------------ storage helpers
    def spec(self) -> dict:
        s = {"num_rows": self.num_rows, "dim": self.dim, "block_sizes": self.block_sizes, "ranks": self.ranks,
             "bits": self.nbits, "group_size": self.group_size}
        return s if self.nbits is None else {**s, "layout": self.layout}

    @classmethod
    def from_spec(cls, spec: dict) -> CompressedLayer:
        # a packed spec without a layout predates layouts: padded (see quantized.spec_with_layout)
        return super().from_spec(spec if spec.get("bits") is None else spec_with_layout(spec))

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
        self.clear_caches()
        if self.nbits is None:
            self.U.copy_(U)
            self.V.copy_(V)
        else:
            self.U.set_(U.view(1, -1))
            self.V.set_(V)

    def clear_caches(self) -> None:
        """Drop every derived inference tensor (index maps, grouped and block-diagonal operands); also on moves and
        loads (DerivedCaches)."""
        self._cache, self._gcache, self._bcache = {}, {}, {}

    def block_factors(self, dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
        U, V = self.factors(dtype)
        return [(U[self._u_off[t]:self._u_off[t + 1]].view(n, r), V[self._r_off[t]:self._r_off[t + 1]])
                for t, (n, r) in enumerate(zip(self.block_sizes, self.ranks))]

    def _index(self, device) -> dict:
        """Derived int64 index tensors, cached per device and per version of ``word_pos``."""
        # an inference tensor (a buffer moved under inference_mode) keeps no version counter; ``set_factors``
        # clears the cache itself, so the data pointer is enough there
        key = (device, tensor_version(self.word_pos), self.word_pos.data_ptr())
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
                "ppos": pos + (torch.tensor(self._pstarts[:-1], device=dev) - torch.tensor(self._starts[:-1], device=dev))[block],
                "order": torch.empty_like(pos).scatter_(0, pos, torch.arange(self.num_rows, device=dev)),  # inverse
                "word": torch.stack([u_src, ranks, r_off], 1),  # (V, 3): one gather per lookup
                "k": torch.arange(max(self.ranks), device=dev),
            }
        return self._cache

    def _grouped(self, device, dtype, U: torch.Tensor, bias: torch.Tensor | None) -> dict:
        """The grouped path's tensors: the plan's index tensors (cached per device, groups and ``word_pos``)
        and the padded U / bias (cached per their versions too, except for packed layers: see module doc)."""
        ix = self._index(device)
        skey = (self.group_gemms, device, ix["key"])
        if self._gcache.get("skey") != skey:
            groups = plan_block_groups(self.block_sizes, self.ranks, self.group_gemms)
            shapes, u_dst, zcol, col_of_pos = [], [], [], []  # col_of_pos: block-order position -> padded column
            u_base = col_base = 0
            for g in groups:
                # padded to ALIGN as well, so every group's U, Z and logits slice is aligned for cuBLAS
                k, n_max, r_max = len(g), up(max(self.block_sizes[t] for t in g)), up(max(self.ranks[t] for t in g))
                shapes.append((k, n_max, r_max))
                for i, t in enumerate(g):
                    n, r = self.block_sizes[t], self.ranks[t]
                    rows = u_base + i * n_max * r_max + torch.arange(n)[:, None] * r_max  # (n, 1)
                    u_dst.append((rows + torch.arange(r)[None, :]).reshape(-1))  # U_t row-major -> padded slot
                    zc = torch.full((r_max,), self.r_total)  # padding reads the appended zero row of Z^T
                    zc[:r] = torch.arange(self._r_off[t], self._r_off[t] + r)
                    zcol.append(zc)
                    col_of_pos.append((self._starts[t], col_base + i * n_max + torch.arange(n)))
                u_base += k * n_max * r_max
                col_base += k * n_max
            # u_dst was built group by group; U is stored block by block: reorder to block order
            blocks = [t for g in groups for t in g]
            u_dst_block = [None] * len(blocks)
            for chunk, t in zip(u_dst, blocks):
                u_dst_block[t] = chunk
            pos_col = torch.empty(self.num_rows, dtype=torch.long)
            for s0, cols in col_of_pos:
                pos_col[s0:s0 + len(cols)] = cols
            src = pos_col.to(device).index_select(0, ix["pos"])  # (V,) each word's column in the padded logits
            self._gcache = {"skey": skey, "groups": groups, "shapes": shapes, "u_len": u_base, "cols": col_base,
                            "u_dst": torch.cat(u_dst_block).to(device), "zcol": torch.cat(zcol).to(device), "src": src}
        gc = self._gcache
        packed = self.nbits is not None

        vkey = None if packed else (dtype, self.U.data_ptr(), tensor_version(self.U),
                                    None if bias is None else (bias.data_ptr(), tensor_version(bias), bias.dtype))
        if packed or gc.get("vkey") != vkey:
            u_pad = U.new_zeros(gc["u_len"]).index_copy_(0, gc["u_dst"], U)  # zeros in the padding
            b_pad = None if bias is None else U.new_zeros(gc["cols"]).index_copy_(0, gc["src"], bias.to(dtype))
            Us, bs, uo, co = [], [], 0, 0
            for k, n, r in gc["shapes"]:
                Us.append(u_pad[uo:uo + k * n * r].view(k, n, r))  # (k, n_max, r_max)
                bs.append(None if b_pad is None else b_pad[co:co + k * n].view(k, 1, n))  # (k, 1, n_max)
                uo, co = uo + k * n * r, co + k * n
            vals = {"U": Us, "b": bs}
            if packed:
                return {**gc, **vals}
            gc.update(vals, vkey=vkey)
        return gc

    def _project_grouped(self, h2: torch.Tensor, V: torch.Tensor, U: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # h2 (N, D) -> logits (N, V) in vocabulary order, one baddbmm per group of blocks
        gc = self._grouped(h2.device, h2.dtype, U, bias)
        N = h2.shape[0]
        zt = h2.new_empty(self.r_total + 1, N)  # Z^T (sum r_t + 1, N), last row zero: the padding's source
        torch.mm(V, h2.t(), out=zt[: self.r_total])
        zt[self.r_total].zero_()
        zg = zt.index_select(0, gc["zcol"])  # (sum_g k_g r_max, N): every group's Z columns, padded, at once
        pad = h2.new_empty(N, gc["cols"])  # (N, sum_g k_g n_max) padded logits, group by group
        zo = co = 0
        for (k, n, r), Ug, bg in zip(gc["shapes"], gc["U"], gc["b"]):
            Zg = zg[zo:zo + k * r].view(k, r, N).transpose(1, 2)  # (k, N, r_max)
            # (k, N, n_max), strided into pad: on CPU (2 threads, PTB-large shapes) writing there directly beat a
            # contiguous result + copy at N = 2240 (144 vs 160 ms at G = 2) though not at N = 35 (2.2 vs 1.8 ms)
            out = pad[:, co:co + k * n].view(N, k, n).transpose(0, 1)
            if bg is None:
                torch.bmm(Zg, Ug.transpose(1, 2), out=out)
            else:
                torch.baddbmm(bg, Zg, Ug.transpose(1, 2), out=out)
            zo, co = zo + k * r, co + k * n
        # one gather from the padded columns straight to vocabulary order (replaces the word_pos permutation)
        return pad.index_select(1, gc["src"])  # (N, V)

    def _use_blockdiag(self, device: torch.device, grad: bool, dtype: torch.dtype = torch.float32) -> bool:
        check(self.blockdiag in BLOCKDIAG, f"blockdiag must be one of {', '.join(BLOCKDIAG)}, got {self.blockdiag!r}")
        if grad or self.blockdiag == "off":
            return False
        if self.blockdiag == "on":
            return True
        # the extra multiply-adds only pay on tensor cores: half types, or float32 with TF32 allowed
        tensor_cores = dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and tf32_matmuls())
        return (device.type == "cuda" and tensor_cores and self.blockdiag_fits()
                and self.group_gemms is None and self.lookup == "scatter")

    def blockdiag_fits(self) -> bool:
        """Whether the block-diagonal operands *and* the layer's own factors together hold fewer values than the dense
        (V, D) weight, so that "auto" never leaves a layer larger in memory than dense. Why the factors count too: at
        5x on the PTB-large shape ``Ubd`` alone was just under dense (R < D) and the model held 267 MiB of GPU memory
        against dense's 252 (stop 22, ``results/logs/2026-11-24i/speed/``)."""
        R = up(self.r_total)
        own = sum(n * r for n, r in zip(self.block_sizes, self.ranks)) + self.r_total * self.dim  # U blocks + V
        return R * (self.num_rows + self.dim) + own < self.num_rows * self.dim

    def _blockdiag(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ubd (V, R) in vocabulary order, Vp (R, D)), R = sum r_t rounded up to ALIGN; cached per device, dtype and
        the versions of every stored tensor (module docstring)."""
        key = (device, dtype, tuple((t.data_ptr(), tensor_version(t)) for t in (*self.parameters(), *self.buffers())))
        if self._bcache.get("key") != key:
            self._bcache = {}  # free the old operands before building new ones
            U, V = self.factors(dtype)
            U, V = U.to(device), V.to(device)
            order = self._index(device)["order"]  # block-order position -> word
            R = up(self.r_total)
            Ubd = U.new_zeros(self.num_rows, R)  # (V, R)
            for t, (n, r) in enumerate(zip(self.block_sizes, self.ranks)):
                s, ro = self._starts[t], self._r_off[t]
                Ubd[order[s:s + n], ro:ro + r] = U[self._u_off[t]:self._u_off[t + 1]].view(n, r)
            Vp = V.new_zeros(R, self.dim)  # (R, D), zero rows past sum r_t
            Vp[: self.r_total] = V
            self._bcache = {"key": key, "Ubd": Ubd, "Vp": Vp}
        return self._bcache["Ubd"], self._bcache["Vp"]

    # ------------------------------------------------------------------ math
    def dense_weight(self) -> torch.Tensor:
        blocks = [u @ v for u, v in self.block_factors()]  # each (n_t, D), block order
        W = torch.cat(blocks, 0)  # (V, D) in block order
        return W.index_select(0, self._index(W.device)["pos"])  # vocabulary order

    def _project(self, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # h (..., D) -> logits (..., V) in vocabulary order (+ bias (V,) in vocabulary order)
        dt = h.dtype if h.is_floating_point() else torch.float32
        lead = h.shape[:-1]
        h2 = h.reshape(-1, self.dim)
        # autograd records this call (training, or gradients wanted for h): the per-block path, whatever the knobs say
        grad = torch.is_grad_enabled() and (h2.requires_grad or any(p.requires_grad for p in self.parameters())
                                            or (bias is not None and bias.requires_grad))
        if self._use_blockdiag(h2.device, grad, dt):
            Ubd, Vp = self._blockdiag(h2.device, dt)
            Z = h2 @ Vp.t()  # (N, R): every block's inner projection, aligned
            logits = Z @ Ubd.t() if bias is None else torch.addmm(bias.to(dt), Z, Ubd.t())  # (N, V) vocabulary order
            return logits.view(*lead, self.num_rows)
        U, V = self.factors(dt)
        ix = self._index(h.device)
        if self.group_gemms is not None and not grad:
            return self._project_grouped(h2, V, U, bias).view(*lead, self.num_rows)
        Z = h2 @ V.t()  # (N, sum r_t): all blocks' inner projections in one GEMM
        b = bias.to(dt).index_select(0, ix["order"]) if bias is not None else None  # (V,) block order
        blocks = [(U[self._u_off[t]:self._u_off[t + 1]].view(n, r), Z[:, self._r_off[t]:self._r_off[t + 1]],
                   self._starts[t], self._starts[t + 1]) for t, (n, r) in enumerate(zip(self.block_sizes, self.ranks))]
        if grad:
            # autograd cannot record out= writes: per-block results, then one cat
            outs = [Zt @ Ut.t() if b is None else torch.addmm(b[s:e], Zt, Ut.t()) for Ut, Zt, s, e in blocks]
            logits = torch.cat(outs, 1) if len(outs) > 1 else outs[0]  # (N, V) block order
            return logits.index_select(1, ix["pos"]).view(*lead, self.num_rows)  # vocabulary order
        # (N, V + padding) block order, each block writes its columns, starting at an aligned column
        logits = Z.new_empty(Z.shape[0], self._pstarts[-1])
        for t, (Ut, Zt, s, e) in enumerate(blocks):
            p = self._pstarts[t]
            if b is None:
                torch.mm(Zt, Ut.t(), out=logits[:, p:p + e - s])
            else:
                torch.addmm(b[s:e], Zt, Ut.t(), out=logits[:, p:p + e - s])
        return logits.index_select(1, ix["ppos"]).view(*lead, self.num_rows)  # vocabulary order

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        # ids (...,) -> rows (..., D)
        check(self.lookup in LOOKUPS, f"lookup must be one of {', '.join(LOOKUPS)}, got {self.lookup!r}")
        flat = ids.reshape(-1)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self._use_blockdiag(ids.device, grad):
            Ubd, Vp = self._blockdiag(ids.device, torch.float32)
            return (Ubd.index_select(0, flat) @ Vp).view(*ids.shape, self.dim)  # (N, R) @ (R, D)
        ix = self._index(ids.device)
        U, V = self.factors()
        u_src, r, r_off = ix["word"].index_select(0, flat).unbind(1)  # each (N,)
        k = ix["k"]  # (R,) R = largest rank
        valid = k[None, :] < r[:, None]  # (N, R)
        vals = torch.where(valid, U[torch.where(valid, u_src[:, None] + k[None, :], 0)], U.new_zeros(()))  # (N, R)
        if self.lookup == "bag":
            # row i = sum_k vals[i, k] V[r_off_i + k]: a weighted embedding bag over the word's own block of V; the
            # padding slots weigh 0 (row 0 is read for them), so no (N, sum r_t) matrix is written
            rows = torch.where(valid, r_off[:, None] + k[None, :], 0)  # (N, R)
            out = F.embedding_bag(rows, V, mode="sum", per_sample_weights=vals)  # (N, D)
            return out.view(*ids.shape, self.dim)
        cols = torch.where(valid, r_off[:, None] + k[None, :], self.r_total)  # dummy column for padding
        # (N, sum r + 1 rounded up to ALIGN): the GEMM reads X with an aligned leading dimension
        X = U.new_zeros(flat.numel(), up(self.r_total + 1)).scatter(1, cols, vals)
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
                 bits: int | None = None, group_size: int | None = None, bias: bool = True,
                 layout: str = DEFAULT_LAYOUT):
        super().__init__(num_rows, dim, block_sizes, ranks, bits, group_size, layout)
        self.in_features, self.out_features = dim, num_rows
        self.bias = nn.Parameter(torch.zeros(num_rows)) if bias else None

    def spec(self) -> dict:
        return {**super().spec(), "bias": self.bias is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x, self.bias)

