"""Word-vector directories: ``model.safetensors`` + ``manifest.json``, the format of :mod:`lmshrink.io`.

A vector set is not a language model, so it gets its own small writer that reuses io.py's conventions
(``FORMAT``, atomic temp-dir-then-rename, sha256 + size of the weights file, ``versions()``), with::

    "architecture": {"kind": "word_vectors", "encoding": "binary" | "float32", "words": n, "dim": d, "bits": c, ...}
    "vocab": {"file": "vocab.txt.gz", ...}, "vocab_sha256": sha256("\\n".join(words))   (as io.py writes them)

Tensors of a binary set: ``codes`` (n, ceil(c/8)) uint8 packed as in :mod:`lmshrink.binary.codes`
(numpy.packbits(axis=1, bitorder="big"): bit j in byte j // 8 at position 7 - j % 8, 1 = +1); ``mean`` (d,) and
``encoder`` (d, c) float32 of the affine encoder ``b = sign((x - mean) @ encoder)`` (to encode new words and to
decode); ``scale``: (1,) float32 global scale, or (n,) float16 per-word scales when asked for.
A float set stores ``vectors`` (n, d) float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LmshrinkError, check
from ..io import MANIFEST, WEIGHTS, _sha256, read_manifest, read_vocab, write_dir_atomic
from .codes import pack_bits, unpack_bits
from .quantizers import BinaryCodes

KIND = "word_vectors"
PACKING = ("numpy.packbits(codes, axis=1, bitorder='big'): bit j of a word is byte j // 8, bit 7 - j % 8 "
           "(MSB first); 1 = +1, 0 = -1; trailing pad bits 0")


@dataclass
class BinaryVectorSet:
    """A loaded binary vector directory."""

    words: list[str]
    packed: np.ndarray  # (n, nbytes) uint8
    bits: int
    mean: np.ndarray  # (d,)
    encoder: np.ndarray  # (d, c)
    scale: np.ndarray  # (1,) or (n,)
    manifest: dict

    def codes(self) -> np.ndarray:
        return unpack_bits(self.packed, self.bits)


def _write_dir(out_dir: str | Path, tensors: dict[str, torch.Tensor], manifest: dict, words: list[str]) -> dict:
    # vector directories are model directories without a model: no compressed layers to list
    return write_dir_atomic(out_dir, tensors, {**manifest, "compressed_layers": {}}, vocab=(list(words), None))


def save_binary_vectors(out_dir: str | Path, codes: BinaryCodes, words: list[str], word_scale: bool = False,
                        extra: dict | None = None) -> dict:
    """Write a binary vector directory atomically. Returns the manifest."""
    check(len(words) == codes.codes.shape[0], f"{len(words)} words for {codes.codes.shape[0]} codes")
    packed = pack_bits(codes.codes)
    scale = (torch.from_numpy(codes.scale.astype(np.float16)) if word_scale
             else torch.tensor([float(codes.scale.mean())], dtype=torch.float32))
    tensors = {"codes": torch.from_numpy(packed),
               "mean": torch.from_numpy(codes.mean.astype(np.float32)),
               "encoder": torch.from_numpy(np.ascontiguousarray(codes.encoder, dtype=np.float32)),
               "scale": scale}
    d, c = codes.encoder.shape
    info = {k: v for k, v in codes.info.items()}
    manifest = {"architecture": {"kind": KIND, "encoding": "binary", "words": len(words), "dim": int(d), "bits": int(c),
                                 "method": codes.method, "packing": PACKING,
                                 "scale": "per_word_float16" if word_scale else "global_float32"},
                "binarize": info}
    manifest.update(extra or {})
    return _write_dir(out_dir, tensors, manifest, words)


def save_float_vectors(out_dir: str | Path, vectors: np.ndarray, words: list[str], extra: dict | None = None) -> dict:
    """Write float32 vectors in the same format (the dense reference for bytes on disk)."""
    check(len(words) == vectors.shape[0], f"{len(words)} words for {vectors.shape[0]} vectors")
    manifest = {"architecture": {"kind": KIND, "encoding": "float32", "words": len(words),
                                 "dim": int(vectors.shape[1])}}
    manifest.update(extra or {})
    return _write_dir(out_dir, {"vectors": torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))}, manifest,
                      words)


def is_vector_dir(path: str | Path) -> bool:
    p = Path(path)
    if not (p / MANIFEST).is_file():
        return False
    try:
        return read_manifest(p).get("architecture", {}).get("kind") == KIND
    except LmshrinkError:
        return False


def _load_tensors(d: Path, manifest: dict, verify: bool) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wpath = d / manifest.get("weights", {}).get("file", WEIGHTS)
    check(wpath.is_file(), f"{wpath} is missing")
    if verify:
        size = wpath.stat().st_size
        check(size == manifest["weights"].get("bytes"),
              f"{wpath} has {size} bytes, manifest says {manifest['weights'].get('bytes')} (truncated or corrupt)")
        check(_sha256(wpath) == manifest["weights"].get("sha256"),
              f"{wpath} does not match the sha256 in its manifest (corrupt file)")
    try:
        return load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise LmshrinkError(f"{wpath} is not a readable safetensors file: {e}") from None


def load_vector_dir(path: str | Path, verify: bool = True):
    """Load a word-vector directory: a :class:`BinaryVectorSet`, or ``(words, vectors)`` for a float set."""
    d = Path(path)
    manifest = read_manifest(d)
    arch = manifest.get("architecture", {})
    check(arch.get("kind") == KIND, f"{d} holds a {arch.get('kind')!r} model, not word vectors")
    vocab = read_vocab(d, manifest, verify=verify)  # file size, digest and vocab_sha256 checked there
    # a vector set without a vocabulary or its fingerprint is not one we wrote
    check(vocab is not None and "vocab_sha256" in manifest, f"{d / MANIFEST}: vocabulary does not match its sha256")
    words = vocab[0]
    t = _load_tensors(d, manifest, verify)
    if arch.get("encoding") == "float32":
        v = t["vectors"].numpy()
        check(v.shape[0] == len(words), f"{d}: {v.shape[0]} vectors for {len(words)} words")
        return words, v
    check(arch.get("encoding") == "binary", f"{d}: unknown encoding {arch.get('encoding')!r}")
    bits = int(arch["bits"])
    packed = t["codes"].numpy()
    check(packed.shape == (len(words), (bits + 7) // 8),
          f"{d}: codes have shape {packed.shape}, expected ({len(words)}, {(bits + 7) // 8})")
    return BinaryVectorSet(words, packed, bits, t["mean"].double().numpy(), t["encoder"].double().numpy(),
                           t["scale"].float().numpy(), manifest)
