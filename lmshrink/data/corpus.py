"""Word-level language-modelling corpora: Penn Treebank (Mikolov's 10k version) and WikiText-2.

Files are tokenized exactly as they are written: split on whitespace, one ``<eos>`` appended per line
(Mikolov et al. 2010; Merity et al. 2016). The vocabulary is built from the training split only, keeps
every word's count (GroupReduce weights its low-rank fits by these frequencies) and orders ids by
decreasing frequency, ties broken by first appearance, so id 0 is the most frequent word.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LmshrinkError, check
from .download import CORPORA, corpus_dir_help

EOS = "<eos>"


def default_data_dir() -> Path:
    """``$LMSHRINK_DATA`` if set, else the user cache dir (``~/.cache/lmshrink/data``)."""
    env = os.environ.get("LMSHRINK_DATA")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("lmshrink")) / "data"
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path.home() / ".cache" / "lmshrink" / "data"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Vocabulary:
    """Words ordered by decreasing training frequency, with their counts.

    ``words[i]`` has id ``i`` and was seen ``counts[i]`` times in the training split.
    """

    words: list[str]
    counts: list[int]

    def __post_init__(self) -> None:
        check(len(self.words) == len(self.counts), "vocabulary: words and counts differ in length")
        check(len(self.words) > 0, "vocabulary is empty")
        self.index = {w: i for i, w in enumerate(self.words)}
        check(len(self.index) == len(self.words), "vocabulary has duplicate words")

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def from_tokens(cls, tokens: list[str]) -> Vocabulary:
        counter = Counter(tokens)
        first = {}
        for i, t in enumerate(tokens):
            first.setdefault(t, i)
        words = sorted(counter, key=lambda w: (-counter[w], first[w]))
        return cls(words, [counter[w] for w in words])

    def encode(self, tokens: list[str], where: str = "text") -> torch.Tensor:
        try:
            return torch.tensor([self.index[t] for t in tokens], dtype=torch.long)
        except KeyError as e:
            raise LmshrinkError(f"{where}: word {e.args[0]!r} is not in the vocabulary (built from train)") from None

    def counts_tensor(self) -> torch.Tensor:
        return torch.tensor(self.counts, dtype=torch.float64)

    def to_json(self) -> dict:
        return {"words": self.words, "counts": self.counts}

    @classmethod
    def from_json(cls, d: dict) -> Vocabulary:
        return cls(list(d["words"]), [int(c) for c in d["counts"]])

    def fingerprint(self) -> str:
        """sha256 of the words in id order: two models share ids exactly when this matches."""
        from ..io import vocab_fingerprint  # the one definition, also what model directories record

        return vocab_fingerprint(self.words)


def tokenize_file(path: Path) -> list[str]:
    tokens: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            tokens.extend(line.split())
            tokens.append(EOS)
    return tokens


@dataclass
class Corpus:
    """A tokenized corpus: vocabulary from train and id tensors for each split."""

    name: str
    vocab: Vocabulary
    splits: dict[str, torch.Tensor]
    checksums: dict[str, str]

    @property
    def train(self) -> torch.Tensor:
        return self.splits["train"]


def load_corpus(name: str, data_dir: str | Path | None = None, verify: bool = True) -> Corpus:
    """Load a corpus by name (``ptb`` or ``wikitext-2``) from ``data_dir/<name>/``.

    With ``verify`` the files' sha256 must match the pinned checksums of the canonical release;
    a mismatch names the file and how to fetch a good copy.
    """
    check(name in CORPORA, f"unknown corpus {name!r}; choose from {', '.join(sorted(CORPORA))}")
    spec = CORPORA[name]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    check(root.is_dir(), f"data directory {root} does not exist; {corpus_dir_help(name, root)}")
    folder = root / spec.folder
    splits, checksums = {}, {}
    vocab = None
    for split in ("train", "valid", "test"):
        fname = spec.files[split]
        path = folder / fname
        check(path.is_file(), f"missing {path}; {corpus_dir_help(name, root)}")
        digest = sha256_file(path)
        if verify and digest != spec.sha256[fname]:
            raise LmshrinkError(
                f"{path} has sha256 {digest[:12]}..., expected {spec.sha256[fname][:12]}... "
                f"(a corrupt or different copy); {corpus_dir_help(name, root)}"
            )
        checksums[fname] = digest
        tokens = tokenize_file(path)
        check(len(tokens) > 0 and any(t != EOS for t in tokens), f"{path} holds no words")
        if vocab is None:
            vocab = Vocabulary.from_tokens(tokens)
        splits[split] = vocab.encode(tokens, where=str(path))
    assert vocab is not None
    return Corpus(name, vocab, splits, checksums)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D id stream into ``batch_size`` contiguous columns: (N,) -> (N // B, B).

    Each column is read top to bottom across BPTT windows, so hidden state carries over between
    consecutive windows (Zaremba et al. 2014). The tail that does not fill a row is dropped.
    """
    check(batch_size > 0, "batch size must be positive")
    n = ids.numel() // batch_size
    check(n >= 2, f"corpus of {ids.numel()} tokens is too short for batch size {batch_size}")
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()  # (N, B)


def bptt_windows(data: torch.Tensor, bptt: int):
    """Yield ``(inputs, targets)`` windows of length ``bptt``: each (T, B), targets shifted by one."""
    for start in range(0, data.size(0) - 1, bptt):
        t = min(bptt, data.size(0) - 1 - start)
        yield data[start : start + t], data[start + 1 : start + 1 + t]
