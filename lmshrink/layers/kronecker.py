"""Kronecker-product layers, plain and doped.

Kronecker products (KP) compress a weight W (m1 m2, n1 n2) as ``A (x) B`` with A (m1, n1) and
B (m2, n2) (Thakker et al. 2019, "Compressing RNNs for IoT devices by 15-38x using Kronecker
products", Sec. 3); optionally as a sum of T such terms, ``sum_t A_t (x) B_t``. The product is never
formed: with ``x = vec(X)``, X (n1, n2) read row-major,

    (A (x) B) x = vec(A X B^T)                     (row-major form of the identity vec(B X A^T))

so a matvec costs T (m1 n1 n2 + m1 m2 n2)-ish multiplies instead of m1 m2 n1 n2.

*Doped* KP (Thakker, Whatmough, Liu, Mattina, Beu 2020, "Compressing Language Models using Doped
Kronecker Products", arXiv:2001.08896, Eq. 1; extended as "Doping: A technique for extreme compression
of LSTM models using sparse structured additive matrices", MLSys 2021) adds an extremely sparse
matrix: ``W = A (x) B + S``. S gives a few weights freedom to leave the KP structure. It is trained
starting dense and annealed to its final density; co-matrix dropout regularisation (CMR) drops the
sparse part during training so the KP part does not co-adapt to entries that later vanish
("co-matrix adaptation", CMA).

Initialisation from a trained W uses the nearest Kronecker product of Van Loan & Pitsianis (1993):
rearranging W into R(W) (m1 n1, m2 n2), ``R(W)[(i1, j1), (i2, j2)] = W[(i1, i2), (j1, j2)]``, turns
``||W - sum_t A_t (x) B_t||_F`` into ``||R(W) - sum_t vec(A_t) vec(B_t)^T||_F``, solved by a rank-T SVD.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train.schedules import cubic_density, nnz_for_density
from .base import CompressedLayer, DerivedCaches, register_layer, tensor_version
from .sparse import csr_tensor


# --------------------------------------------------------------------------- Kronecker algebra
def kron_dense(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``sum_t A_t (x) B_t``: A (T, m1, n1), B (T, m2, n2) -> (m1 m2, n1 n2). Differentiable."""
    T, m1, n1 = A.shape
    _, m2, n2 = B.shape
    return torch.einsum("tac,tbd->abcd", A, B).reshape(m1 * m2, n1 * n2)


