"""Bit packing of k-bit codes (k = 1..8) into uint8 buffers, and uniform grouped quantization.

Layout. Codes come in groups of ``g`` values (``g`` a multiple of 8). A group of ``g`` k-bit codes
takes exactly ``g * k / 8`` bytes:

- k in {1, 2, 4, 8}: ``8 / k`` codes per byte, code ``j`` of a byte at bit ``k * j`` (little end first);
- k in {3, 5, 6, 7}: every run of 8 codes is one ``k``-byte little-endian word, code ``j`` at bit ``k * j``.

Both unpack with a handful of vectorized shifts and masks (no Python loop, no per-code work on the
host), so packed weights can be unpacked on every call on CPU and GPU alike.

Quantization is uniform and asymmetric per group (Jacob et al. 2018 style affine codes):
``x ~ min + scale * q`` with ``q = round((x - min) / scale)`` in ``[0, 2^k - 1]`` and
``scale = (max - min) / (2^k - 1)``. ``min`` and ``scale`` are kept in float16.

Groups along a row (:func:`group_layout`). A row of ``cols`` values with ``group_size`` G is cut into
``n = ceil(cols / G)`` groups (one group when G is unset or covers the row), each with its own (scale, min);
the row is padded with its last value (which cannot widen a group's range) up to ``n * g`` codes:

- ``"balanced"`` (what compression writes): ``g = ceil(cols / n)`` rounded up to a multiple of 8, so a row
  pads by fewer than 8 codes per group. As many groups (fp16 pairs) as padded, none longer than G;
- ``"padded"`` (models saved before layouts existed): ``g = G`` (or the row rounded up to 8 when it is
  shorter than G), so a row pads to whole groups of G.

Why balanced: the padding is stored, so with G = 128 a row that is not a multiple of 128 wide pays for up
to 127 dead codes. At 4 bits a 200-wide row costs 2 * (128 * 4 + 32) = 1,088 bits padded and
2 * (104 * 4 + 32) = 896 balanced (5.9x against 7.1x of fp32); a 650-wide row 3,264 against 2,880
(six groups of 112). At widths that are multiples of G both layouts are the same. The padded layout stays
so that older model directories load bit for bit; a spec without a ``layout`` key means padded.
"""

from __future__ import annotations

import torch

from ..errors import check

PARAM_DTYPE = torch.float16  # storage type of each group's (scale, min)
PADDED, BALANCED = "padded", "balanced"
LAYOUTS = (PADDED, BALANCED)
DEFAULT_LAYOUT = BALANCED  # what newly quantized layers use (and what the methods size their budgets for)


def _shifts(bits: int, n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device, dtype=torch.int64) * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (..., g) in [0, 2^bits) with g % 8 == 0 -> uint8 (..., g * bits // 8)."""
    check(1 <= bits <= 8, f"bits must be in 1..8, got {bits}")
    g = codes.shape[-1]
    assert g % 8 == 0, "group length must be a multiple of 8"
    c = codes.to(torch.int64)
    lead = c.shape[:-1]
    if 8 % bits == 0:
        per = 8 // bits
        c = c.reshape(*lead, g // per, per)
        word = (c << _shifts(bits, per, c.device)).sum(-1)  # (..., g/per) each < 256
        return word.to(torch.uint8)
    c = c.reshape(*lead, g // 8, 8)
    word = (c << _shifts(bits, 8, c.device)).sum(-1)  # (..., g/8) k*8 bits <= 56 bits
    out = (word[..., None] >> _shifts(8, bits, c.device)) & 0xFF  # (..., g/8, k) little-endian bytes
    return out.to(torch.uint8).reshape(*lead, g * bits // 8)


def unpack_codes(packed: torch.Tensor, bits: int, g: int) -> torch.Tensor:
    """uint8 (..., g * bits // 8) -> integer codes (..., g) as uint8 (bits <= 4 paths) or int64."""
    lead = packed.shape[:-1]
    if bits == 8:
        return packed
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
        codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)  # (..., bytes, per), stays uint8
        return codes.reshape(*lead, g)
    wide = torch.int32 if bits * 8 <= 31 else torch.int64
    p = packed.reshape(*lead, g // 8, bits).to(wide)
    word = (p << (torch.arange(bits, device=packed.device, dtype=wide) * 8)).sum(-1, dtype=wide)  # (..., g/8)
    codes = (word[..., None] >> (torch.arange(8, device=packed.device, dtype=wide) * bits)) & ((1 << bits) - 1)
    return codes.reshape(*lead, g)


def quantize_groups(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., g) float -> codes (..., g) int64 and params (..., 2) = (scale, min) in float16.

    The min and scale are rounded to float16 *before* the codes are computed, so dequantizing with
    the stored params reproduces exactly what the codes were chosen against.
    """
    levels = (1 << bits) - 1
    x = x.detach().double()
    lo = x.amin(-1)
    hi = x.amax(-1)
    lo16 = lo.to(PARAM_DTYPE).double()
    scale = ((hi - lo16) / levels).clamp_min(0)
    scale16 = scale.to(PARAM_DTYPE).double()
    # a constant group (or one whose range underflows fp16) gets scale 0 and code 0: exact at min
    safe = torch.where(scale16 > 0, scale16, torch.ones_like(scale16))
    q = torch.round((x - lo16[..., None]) / safe[..., None]).clamp_(0, levels)
    q = torch.where(scale16[..., None] > 0, q, torch.zeros_like(q))
    params = torch.stack([scale16, lo16], -1).to(PARAM_DTYPE)
    return q.to(torch.int64), params


def check_layout(layout: str) -> None:
    check(layout in LAYOUTS, f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def group_layout(cols: int, group_size: int | None, layout: str = DEFAULT_LAYOUT) -> tuple[int, int]:
    """(group length g, groups per row) for rows of ``cols`` values; g is a multiple of 8 (module doc)."""
    check_layout(layout)
    row = -(-cols // 8) * 8  # one group per row, padded to whole bytes for every k
    if group_size is None or group_size <= 0:
        return row, 1
    check(group_size % 8 == 0, f"group_size must be a multiple of 8, got {group_size}")
    if layout == PADDED:
        g = min(group_size, row)  # a group never spans more than one (padded) row
        return g, -(-cols // g)
    n = -(-cols // group_size)
    per = -(-cols // n)  # <= group_size, and so is its round-up to a multiple of 8 (group_size is one)
    return -(-per // 8) * 8, n


def packed_bits(rows: int, cols: int, bits: int, group_size: int | None, layout: str = DEFAULT_LAYOUT) -> int:
    """Exact stored bits of a packed (rows, cols) matrix: codes (with row padding) + fp16 (scale, min)."""
    g, ng = group_layout(cols, group_size, layout)
    return rows * ng * (g * bits + 2 * 16)


def max_packed_cols(budget_bits: float, bits: int, group_size: int | None, layout: str = DEFAULT_LAYOUT) -> int:
    """Largest ``cols`` whose one packed row fits ``budget_bits`` (0 if none does).

    Bisection: ``packed_bits`` never decreases as ``cols`` grows in either layout (a row one value longer
    keeps its groups or gains one, and every group is as long or longer), and a code costs ``bits`` at least.
    """
    lo, hi = 0, max(0, int(budget_bits // bits)) + 1  # packed_bits(1, lo) fits (or lo == 0), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if packed_bits(1, mid, bits, group_size, layout) <= budget_bits else (lo, mid)
    return lo
