"""Corpora, vocabularies and batching."""

from .corpus import EOS, Corpus, Vocabulary, batchify, bptt_windows, default_data_dir, load_corpus, sha256_file
from .download import CORPORA, download_corpus

__all__ = [
    "CORPORA",
    "EOS",
    "Corpus",
    "Vocabulary",
    "batchify",
    "bptt_windows",
    "default_data_dir",
    "download_corpus",
    "load_corpus",
    "sha256_file",
    # text classification
    "TextClsDataset",
    "build_vocab",
    "load_textcls",
    "read_textcls_file",
]
from .textcls import TextClsDataset, build_vocab, load_textcls, read_textcls_file  # noqa: E402
