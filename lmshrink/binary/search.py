"""Nearest-neighbour search: Hamming distance on packed codes (popcount), and float cosine as the reference.

Hamming distance of two +-1 codes of c bits is ``popcount(a XOR b)``; it is an exact monotone function of their
cosine, ``cos = 1 - 2 h / c``, so ranking by Hamming is ranking by code cosine. The packed bytes are viewed as
int64 words and counted with the branch-free SWAR popcount (Warren, "Hacker's Delight", Sec. 5-1), in plain
torch integer ops: the same code runs on CPU and CUDA. Ties (many, with short codes) are broken by the lower
word index, so results are deterministic and equal to a brute-force sort by (distance, index). On CPU the
counting uses numpy's ``bitwise_count`` (hardware POPCNT) instead, which is several times faster there.
"""

from __future__ import annotations

import torch

from ..errors import check
from .codes import to_words64, unpack_signs

_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int64 (two's complement; arithmetic shifts are masked away)."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4  # every byte now holds its own count (<= 8), so x >= 0
    return (x * _H01) >> 56  # top byte = sum of the byte counts (<= 64); wrap-around of the product is harmless


def hamming_distances(q_words: torch.Tensor, db_words: torch.Tensor) -> torch.Tensor:
    """(m, w) and (n, w) int64 words -> (m, n) int32 Hamming distances.

    CPU: numpy's ``bitwise_count`` (the POPCNT instruction) on the XOR, one word at a time; other devices: the
    SWAR popcount above in torch ops.
    """
    m, n = q_words.shape[0], db_words.shape[0]
    if db_words.device.type == "cpu":
        import numpy as np

        q = q_words.numpy().view(np.uint64)
        db = db_words.numpy().view(np.uint64)
        out = np.zeros((m, n), dtype=np.int32)
        for k in range(q.shape[1]):  # one word at a time keeps memory at (m, n)
            out += np.bitwise_count(q[:, k, None] ^ db[None, :, k])
        return torch.from_numpy(out)
    dist = torch.zeros(m, n, dtype=torch.int32, device=db_words.device)
    for k in range(q_words.shape[1]):
        dist += popcount64(q_words[:, k, None] ^ db_words[None, :, k]).to(torch.int32)
    return dist


def _chunk_rows(n: int, budget_bytes: int, per_entry: int = 24) -> int:
    return max(1, budget_bytes // max(1, n * per_entry))


@torch.inference_mode()
def hamming_topk(queries: torch.Tensor, database: torch.Tensor, k: int, budget_bytes: int = 1 << 28,
                 via: str = "popcount"):
    """k nearest database codes of each query by Hamming distance.

    ``queries`` (m, nbytes) and ``database`` (n, nbytes) packed uint8 (see :mod:`lmshrink.binary.codes`), on one
    device. Returns ``(dist (m, k) int64, index (m, k) int64)`` sorted by (distance, index).

    ``via="popcount"`` counts bits of the XOR (POPCNT on CPU, SWAR in torch elsewhere). ``via="matmul"`` uses
    ``h = (c - <a, b>) / 2`` for +-1 codes: chunks of the database are unpacked to +-1 and one matrix product
    gives all dot products, which on a GPU is tensor-core work instead of a dozen elementwise integer passes
    over the (queries, words) distance matrix. Same results; the packed database stays the stored form.
    On one CPU thread it is 5-6x slower than popcount (``benchmarks/results/binary.md``); it is meant for
    GPUs, where popcount ran at 0.20x the float search, and it has not been timed on one yet.
    """
    check(queries.dtype == torch.uint8 and database.dtype == torch.uint8, "hamming_topk takes packed uint8 codes")
    check(queries.shape[1] == database.shape[1],
          f"queries have {queries.shape[1]} bytes per code, database {database.shape[1]}")
    check(via in ("popcount", "matmul"), f"via must be popcount or matmul, got {via!r}")
    n = database.shape[0]
    check(1 <= k <= n, f"k must be in [1, {n}], got {k}")
    if via == "matmul":
        return _hamming_topk_matmul(queries.to(database.device), database, k, budget_bytes)
    db = to_words64(database)
    q_all = to_words64(queries.to(database.device))
    if database.device.type == "cpu":
        return _hamming_topk_cpu(q_all, db, k, database.shape[1] * 8, budget_bytes)
    max_bits = database.shape[1] * 8
    key_dtype = torch.int32 if (max_bits + 1) * n < 2 ** 31 else torch.int64  # int32 keys: half the memory traffic
    ids = torch.arange(n, device=database.device, dtype=key_dtype)
    out_d, out_i = [], []
    step = _chunk_rows(n, budget_bytes, per_entry=12)
    for s in range(0, q_all.shape[0], step):
        dist = hamming_distances(q_all[s:s + step], db)  # (mq, n) int32
        key = dist.to(key_dtype) * n + ids  # orders by distance, then index: deterministic ties
        kv, _ = torch.topk(key, k, dim=1, largest=False, sorted=True)
        out_d.append((kv // n).long())
        out_i.append((kv % n).long())
    return torch.cat(out_d), torch.cat(out_i)


def _hamming_topk_matmul(queries: torch.Tensor, database: torch.Tensor, k: int, budget_bytes: int):
    """Hamming top-k through +-1 dot products. All nbytes * 8 bits take part: the zero padding of the last
    byte is the same in every code, adds the same amount to every dot product, and cancels in ``c - <a, b>``."""
    c = database.shape[1] * 8
    n = database.shape[0]
    # fp16 holds every integer up to 2048 exactly and tensor cores accumulate in fp32: exact for c <= 2048
    dtype = torch.float16 if database.device.type == "cuda" and c <= 2048 else torch.float32
    q = unpack_signs(queries, c, dtype)  # (m, c)
    key_dtype = torch.float32 if (c + 1) * n < 2 ** 24 else torch.float64  # exact integer keys
    ids = torch.arange(n, device=database.device, dtype=key_dtype)
    out_d, out_i = [], []
    step = _chunk_rows(n, budget_bytes, per_entry=12)
    db_step = max(1, budget_bytes // max(1, c * 4))
    for s in range(0, q.shape[0], step):
        dots = torch.cat([q[s:s + step] @ unpack_signs(database[j:j + db_step], c, dtype).T
                          for j in range(0, n, db_step)], dim=1)  # (mq, n)
        dist = (c - dots.to(key_dtype)) / 2  # exact integers
        kv, _ = torch.topk(dist * n + ids, k, dim=1, largest=False, sorted=True)  # by (distance, index)
        out_d.append(torch.div(kv, n, rounding_mode="floor").long())
        out_i.append(torch.remainder(kv, n).long())
    return torch.cat(out_d), torch.cat(out_i)


def _hamming_topk_cpu(q_words: torch.Tensor, db_words: torch.Tensor, k: int, max_bits: int, budget_bytes: int):
    """CPU: POPCNT distances (uint16), then selection by counting instead of a sort.

    Distances take only ``c + 1`` values, so for each query a histogram gives the threshold t with at least k
    codes at distance <= t; the answer is every code closer than t plus the lowest-index codes at exactly t,
    ordered by (distance, index) -- the same result as the sorted brute force, in O(n) per query.
    """
    import numpy as np

    q = q_words.numpy().view(np.uint64)
    db = db_words.numpy().view(np.uint64)
    n = db.shape[0]
    out_d = np.empty((q.shape[0], k), dtype=np.int64)
    out_i = np.empty((q.shape[0], k), dtype=np.int64)
    step = _chunk_rows(n, budget_bytes, per_entry=10)
    for s in range(0, q.shape[0], step):
        qc = q[s:s + step]
        dist = np.bitwise_count(qc[:, 0, None] ^ db[None, :, 0]).astype(np.uint16)  # (mq, n)
        for w in range(1, q.shape[1]):
            dist += np.bitwise_count(qc[:, w, None] ^ db[None, :, w])
        for r in range(dist.shape[0]):
            d = dist[r]
            cum = np.cumsum(np.bincount(d, minlength=max_bits + 1))
            t = int(np.searchsorted(cum, k))  # smallest t with #(d <= t) >= k
            below = np.flatnonzero(d < t)
            at = np.flatnonzero(d == t)[: k - len(below)]
            cand = np.concatenate([below, at])
            order = np.lexsort((cand, d[cand]))
            out_i[s + r] = cand[order]
            out_d[s + r] = d[cand[order]]
    return torch.from_numpy(out_d), torch.from_numpy(out_i)


@torch.inference_mode()
def cosine_topk(queries: torch.Tensor, database: torch.Tensor, k: int, budget_bytes: int = 1 << 28,
                normalized: bool = False):
    """k nearest float vectors of each query by cosine similarity: ``(sim (m, k), index (m, k))``, best first."""
    n = database.shape[0]
    check(1 <= k <= n, f"k must be in [1, {n}], got {k}")
    q = queries.to(database.device, database.dtype)
    if not normalized:
        database = torch.nn.functional.normalize(database, dim=1)
        q = torch.nn.functional.normalize(q, dim=1)
    out_s, out_i = [], []
    step = _chunk_rows(n, budget_bytes, per_entry=8)
    for s in range(0, q.shape[0], step):
        sims = q[s:s + step] @ database.T  # (mq, n)
        v, i = torch.topk(sims, k, dim=1, largest=True, sorted=True)
        out_s.append(v)
        out_i.append(i)
    return torch.cat(out_s), torch.cat(out_i)


def hamming_similarity(a_packed: torch.Tensor, b_packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Row-wise code cosine ``1 - 2 h / c`` of two (m, nbytes) packed arrays -> (m,) float."""
    h = popcount64(to_words64(a_packed) ^ to_words64(b_packed)).sum(dim=1)  # row-wise: SWAR is fine here
    return 1.0 - 2.0 * h.double() / bits