def kron_matvec(A: torch.Tensor, B: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(sum_t A_t (x) B_t) x`` for x (..., n1 n2) -> (..., m1 m2), never forming the product.

    With X = vec^-1(x) (n1, n2), the product is ``sum_t A_t X B_t^T`` (Van Loan 2000), computed in one of two
    orders, each as two plain matrix products over all terms at once:

    - B first: ``X [B_1^T ... B_T^T]``, then ``[A_1 ... A_T]`` times the stacked results (sums over t inside the
      GEMM); T n1 m2 (n2 + m1) multiplies per row;
    - A first: ``[A_1; ...; A_T] X``, then the stacked results times ``[B_1^T; ...; B_T^T]``; T m1 n2 (n1 + m2).

    Why two: the orders' costs differ by up to 2x with the factor shapes. At PTB large's 6000x1500 LSTM maps at 25x
    (60 terms of A 60x50, B 100x30) B first is 3.0x the dense multiplies and A first 1.8x; on one CPU thread at 64
    rows that was 188 against 58 ms (dense 27). Where the two are within 20% (PTB medium's 2600x650: 1.56x against
    1.50x) B first stays: it measured as fast or faster there. Why not a batched matmul per term and a sum: that
    was 2-2.5x slower on CPU for 4 or more rows (26 terms of a 2600x650 LSTM map, one thread).
    """
    T, m1, n1 = A.shape
    _, m2, n2 = B.shape
    lead = x.shape[:-1]
    # the low-rank corners: A a column and B a row (or A a row and B a column) make every term an outer product,
    # so the sum is two thin GEMMs; 6 against 20 us at batch 1 on one CPU thread for 10 terms of a 2600x650 map
    if n1 == 1 and m2 == 1:
        return ((x.reshape(-1, n2) @ B.reshape(T, n2).T) @ A.reshape(T, m1)).reshape(*lead, m1)
    if m1 == 1 and n2 == 1:
        return ((x.reshape(-1, n1) @ A.reshape(T, n1).T) @ B.reshape(T, m2)).reshape(*lead, m2)
    if kron_order((m1, n1), (m2, n2)) == "a_first":
        return _kron_matvec_a_first(A, B, x)
    if T == 1 and x.numel() == n1 * n2:  # one row (batch-1 latency): A X B^T as two plain 2-D products, no
        # stacking copies; 11 against 22 us for PTB medium's 2600x650 map on one CPU thread
        return (A[0] @ (x.reshape(n1, n2) @ B[0].T)).reshape(*lead, m1 * m2)
    X = x.reshape(-1, n2)  # (N n1, n2): row-major vec^-1 of each row, stacked
    Bc = B.permute(2, 0, 1).reshape(n2, T * m2)  # (n2, T m2) = [B_1^T ... B_T^T]
    Z = (X @ Bc).reshape(-1, n1, T, m2).transpose(1, 2).reshape(-1, T * n1, m2)  # (N, T n1, m2): X B_t^T stacked
    Ac = A.transpose(0, 1).reshape(m1, T * n1)  # (m1, T n1) = [A_1 ... A_T]
    return torch.matmul(Ac, Z).reshape(*lead, m1 * m2)  # sum_t A_t X B_t^T


def kron_order(a_shape, b_shape) -> str:
    """``"a_first"`` where multiplying by the A factors first costs under 0.8x the multiplies of B first, else
    ``"b_first"`` (see :func:`kron_matvec`)."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    return "a_first" if m1 * n2 * (n1 + m2) < 0.8 * n1 * m2 * (n2 + m1) else "b_first"


def _kron_matvec_a_first(A: torch.Tensor, B: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    T, m1, n1 = A.shape
    _, m2, n2 = B.shape
    lead = x.shape[:-1]
    X = x.reshape(-1, n1, n2)  # (N, n1, n2)
    N = X.shape[0]
    # one GEMM for every row and term: the rows go side by side as columns (a batched matmul per row was 2x slower
    # at 64 rows of PTB small's 800x200 map)
    Y = A.reshape(T * m1, n1) @ X.transpose(0, 1).reshape(n1, N * n2)  # (T m1, N n2): A_t X stacked
    Y = Y.view(T, m1, N, n2).permute(2, 1, 0, 3).reshape(N * m1, T * n2)  # (N m1, T n2) = [A_1 X ... A_T X]
    Bs = B.transpose(1, 2).reshape(T * n2, m2)  # (T n2, m2) = [B_1^T; ...; B_T^T]
    return (Y @ Bs).reshape(*lead, m1 * m2)  # sum_t A_t X B_t^T


def rearrange(W: torch.Tensor, a_shape, b_shape) -> torch.Tensor:
    """Van Loan-Pitsianis rearrangement R(W): (m1 m2, n1 n2) -> (m1 n1, m2 n2)."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    return W.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def nearest_kronecker(W: torch.Tensor, a_shape, b_shape, terms: int = 1):
    """Factors A (T, m1, n1), B (T, m2, n2) minimising ``||W - sum_t A_t (x) B_t||_F`` (rank-T SVD of
    R(W), singular values split evenly between the factors). Computed in float64."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    R = rearrange(W.detach().double(), a_shape, b_shape)
    U, S, Vh = torch.linalg.svd(R, full_matrices=False)
    root = S[:terms].sqrt()
    A = (U[:, :terms] * root).T.reshape(terms, m1, n1)
    B = (root[:, None] * Vh[:terms]).reshape(terms, m2, n2)
    return A.to(W.dtype), B.to(W.dtype)


def max_kronecker_terms(a_shape, b_shape) -> int:
    """The largest useful number of terms: the rank of R(W) is at most min(m1 n1, m2 n2)."""
    return min(a_shape[0] * a_shape[1], b_shape[0] * b_shape[1])


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def kronecker_shapes(out_features: int, in_features: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Every factorisation (A shape, B shape) of an (out, in) matrix, trivial ones (a factor 1x1) left out."""
    shapes = []
    for m1 in divisors(out_features):
        for n1 in divisors(in_features):
            m2, n2 = out_features // m1, in_features // n1
            if m1 * n1 == 1 or m2 * n2 == 1:
                continue
            shapes.append(((m1, n1), (m2, n2)))
    return shapes


def balanced_kronecker_shape(out_features: int, in_features: int):
    """The factorisation with the fewest numbers per term (m1 n1 + m2 n2 smallest); ties go to the
    most nearly square factors (a (48, 1) factor is a vector, not a matrix)."""
    shapes = kronecker_shapes(out_features, in_features)
    if not shapes:
        return None
    return min(shapes, key=lambda s: (s[0][0] * s[0][1] + s[1][0] * s[1][1],
                                      abs(s[0][0] - s[0][1]) + abs(s[1][0] - s[1][1]), s[0]))


# --------------------------------------------------------------------------- plain KP
@register_layer
class KroneckerLinear(CompressedLayer):
    """``y = (sum_t A_t (x) B_t) x + b`` (Thakker et al. 2019, Sec. 3; a sum of T terms is the
    Kronecker-rank-T generalisation of Van Loan & Pitsianis 1993). Stores A (T, m1, n1), B (T, m2, n2)."""

    layer_type = "kronecker_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, a_shape, b_shape, terms: int = 1, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.terms = in_features, out_features, terms
        self.a_shape, self.b_shape = tuple(a_shape), tuple(b_shape)
        assert self.a_shape[0] * self.b_shape[0] == out_features and self.a_shape[1] * self.b_shape[1] == in_features
        self.A = nn.Parameter(torch.zeros(terms, *self.a_shape))
        self.B = nn.Parameter(torch.zeros(terms, *self.b_shape))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "a_shape": list(self.a_shape),
                "b_shape": list(self.b_shape), "terms": self.terms, "bias": self.bias is not None}

    def dense_weight(self) -> torch.Tensor:
        return kron_dense(self.A, self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kron_matvec(self.A.to(x.dtype), self.B.to(x.dtype), x)
        return y + self.bias.to(y.dtype) if self.bias is not None else y


# --------------------------------------------------------------------------- doped KP
def index_dtype(n: int) -> torch.dtype:
    """Narrowest signed integer type safetensors stores that holds indices < n."""
    return torch.int16 if n <= 2**15 - 1 else torch.int32


@register_layer
class DopedKroneckerLinear(DerivedCaches, CompressedLayer):
    """``y = (A (x) B + S) x + b`` with S extremely sparse (Thakker et al. 2020, arXiv:2001.08896, Eq. 1;
    MLSys 2021, Sec. 3).

    Two storage forms, one class:

    - ``form="train"``: S is a dense-shaped parameter with a boolean ``mask`` buffer. The doping
      schedule (:func:`~lmshrink.train.schedules.cubic_density`, called from ``training_step_hook``)
      anneals the mask from ``initial_density`` to ``density``, keeping the largest |S|; CMR drops
      entries, rows (output units of ``S x``) or all of S with probability ``cmr`` while
      ``progress < cmr_until``, inverted-dropout scaled, one mask per forward (BPTT window). S must be dense-shaped here because annealing starts from
      a dense S; nothing else is, and :meth:`pack` ends this form.
    - ``form="packed"``: CSR: ``values`` (nnz,), column indices ``col`` (nnz,, int16 when the input
      has < 32768 features) and ``row_ptr`` (out + 1,, int32). This is what is saved and served.

    Forward at inference never forms W: ``kron_matvec`` plus a sparse product. In training mode the
    LSTM rebuilds ``dense_weight()`` (differentiable, with the current mask and CMR) once per window.
    """

    layer_type = "doped_kronecker_linear"
    flavour = "linear"

    def __init__(self, in_features: int, out_features: int, a_shape, b_shape, terms: int = 1, nnz: int = 0,
                 bias: bool = True, form: str = "packed", density: float = 0.01, initial_density: float = 1.0,
                 anneal_start: float = 0.0, anneal_end: float = 0.75, prune_every: int = 50,
                 cmr: float = 0.0, cmr_until: float | None = None, cmr_granularity: str = "element"):
        super().__init__()
        assert form in ("train", "packed") and cmr_granularity in ("element", "row", "matrix")
        self.in_features, self.out_features, self.terms = in_features, out_features, terms
        self.a_shape, self.b_shape = tuple(a_shape), tuple(b_shape)
        assert self.a_shape[0] * self.b_shape[0] == out_features and self.a_shape[1] * self.b_shape[1] == in_features
        self.density, self.initial_density = float(density), float(initial_density)
        self.anneal_start, self.anneal_end, self.prune_every = float(anneal_start), float(anneal_end), int(prune_every)
        self.cmr, self.cmr_until, self.cmr_granularity = float(cmr), cmr_until, cmr_granularity
        self.progress = 0.0  # last training progress seen by the hook (CMR switches off after cmr_until)
        self.form = form
        self.A = nn.Parameter(torch.zeros(terms, *self.a_shape))
        self.B = nn.Parameter(torch.zeros(terms, *self.b_shape))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if form == "train":
            self.S = nn.Parameter(torch.zeros(out_features, in_features))
            self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool))
        else:
            self.values = nn.Parameter(torch.zeros(nnz))
            self.register_buffer("col", torch.zeros(nnz, dtype=index_dtype(in_features)))
            self.register_buffer("row_ptr", torch.zeros(out_features + 1, dtype=torch.int32))
        self._idx_cache = None
        self._csr_cache = None
        self._eval_cache = None

    # ------------------------------------------------------------------ bookkeeping
    def spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "a_shape": list(self.a_shape),
                "b_shape": list(self.b_shape), "terms": self.terms, "nnz": self.nnz(), "bias": self.bias is not None,
                "form": self.form, "density": self.density, "initial_density": self.initial_density,
                "anneal_start": self.anneal_start, "anneal_end": self.anneal_end, "prune_every": self.prune_every,
                "cmr": self.cmr, "cmr_until": self.cmr_until, "cmr_granularity": self.cmr_granularity}

    def nnz(self) -> int:
        return int(self.mask.sum()) if self.form == "train" else self.values.numel()

    def clear_caches(self) -> None:
        """Drop the index, CSR and evaluation-weight caches (rebuilt at the next call; DerivedCaches)."""
        self._idx_cache = self._csr_cache = self._eval_cache = None

    def current_density(self) -> float:
        return self.nnz() / (self.out_features * self.in_features)

    def _indices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, crow) as int64 for the packed form; cached until the index buffers change."""
        key = (self.col.data_ptr(), self.row_ptr.data_ptr(), tensor_version(self.col), tensor_version(self.row_ptr), self.col.device,
               torch.is_inference_mode_enabled())  # inference tensors must not leak into autograd later
        if self._idx_cache is None or self._idx_cache[0] != key:
            crow = self.row_ptr.long()
            rows = torch.repeat_interleave(torch.arange(self.out_features, device=self.col.device), crow[1:] - crow[:-1])
            self._idx_cache = (key, rows, self.col.long(), crow)
        return self._idx_cache[1], self._idx_cache[2], self._idx_cache[3]

    def sparse_csr(self) -> torch.Tensor:
        """S as a torch CSR tensor (out, in) sharing the stored values (packed form).

        Kept between calls while neither the indices nor the values change and no graph is being recorded
        through the values: the LSTM calls each map once per time step, and building the tensor (with the
        warnings filter around it) took 20 of a map's 130 us at batch 1 on one CPU thread (PTB medium shape)."""
        values, col, row_ptr = self.values, self.col, self.row_ptr
        keep = not (torch.is_grad_enabled() and values.requires_grad)  # a cached graph would be reused
        key = (values.data_ptr(), tensor_version(values), values.dtype, col.data_ptr(), tensor_version(col),
               row_ptr.data_ptr(), tensor_version(row_ptr), torch.is_inference_mode_enabled())
        cached = getattr(self, "_csr_cache", None)
        if keep and cached is not None and cached[0] == key:
            return cached[1]
        _, cols, crow = self._indices()
        S = csr_tensor(crow, cols, values, (self.out_features, self.in_features))
        self._csr_cache = (key, S) if keep else None
        return S

    # ------------------------------------------------------------------ the sparse part
    def _cmr_active(self) -> bool:
        until = self.anneal_end if self.cmr_until is None else self.cmr_until
        return self.training and self.cmr > 0 and self.progress < until

    def _cmr_keep(self, shape, device, dtype) -> torch.Tensor:
        """Inverted-dropout multiplier for S: one Bernoulli per entry, per row (output unit of S x) or
        for the whole matrix."""
        p = self.cmr
        if self.cmr_granularity == "row":
            keep = torch.rand(shape[0], 1, device=device) >= p
        elif self.cmr_granularity == "matrix":
            keep = torch.rand(1, 1, device=device) >= p
        else:
            keep = torch.rand(*shape, device=device) >= p
        return keep.to(dtype) / (1.0 - p)

    def sparse_dense(self) -> torch.Tensor:
        """S as an (out, in) tensor, masked, with CMR applied when training. Differentiable."""
        if self.form == "train":
            S = self.S * self.mask
        else:
            rows, cols, _ = self._indices()
            flat = self.values.new_zeros(self.out_features * self.in_features)
            S = flat.index_put((rows * self.in_features + cols,), self.values).view(self.out_features, self.in_features)
        if self._cmr_active():
            S = S * self._cmr_keep(S.shape, S.device, S.dtype)
        return S

    def dense_weight(self) -> torch.Tensor:
        return kron_dense(self.A, self.B) + self.sparse_dense()

    def _eval_weight(self) -> torch.Tensor:
        """dense_weight() of the train form at inference (validation during annealing), rebuilt only
        when a parameter or the mask changed: the LSTM loop calls this map once per time step."""
        key = tuple((t.data_ptr(), tensor_version(t)) for t in (self.A, self.B, self.S, self.mask))
        if getattr(self, "_eval_cache", None) is None or self._eval_cache[0] != key:
            with torch.no_grad():
                self._eval_cache = (key, self.dense_weight())
        return self._eval_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            # training: one dense product keeps CMR and the mask exact and gradients simple
            return F.linear(x, self.dense_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if self.form == "train":
            return F.linear(x, self._eval_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        A, B, bias = self.A, self.B, self.bias  # read once: each module attribute lookup costs ~1 us at batch 1
        if A.dtype != x.dtype:
            A, B = A.to(x.dtype), B.to(x.dtype)
        y = kron_matvec(A, B, x2)  # (N, out)
        if bias is not None:
            y = y + (bias if bias.dtype == y.dtype else bias.to(y.dtype))
        # sparse part: CSR times dense (MKL / cuSPARSE), far faster than gather + index_add here
        S = self.sparse_csr()
        if x.device.type == "cpu" and x.dtype == S.dtype:
            # one fused y^T + S x^T on the CPU: 87 against 112 us a call at batch 1 (PTB medium's 2600x650 map)
            y = torch.addmm(y.T, S, x2.T).T
        else:
            y = y + (S @ x2.T.to(S.dtype)).T.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    # ------------------------------------------------------------------ annealing (training only)
    @torch.no_grad()
    def set_density(self, density: float) -> None:
        """Keep the ``round(density * numel)`` largest |S| inside the current mask (train form only)."""
        assert self.form == "train", "set_density needs the train form"
        keep = nnz_for_density(density, self.mask.numel())
        if keep >= int(self.mask.sum()):
            return
        score = self.S.abs().masked_fill(~self.mask, -1.0).flatten()
        idx = torch.topk(score, keep, sorted=False).indices
        new = torch.zeros_like(self.mask).flatten()
        new[idx] = True
        self.mask.copy_(new.view_as(self.mask))
        self.S.mul_(self.mask)  # removed entries are gone, not merely hidden

    def training_step_hook(self, progress: float, step: int) -> None:
        """Doping anneal (Thakker et al. 2021, Sec. 3.2): prune S every ``prune_every`` steps along the
        cubic schedule, and exactly to ``density`` once ``anneal_end`` is reached."""
        self.progress = float(progress)
        if self.form != "train" or getattr(self, "_annealed", False):
            return
        target = cubic_density(progress, self.initial_density, self.density, self.anneal_start, self.anneal_end)
        if progress >= self.anneal_end:
            self.set_density(target)
            self._annealed = True  # final density reached: no more mask work (nor GPU syncs) per step
        elif step % max(1, self.prune_every) == 0:
            self.set_density(target)

    @torch.no_grad()
    def pack(self) -> DopedKroneckerLinear:
        """Turn the train form into the packed CSR form in place (call after training). Returns self."""
        if self.form == "packed":
            return self
        rows, cols = self.mask.nonzero(as_tuple=True)  # row-major order = CSR order
        values = self.S[rows, cols].detach().clone()
        counts = torch.bincount(rows, minlength=self.out_features)
        row_ptr = torch.zeros(self.out_features + 1, dtype=torch.int64, device=values.device)
        row_ptr[1:] = torch.cumsum(counts, 0)
        del self.S
        del self._buffers["mask"]
        self.values = nn.Parameter(values)
        self.register_buffer("col", cols.to(index_dtype(self.in_features)))
        self.register_buffer("row_ptr", row_ptr.to(torch.int32))
        self.form = "packed"
        self.clear_caches()
        return self


def pack_doped(model: nn.Module) -> int:
    """Pack every doped Kronecker layer of ``model`` (after training, before saving). Returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, DopedKroneckerLinear) and m.form == "train":
            m.pack()
            n += 1
    return n
