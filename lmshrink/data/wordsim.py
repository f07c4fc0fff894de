"""Word-similarity benchmarks: read ``word1 word2 score`` files, score pairs, report Spearman's rho.

Files (WS-353 all/sim/rel, SimLex-999, MEN, MTurk-287, ... in the wordvectors.org versions) have one pair per line
separated by any whitespace (tabs, spaces; CRLF endings are fine); blank lines and lines starting with ``#`` are
skipped; any other line without exactly three fields or with a non-numeric score is an error naming file and line.

A pair is looked up as written, then lowercased (GloVe is lowercase; WS-353-REL has ``Jerusalem``); pairs with
a word still missing are skipped and counted, and every result carries its coverage (``pairs_used`` of
``pairs_total``). Float vectors are compared with cosine, binary codes with their own cosine
``1 - 2 hamming / c`` (the cosine of the +-1 codes, a monotone function of Hamming distance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import LmshrinkError, check


@dataclass
class SimilaritySet:
    path: str
    pairs: list[tuple[str, str, float, int]]  # word1, word2, score, line number

    @property
    def name(self) -> str:
        return Path(self.path).stem


def read_similarity_file(path: str | Path) -> SimilaritySet:
    p = Path(path)
    check(p.is_file(), f"similarity file {p} does not exist")
    pairs = []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = p.read_text(encoding="latin-1")
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        check(len(parts) == 3, f"{p}:{n}: expected 'word1 word2 score', got {len(parts)} field(s): {s[:60]!r}")
        try:
            score = float(parts[2])
        except ValueError:
            raise LmshrinkError(f"{p}:{n}: score {parts[2]!r} is not a number") from None
        check(math.isfinite(score), f"{p}:{n}: score {parts[2]!r} is not finite")
        pairs.append((parts[0], parts[1], score, n))
    check(pairs, f"similarity file {p} holds no pairs")
    return SimilaritySet(str(path), pairs)


def _lookup(word: str, index: dict[str, int]) -> tuple[int | None, bool]:
    i = index.get(word)
    if i is not None:
        return i, False
    i = index.get(word.lower())
    return (i, True) if i is not None else (None, False)


def spearman(x, y) -> float | None:
    """Spearman's rho (ties get average ranks); None when undefined (fewer than 2 pairs or a constant side)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(spearmanr(x, y).statistic)


def evaluate_set(sset: SimilaritySet, index: dict[str, int],
                 similarity: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict:
    """Score one set. ``similarity(ia, ib)`` returns the model's similarity of word ids ``ia[k], ib[k]``."""
    ia, ib, gold, lowered, missing = [], [], [], 0, []
    for w1, w2, score, line in sset.pairs:
        a, la = _lookup(w1, index)
        b, lb = _lookup(w2, index)
        if a is None or b is None:
            missing.append(w1 if a is None else w2)
            continue
        lowered += la or lb
        ia.append(a)
        ib.append(b)
        gold.append(score)
    used, total = len(ia), len(sset.pairs)
    sims = similarity(np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)) if used else np.zeros(0)
    return {"file": sset.path, "name": sset.name, "spearman": spearman(sims, gold), "pairs_used": used,
            "pairs_total": total, "coverage": used / total, "pairs_lowercased": int(lowered),
            "oov_examples": sorted(set(missing))[:5]}


def summarize(results: list[dict]) -> dict:
    vals = [r["spearman"] for r in results if r["spearman"] is not None]
    return {"sets": {r["file"]: r for r in results},
            "mean_spearman": float(np.mean(vals)) if vals else None,
            "sets_scored": len(vals)}


def cosine_similarity_fn(vectors: np.ndarray) -> Callable:
    V = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(V, axis=1)

    def sim(ia, ib):
        num = (V[ia] * V[ib]).sum(axis=1)
        den = norms[ia] * norms[ib]
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return sim


def code_similarity_fn(packed: np.ndarray, bits: int) -> Callable:
    """``1 - 2 h / c`` from packed codes (popcount of XOR), the cosine of the +-1 codes."""
    import torch

    from ..binary.search import hamming_similarity

    P = torch.from_numpy(np.ascontiguousarray(packed))

    def sim(ia, ib):
        return hamming_similarity(P[torch.from_numpy(ia)], P[torch.from_numpy(ib)], bits).numpy()

    return sim


def evaluate_files(files: list[str | Path], index: dict[str, int], similarity: Callable) -> dict:
    check(files, "give at least one similarity file (--sets FILE ...)")
    sets = [read_similarity_file(f) for f in files]  # read all first: a bad file fails before any work
    return summarize([evaluate_set(s, index, similarity) for s in sets])
