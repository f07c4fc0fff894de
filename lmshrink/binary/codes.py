"""Bit-packing of binary codes.

Layout (identical to ``numpy.packbits(bits, axis=1, bitorder="big")``): a code of c bits per word becomes
``ceil(c / 8)`` uint8 bytes per row; bit j of a word lives in byte ``j // 8`` at bit position ``7 - j % 8``
(most significant bit first); a set bit means +1, a clear bit -1; the unused low bits of the last byte are 0.
The number of bits c is kept next to the packed array (the manifest's ``bits``), never inferred from it.

Unpacking is done with torch (device-agnostic: CPU or CUDA), by shifting each byte against the constant
``[7, 6, ..., 0]`` and masking, so a lookup of a few rows never unpacks the whole table.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import check


def pack_bits(codes: np.ndarray) -> np.ndarray:
    """(n, c) bool (True = +1) -> (n, ceil(c/8)) uint8, MSB first."""
    codes = np.asarray(codes)
    check(codes.ndim == 2, f"codes must be 2-D (words, bits), got shape {codes.shape}")
    check(codes.dtype == np.bool_, f"codes must be boolean (True = +1), got dtype {codes.dtype}")
    return np.packbits(codes, axis=1, bitorder="big")


def unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """(n, nbytes) uint8 -> (n, bits) bool. Inverse of :func:`pack_bits`."""
    packed = np.asarray(packed)
    check(packed.dtype == np.uint8 and packed.ndim == 2,
          f"packed codes must be 2-D uint8, got {packed.dtype} {packed.shape}")
    check(0 < bits <= packed.shape[1] * 8 and packed.shape[1] == (bits + 7) // 8,
          f"{bits} bits do not fit packed rows of {packed.shape[1]} bytes (need {(bits + 7) // 8})")
    return np.unpackbits(packed, axis=1, count=bits, bitorder="big").astype(bool)


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS:
        _SHIFTS[device] = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)
    return _SHIFTS[device]


def unpack_signs(packed: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(..., nbytes) uint8 -> (..., bits) of +-1 in ``dtype``, on the tensor's device."""
    b = (packed.unsqueeze(-1) >> _shifts(packed.device)) & 1  # (..., nbytes, 8)
    b = b.flatten(-2)[..., :bits]  # (..., bits)
    return b.to(dtype) * 2 - 1


def to_words64(packed: torch.Tensor) -> torch.Tensor:
    """(n, nbytes) uint8 -> (n, ceil(nbytes/8)) int64 words for popcount (zero-padded; byte order irrelevant
    for Hamming distances as long as queries and database use the same conversion)."""
    n, nb = packed.shape
    pad = (-nb) % 8
    if pad:
        packed = torch.cat([packed, packed.new_zeros(n, pad)], dim=1)
    return packed.contiguous().view(torch.int64)  # (n, nwords)
