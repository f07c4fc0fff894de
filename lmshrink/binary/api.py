"""What the ``binarize`` and ``wordsim`` commands (and the benchmark) call: whole workflows, no printing."""

from __future__ import annotations

from pathlib import Path

from ..errors import check


def binarize_vectors(vectors: str, out: str, method: str = "iiq", vocab: str | None = None, bits: int | None = None,
                     seed: int = 0, tol: float = 1e-4, max_iter: int = 50, remove_top: int | None = None,
                     limit: int | None = None, word_scale: bool = False, centre: bool = True) -> dict:
    """Load vectors (any source of :func:`lmshrink.data.vectors.load_vectors`), binarize, save ``out``; a summary."""
    from ..data.vectors import load_vectors
    from ..measure import bytes_on_disk
    from .quantizers import binarize
    from .store import save_binary_vectors

    wv = load_vectors(vectors, vocab, limit)
    q = binarize(wv.vectors, method, bits, seed=seed, tol=tol, max_iter=max_iter, remove_top=remove_top, centre=centre)
    save_binary_vectors(out, q, wv.words, word_scale=word_scale,
                        extra={"source": {"vectors": str(vectors), "vocab": None if vocab is None else str(vocab),
                                          "limit": limit}})
    n, d = wv.vectors.shape
    disk = bytes_on_disk(out)
    code_bits = n * q.bits
    info = {k: v for k, v in q.info.items() if k != "loss_history"}
    hist = q.info.get("loss_history")
    return {"out": str(out), "source": str(vectors), "method": method, "words": n, "dim": d, "bits": q.bits,
            "compression_ratio_bits": 32 * d / q.bits, "code_bytes": code_bits / 8, "float32_bytes": 4 * n * d,
            "bytes_on_disk": disk, "compression_ratio_weights_on_disk": 4 * n * d / disk["weights"],
            "fit": info, "loss_first_last": [hist[0], hist[-1]] if hist else None}


def wordsim_report(source: str, files: list[str], vocab: str | None = None, limit: int | None = None) -> dict:
    """Spearman on each similarity file for float vectors (cosine) or a binary directory (code cosine)."""
    from ..data.vectors import load_vectors
    from ..data.wordsim import code_similarity_fn, cosine_similarity_fn, evaluate_files, read_similarity_file
    from .store import is_vector_dir, load_vector_dir

    check(files, "give at least one similarity file with --sets FILE ...")
    for f in files:  # fail on a bad file before loading 400k vectors
        read_similarity_file(f)
    p = Path(source)
    if p.is_dir() and is_vector_dir(p) and not isinstance(vs := load_vector_dir(p), tuple):
        check(vocab is None, f"{p}: a binary directory carries its vocabulary; drop --vocab")
        words, packed = vs.words, vs.packed
        if limit is not None:
            words, packed = words[:limit], packed[:limit]
        index = {w: i for i, w in enumerate(words)}
        res = evaluate_files(files, index, code_similarity_fn(packed, vs.bits))
        res.update({"vectors": str(source), "kind": "binary", "bits": vs.bits, "words": len(words),
                    "method": vs.manifest.get("architecture", {}).get("method"), "similarity": "1 - 2 hamming / bits"})
        return res
    wv = load_vectors(source, vocab, limit)
    res = evaluate_files(files, wv.index, cosine_similarity_fn(wv.vectors))
    res.update({"vectors": str(source), "kind": "float", "dim": wv.dim, "words": len(wv), "similarity": "cosine"})
    return res
