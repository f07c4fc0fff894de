"""Tests for the foundation the compression methods stand on, all on tiny data written by the tests.

- corpus (``lmshrink.data.corpus``): vocabulary from train with one ``<eos>`` per line, hand-counted word
  counts, ids by decreasing frequency (ties by first appearance), valid/test encoded with train's ids;
  out-of-vocabulary words, empty and missing files, wrong sha256 are LmshrinkErrors naming the file;
  ``batchify`` / ``bptt_windows`` shapes and the one-token shift of targets;
- download (``lmshrink.data.download``): ``file://`` sources with test-made digests, per-file and zip
  archive specs; a wrong digest or a bad zip writes nothing (no temp files); the ``download`` command;
- model directories (``lmshrink.io``): bit-exact round trip, tying kept, manifest contents, truncated /
  byte-flipped / missing files detected, no pickle on load, a failed save leaves the old directory;
- accounting (``lmshrink.measure``): hand-counted params and bits, bytes on disk, the speed probe;
- training (``lmshrink.train.lm``): the loss falls, Ctrl-C checkpoints and a rerun resumes to the same
  weights as an uninterrupted run, NaN/inf is an error;
- the CLI: user errors are one stderr line and exit code 2, every ``--help`` exits 0, and a
  train -> eval -> info round trip on a tiny corpus.

Nothing here reads ../shared/data or the network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

import lmshrink.io as io_mod
import lmshrink.train.hooks as hooks_mod
import lmshrink.train.lm as lm_mod
from lmshrink.cli import COMMANDS, main
from lmshrink.data import EOS, CORPORA, Vocabulary, batchify, bptt_windows, download_corpus, load_corpus
from lmshrink.data.download import CorpusSpec
from lmshrink.errors import LmshrinkError
from lmshrink.io import load_model_dir, read_manifest, save_model_dir
from lmshrink.measure import bytes_on_disk, layer_rows, lm_tokens_per_second, totals
from lmshrink.models import LSTMLanguageModel
from lmshrink.models.lstm_lm import Preset
from lmshrink.train.lm import evaluate_ppl, train_lm

# ----------------------------------------------------------------------------------------------- helpers

PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}

# Hand-made PTB-like splits (a leading and trailing space on every line, as in the real files).
TRAIN = " the cat sat \n the dog sat \n the cat ran \n"
VALID = " the cat ran \n dog sat \n"
TEST = " the cat \n"
# Hand count of TRAIN: the 3, <eos> 3, cat 2, sat 2, dog 1, ran 1; ties broken by first appearance.
TRAIN_WORDS = ["the", EOS, "cat", "sat", "dog", "ran"]
TRAIN_COUNTS = [3, 3, 2, 2, 1, 1]


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def write_corpus(root: Path, train: str = TRAIN, valid: str = VALID, test: str = TEST, folder: str = "ptb") -> Path:
    """Write ``root/<folder>/ptb.{train,valid,test}.txt``; returns ``root`` (the data dir)."""
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        (d / PTB_FILES[split]).write_text(text, encoding="utf-8")
    return root


def spec_for(folder: Path, **override) -> CorpusSpec:
    """A PTB-shaped spec pinning the digests of the files in ``folder``."""
    digests = {f: sha((folder / f).read_bytes()) for f in PTB_FILES.values()}
    fields = dict(folder="ptb", files=dict(PTB_FILES), sha256=digests, url="file:///nonexistent/")
    fields.update(override)
    return CorpusSpec(**fields)


def pattern_text(lines: int = 60, words: int = 12, per_line: int = 4) -> str:
    """A learnable corpus: line i is words i, i+1, ..., i+per_line-1 (mod ``words``)."""
    return "".join(" " + " ".join(f"w{(i + j) % words}" for j in range(per_line)) + " \n" for i in range(lines))


def tiny_lm(vocab: int = 50, hidden: int = 8, layers: int = 2, tie: bool = False, seed: int = 0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    return LSTMLanguageModel(vocab, hidden=hidden, layers=layers, tie_weights=tie, init_scale=0.1).eval()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def leftovers(folder: Path) -> list[str]:
    """Hidden temp files/dirs (``.name.*``) that an atomic write must never leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# Training recipe small enough for a 2-core CPU: 60 lines x 5 tokens -> 75 rows of 4 -> 15 windows/epoch,
# 6 epochs = 90 steps (about 0.1 s). Dropout 0 and plain SGD keep a resumed run bit-exact.
TINY_RECIPE = Preset(hidden=16, layers=1, dropout=0.0, init_scale=0.1, bptt=5, batch_size=4, lr=2.0,
                     lr_decay=0.5, decay_after=4, epochs=6, max_grad_norm=5.0)
STEPS_PER_EPOCH = 15


@pytest.fixture
def pattern_corpus(tmp_path):
    text = pattern_text()
    root = write_corpus(tmp_path / "data", train=text, valid=pattern_text(12), test=pattern_text(12))
    return load_corpus("ptb", root, verify=False)


def lm_for(corpus, recipe: Preset = TINY_RECIPE, seed: int = 0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    return LSTMLanguageModel(len(corpus.vocab), recipe.hidden, recipe.layers, recipe.dropout,
                             recipe.tie_weights, init_scale=recipe.init_scale)


def quiet_train(model, corpus, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("precision", "fp32")
    return train_lm(model, corpus, TINY_RECIPE, progress=False, **{"log": lambda *_: None, **kw})


# ------------------------------------------------------------------------------------------------ corpus


def test_vocabulary_counts_and_order(tmp_path):
    c = load_corpus("ptb", write_corpus(tmp_path), verify=False)
    assert c.vocab.words == TRAIN_WORDS
    assert c.vocab.counts == TRAIN_COUNTS
    assert c.vocab.counts_tensor().tolist() == [float(n) for n in TRAIN_COUNTS]
    # one <eos> per line: 3 lines of train
    assert c.vocab.counts[c.vocab.index[EOS]] == TRAIN.count("\n") == 3


def test_splits_encoded_with_train_ids(tmp_path):
    c = load_corpus("ptb", write_corpus(tmp_path), verify=False)
    ids = {w: i for i, w in enumerate(TRAIN_WORDS)}
    enc = lambda text: [ids[w] for line in text.splitlines() for w in [*line.split(), EOS]]  # noqa: E731
    assert c.train.tolist() == enc(TRAIN) == [0, 2, 3, 1, 0, 4, 3, 1, 0, 2, 5, 1]
    assert c.splits["valid"].tolist() == enc(VALID)
    assert c.splits["test"].tolist() == enc(TEST)
    assert all(t.dtype == torch.long for t in c.splits.values())
    assert set(c.checksums) == set(PTB_FILES.values())
    assert c.checksums["ptb.valid.txt"] == sha(VALID)


@pytest.mark.parametrize(
    "files, fragment",
    [
        ({"valid": " the fish \n"}, "'fish'"),  # out-of-vocabulary word in valid
        ({"test": " cat zebra \n"}, "'zebra'"),
        ({"train": ""}, "no words"),  # empty train file
        ({"train": "\n\n"}, "no words"),  # only <eos>
    ],
    ids=["oov-valid", "oov-test", "empty-train", "blank-train"],
)
def test_bad_corpus_files(tmp_path, files, fragment):
    root = write_corpus(tmp_path, **files)
    with pytest.raises(LmshrinkError, match=fragment) as e:
        load_corpus("ptb", root, verify=False)
    bad = PTB_FILES[next(iter(files))]
    assert bad in str(e.value)  # names the file


def test_missing_file_names_expected_path(tmp_path):
    root = write_corpus(tmp_path)
    (root / "ptb" / "ptb.test.txt").unlink()
    with pytest.raises(LmshrinkError) as e:
        load_corpus("ptb", root, verify=False)
    assert str(root / "ptb" / "ptb.test.txt") in str(e.value)
    assert "lmshrink download ptb" in str(e.value)


def test_missing_data_dir_and_unknown_corpus(tmp_path):
    with pytest.raises(LmshrinkError, match="does not exist"):
        load_corpus("ptb", tmp_path / "nope", verify=False)
    with pytest.raises(LmshrinkError, match="unknown corpus 'ptb3'"):
        load_corpus("ptb3", tmp_path, verify=False)


def test_verify_wrong_sha256_names_file(tmp_path):
    root = write_corpus(tmp_path)
    with pytest.raises(LmshrinkError, match="sha256") as e:  # the pinned digests are the real PTB's
        load_corpus("ptb", root, verify=True)
    assert str(root / "ptb" / "ptb.train.txt") in str(e.value)


def test_verify_passes_with_matching_digests(tmp_path, monkeypatch):
    root = write_corpus(tmp_path)
    spec = spec_for(root / "ptb")
    monkeypatch.setitem(CORPORA, "ptb", spec)
    assert load_corpus("ptb", root, verify=True).vocab.words == TRAIN_WORDS
    (root / "ptb" / "ptb.valid.txt").write_text(VALID + " the \n")  # edited after pinning
    with pytest.raises(LmshrinkError, match="ptb.valid.txt"):
        load_corpus("ptb", root, verify=True)


@pytest.mark.parametrize("n, batch, rows", [(20, 4, 5), (23, 4, 5), (10, 1, 10), (9, 2, 4)])
def test_batchify_columns_are_contiguous_chunks(n, batch, rows):
    ids = torch.arange(n)
    data = batchify(ids, batch)
    assert data.shape == (rows, batch)
    for b in range(batch):  # column b is the b-th contiguous chunk of the stream; the tail is dropped
        assert data[:, b].tolist() == list(range(b * rows, (b + 1) * rows))


def test_batchify_rejects_bad_sizes():
    with pytest.raises(LmshrinkError):
        batchify(torch.arange(10), 0)
    with pytest.raises(LmshrinkError, match="too short"):
        batchify(torch.arange(5), 4)  # one row only


@pytest.mark.parametrize("rows, bptt, lengths", [(11, 5, [5, 5]), (12, 5, [5, 5, 1]), (6, 10, [5]), (2, 3, [1])])
def test_bptt_windows_shift_targets_by_one(rows, bptt, lengths):
    data = torch.arange(rows * 3).view(rows, 3)
    windows = list(bptt_windows(data, bptt))
    assert [x.size(0) for x, _ in windows] == lengths
    covered = torch.cat([x for x, _ in windows])
    assert torch.equal(covered, data[: rows - 1])  # every row but the last is an input exactly once
    for x, y in windows:
        assert x.shape == y.shape and x.size(1) == 3
        assert torch.equal(y, x + 3)  # the next row of the same column


# ---------------------------------------------------------------------------------------------- download


@pytest.fixture
def source(tmp_path):
    """A ``file://`` mirror folder with the three tiny files, and the spec pinning their digests."""
    src = write_corpus(tmp_path / "mirror", folder=".").resolve()
    return src, spec_for(src)


def test_download_per_file(tmp_path, source):
    src, spec = source
    dest = tmp_path / "data"
    folder = download_corpus("ptb", dest, url=src.as_uri() + "/", specs={"ptb": spec})
    assert folder == dest / "ptb"
    for f in PTB_FILES.values():
        assert (folder / f).read_bytes() == (src / f).read_bytes()
    assert leftovers(folder) == []
    assert load_corpus("ptb", dest, verify=False).vocab.words == TRAIN_WORDS


def test_download_wrong_digest_writes_nothing(tmp_path, source):
    src, spec = source
    bad = CorpusSpec(**{**spec.__dict__, "sha256": {**spec.sha256, "ptb.train.txt": "0" * 64}})
    dest = tmp_path / "data"
    with pytest.raises(LmshrinkError, match="ptb.train.txt"):
        download_corpus("ptb", dest, url=src.as_uri(), specs={"ptb": bad})
    assert not dest.exists() or list(dest.rglob("*")) == []


@pytest.mark.parametrize("bad_file", ["ptb.valid.txt", "ptb.test.txt"])
def test_download_wrong_digest_later_file(tmp_path, source, bad_file):
    # Files are verified one by one: those before the bad one are verified copies and may stay
    # (a rerun replaces them); the bad one and any temp file must not exist.
    src, spec = source
    bad = CorpusSpec(**{**spec.__dict__, "sha256": {**spec.sha256, bad_file: "f" * 64}})
    dest = tmp_path / "data"
    with pytest.raises(LmshrinkError, match=bad_file):
        download_corpus("ptb", dest, url=src.as_uri(), specs={"ptb": bad})
    folder = dest / "ptb"
    assert not (folder / bad_file).exists()
    assert leftovers(folder) == []
    for f in (folder.iterdir() if folder.exists() else []):
        assert sha(f.read_bytes()) == spec.sha256[f.name]


def test_download_missing_source_is_error(tmp_path, source):
    _, spec = source
    with pytest.raises(LmshrinkError, match="could not download"):
        download_corpus("ptb", tmp_path / "data", url=(tmp_path / "empty").as_uri(), specs={"ptb": spec})


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


TEXTS = {"ptb.train.txt": TRAIN, "ptb.valid.txt": VALID, "ptb.test.txt": TEST}
MEMBERS = {f"tiny/{f}": t.encode() for f, t in TEXTS.items()}  # the zip's layout: tiny/ptb.*.txt


def archive_spec(archive: Path, **override) -> CorpusSpec:
    fields = dict(folder="ptb", files=dict(PTB_FILES), sha256={f: sha(t) for f, t in TEXTS.items()},
                  url=archive.as_uri(), members={f: f"tiny/{f}" for f in TEXTS})
    fields.update(override)
    return CorpusSpec(**fields)


def test_download_archive(tmp_path):
    archive = make_zip(tmp_path / "tiny.zip", {**MEMBERS, "tiny/README": b"other"})
    spec = archive_spec(archive, archive_sha256=sha(archive.read_bytes()))
    folder = download_corpus("ptb", tmp_path / "data", specs={"ptb": spec})
    assert sorted(p.name for p in folder.iterdir()) == sorted(PTB_FILES.values())  # README not extracted
    assert (folder / "ptb.valid.txt").read_text() == VALID
    assert load_corpus("ptb", tmp_path / "data", verify=False).vocab.counts == TRAIN_COUNTS


@pytest.mark.parametrize("case", ["not-a-zip", "truncated-zip", "member-missing", "archive-digest"])
def test_download_bad_archive(tmp_path, case):
    archive = tmp_path / "tiny.zip"
    override = {}
    if case == "not-a-zip":
        archive.write_bytes(b"this is not a zip file at all" * 10)
    elif case == "truncated-zip":
        make_zip(archive, MEMBERS)
        archive.write_bytes(archive.read_bytes()[:-30])  # the central directory's end is cut off
    elif case == "member-missing":
        make_zip(archive, {k: v for k, v in MEMBERS.items() if "test" not in k})
    else:
        make_zip(archive, MEMBERS)
        override["archive_sha256"] = "0" * 64
    dest = tmp_path / "data"
    with pytest.raises(LmshrinkError, match="archive"):
        download_corpus("ptb", dest, specs={"ptb": archive_spec(archive, **override)})
    assert not (dest / "ptb" / "ptb.test.txt").exists()
    assert leftovers(dest / "ptb") == []
    if case != "member-missing":  # (there, train and valid come first and are verified copies)
        assert not dest.exists() or list(dest.rglob("*")) == []


def test_download_failed_write_leaves_no_temp_file(tmp_path, source, monkeypatch):
    src, spec = source

    def failing_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_mod.os, "replace", failing_replace)  # downloads write through io.write_atomic
    dest = tmp_path / "data"
    with pytest.raises((OSError, LmshrinkError)):
        download_corpus("ptb", dest, url=src.as_uri(), specs={"ptb": spec})
    assert leftovers(dest / "ptb") == []


def test_cli_download_with_url(tmp_path, source, monkeypatch, capsys):
    src, spec = source
    dest = tmp_path / "data"
    # the pinned table holds the real PTB digests: the tiny mirror is refused, nothing written
    rc, out, err = run_cli(capsys, "download", "ptb", "--data", dest, "--url", src.as_uri())
    assert rc == 2 and err.startswith("lmshrink download: error:") and len(err.splitlines()) == 1
    assert not (dest / "ptb" / "ptb.train.txt").exists()
    monkeypatch.setitem(CORPORA, "ptb", spec)
    rc, out, err = run_cli(capsys, "download", "ptb", "--data", dest, "--url", src.as_uri())
    assert rc == 0, err
    assert str(dest / "ptb") in out
    for f in PTB_FILES.values():
        assert (dest / "ptb" / f).read_bytes() == (src / f).read_bytes()


# ------------------------------------------------------------------------------------- model directories


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_model_dir_round_trip(tmp_path, tie):
    model = tiny_lm(tie=tie)
    save_model_dir(model, tmp_path / "m")
    loaded, manifest = load_model_dir(tmp_path / "m")
    ref, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
    ids = torch.randint(0, 50, (7, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model(ids)[0])
    assert not loaded.training
    if tie:
        assert loaded.decoder.weight is loaded.encoder.weight
        assert "decoder.weight" not in manifest["tensors"]  # stored once
    else:
        assert loaded.decoder.weight.data_ptr() != loaded.encoder.weight.data_ptr()


def test_manifest_contents(tmp_path):
    model = tiny_lm()
    returned = save_model_dir(model, tmp_path / "m", extra={"note": "hello"})
    manifest = read_manifest(tmp_path / "m")
    assert manifest == json.loads(json.dumps(returned))
    assert manifest["format"] == "lmshrink-model/1"
    assert manifest["architecture"] == {"kind": "lstm_lm", "vocab_size": 50, "hidden": 8, "layers": 2, "dropout": 0.0,
                                        "tie_weights": False, "emb_size": 8, "init_scale": 0.1}
    assert set(manifest["versions"]) >= {"lmshrink", "torch", "numpy", "python"}
    assert manifest["versions"]["torch"] == torch.__version__
    weights = tmp_path / "m" / "model.safetensors"
    assert manifest["weights"] == {"file": "model.safetensors", "sha256": sha(weights.read_bytes()),
                                   "bytes": weights.stat().st_size}
    assert manifest["tensors"]["encoder.weight"] == {"shape": [50, 8], "dtype": "float32"}
    assert manifest["compressed_layers"] == {}
    assert manifest["note"] == "hello"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["manifest.json", "model.safetensors"]


def test_manifest_vocab(tmp_path):
    c = load_corpus("ptb", write_corpus(tmp_path / "data"), verify=False)
    save_model_dir(tiny_lm(vocab=len(c.vocab)), tmp_path / "m", vocab=c.vocab)
    raw = read_manifest(tmp_path / "m")
    blob = (tmp_path / "m" / "vocab.txt.gz").read_bytes()
    assert raw["vocab"] == {"file": "vocab.txt.gz", "size": len(TRAIN_WORDS), "counts": True, "sha256": sha(blob),
                            "bytes": len(blob)}
    assert raw["vocab_sha256"] == sha("\n".join(TRAIN_WORDS))
    # plain text inside, one WORD<TAB>COUNT per line in id order: `zcat vocab.txt.gz` shows it
    assert gzip.decompress(blob).decode() == "".join(f"{w}\t{n}\n" for w, n in zip(TRAIN_WORDS, TRAIN_COUNTS))
    inline = {"words": TRAIN_WORDS, "counts": TRAIN_COUNTS}
    assert read_manifest(tmp_path / "m", vocab=True)["vocab"] == inline
    assert load_model_dir(tmp_path / "m")[1]["vocab"] == inline
    assert bytes_on_disk(tmp_path / "m")["vocab"] == len(blob)
    # the same vocabulary gives the same bytes (gzip's mtime is 0), so model directories compare by digest
    save_model_dir(tiny_lm(vocab=len(c.vocab)), tmp_path / "m2", vocab=c.vocab)
    assert (tmp_path / "m2" / "vocab.txt.gz").read_bytes() == blob
    # a directory written before the vocabulary file (JSON lists in the manifest) loads as before
    old = json.loads((tmp_path / "m2" / "manifest.json").read_text())
    old["vocab"] = inline
    (tmp_path / "m2" / "manifest.json").write_text(json.dumps(old))
    (tmp_path / "m2" / "vocab.txt.gz").unlink()
    assert load_model_dir(tmp_path / "m2")[1]["vocab"] == inline
    old["vocab"] = {"words": TRAIN_WORDS[::-1], "counts": TRAIN_COUNTS}
    (tmp_path / "m2" / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(LmshrinkError, match="does not match vocab_sha256"):
        load_model_dir(tmp_path / "m2")


def _rewrite_vocab(d: Path, text: str, fix_manifest: bool = True):
    """Replace the vocabulary file by ``text`` gzip'd; with ``fix_manifest`` its size and sha256 in the manifest
    follow, so only the content is wrong."""
    blob = gzip.compress(text.encode(), mtime=0)
    (d / "vocab.txt.gz").write_bytes(blob)
    if fix_manifest:
        m = json.loads((d / "manifest.json").read_text())
        m["vocab"].update(bytes=len(blob), sha256=sha(blob))
        (d / "manifest.json").write_text(json.dumps(m))


def _vocab_entry(d: Path, **changes):
    m = json.loads((d / "manifest.json").read_text())
    m["vocab"].update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


def _vocab_text():
    return "".join(f"{w}\t{n}\n" for w, n in zip(TRAIN_WORDS, TRAIN_COUNTS))


@pytest.mark.parametrize(
    "damage, fragment, verify",
    [
        (lambda d: (d / "vocab.txt.gz").unlink(), "vocab.txt.gz is missing", True),
        (lambda d: (d / "vocab.txt.gz").write_bytes((d / "vocab.txt.gz").read_bytes()[:-9]), "truncated or corrupt", True),
        (lambda d: (d / "vocab.txt.gz").write_bytes((d / "vocab.txt.gz").read_bytes()[:-9]), "truncated", False),
        (lambda d: flip_byte(d / "vocab.txt.gz", 20), "sha256 in its manifest", True),
        (lambda d: (d / "vocab.txt.gz").write_bytes(b"not gzip at all"), "not a readable vocabulary file", False),
        (lambda d: _rewrite_vocab(d, _vocab_text().replace("\t2", "\ttwo", 1)), "line 3: expected WORD<TAB>COUNT", True),
        (lambda d: _rewrite_vocab(d, _vocab_text().replace("\t2", "\t\u00b2", 1)), "line 3: expected WORD<TAB>COUNT", True),
        (lambda d: _rewrite_vocab(d, _vocab_text()[:-1]), "last line has no line break", True),
        (lambda d: _rewrite_vocab(d, _vocab_text().replace("cat", "cow")), "does not match vocab_sha256", True),
        (lambda d: _rewrite_vocab(d, _vocab_text() + "extra\t1\n"), "holds 7 words, manifest says 6", True),
        (lambda d: _vocab_entry(d, file="../vocab.txt.gz"), "must be a file name inside", True),
        (lambda d: (d / "vocab.txt.gz").write_bytes(gzip.compress("caf\xe9\t1\n".encode("latin-1"))),
         "not a readable vocabulary file", False),
    ],
    ids=["missing", "truncated", "truncated-noverify", "flipped", "not-gzip", "bad-count", "superscript-count", "no-final-break",
         "other-words", "extra-word", "path-outside", "latin1-bytes"],
)
def test_damaged_vocab_file_is_detected(tmp_path, damage, fragment, verify):
    c = load_corpus("ptb", write_corpus(tmp_path / "data"), verify=False)
    save_model_dir(tiny_lm(vocab=len(c.vocab)), tmp_path / "m", vocab=c.vocab)
    damage(tmp_path / "m")
    with pytest.raises(LmshrinkError, match=fragment):
        load_model_dir(tmp_path / "m", verify=verify)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_model_directories_get_the_permissions_of_plain_files(tmp_path, umask):
    # tempfile makes 0600 files and 0700 directories; renamed into place they kept them, so nobody but the owner
    # could load a model on a shared machine. Now the umask decides, as for any file the user writes.
    old = os.umask(umask)
    try:
        save_model_dir(tiny_lm(vocab=2), tmp_path / "m", vocab=Vocabulary(["a", "b"], [2, 1]))
        io_mod.write_json_atomic(tmp_path / "r.json", {"x": 1})
    finally:
        os.umask(old)
    def mode(p: Path) -> int:
        return p.stat().st_mode & 0o777

    assert mode(tmp_path / "m") == 0o777 & ~umask
    assert {f.name: mode(f) for f in (tmp_path / "m").iterdir()} == {
        n: 0o666 & ~umask for n in ("manifest.json", "model.safetensors", "vocab.txt.gz")}
    assert mode(tmp_path / "r.json") == 0o666 & ~umask


def test_vocab_file_refuses_what_it_cannot_store_and_bounds_decompression(tmp_path, monkeypatch):
    for bad in ("a\tb", "a\nb", "a\rb"):
        with pytest.raises(LmshrinkError, match="without tabs and line breaks"):
            save_model_dir(tiny_lm(vocab=2), tmp_path / "m", vocab=Vocabulary(["ok", bad], [2, 1]))
        assert not (tmp_path / "m").exists() and leftovers(tmp_path) == []
    save_model_dir(tiny_lm(vocab=2), tmp_path / "m", vocab=Vocabulary(["é", "<unk>"], [2, 1]))
    assert load_model_dir(tmp_path / "m")[1]["vocab"] == {"words": ["é", "<unk>"], "counts": [2, 1]}
    # a small file must not expand without bound in memory (a crafted directory: gzip of a long run of one byte)
    _rewrite_vocab(tmp_path / "m", "a" * 100 + "\t1\n")
    monkeypatch.setattr(io_mod, "VOCAB_MAX_BYTES", 12)
    with pytest.raises(LmshrinkError, match="expands to more than 12 bytes"):
        load_model_dir(tmp_path / "m")


def _truncate(d: Path):
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])


def _flip_data(d: Path):
    w = d / "model.safetensors"
    flip_byte(w, w.stat().st_size - 10)  # inside the tensor data, size unchanged


def _flip_header(d: Path):
    flip_byte(d / "model.safetensors", 2)  # the 8-byte header length


@pytest.mark.parametrize(
    "damage, fragment, verify",
    [
        (_truncate, "truncated", True),
        (_truncate, "safetensors", False),  # without the digest check, safetensors itself refuses
        (_flip_data, "sha256", True),
        (_flip_header, "sha256", True),
        (_flip_header, "safetensors", False),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing", True),
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON", True),
        (lambda d: (d / "manifest.json").write_text('{"format": "other"}'), "not an lmshrink manifest", True),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing", True),
    ],
    ids=["truncated", "truncated-noverify", "flipped-data", "flipped-header", "flipped-header-noverify",
         "no-manifest", "bad-json", "foreign-manifest", "no-weights"],
)
def test_damaged_model_dir_is_detected(tmp_path, damage, fragment, verify):
    save_model_dir(tiny_lm(), tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(LmshrinkError, match=fragment):
        load_model_dir(tmp_path / "m", verify=verify)


def test_load_never_unpickles(tmp_path, monkeypatch):
    model = tiny_lm(tie=True)
    save_model_dir(model, tmp_path / "m")

    def forbidden(*a, **k):
        raise AssertionError("a model directory must load without pickle")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, forbidden)
    loaded, _ = load_model_dir(tmp_path / "m")
    assert torch.equal(loaded.encoder.weight, model.encoder.weight)


def _fail_in_save_file(monkeypatch):
    import safetensors.torch

    def partial_save(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", partial_save)


def _fail_in_manifest(monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_mod, "write_json_atomic", boom)


def _fail_at_swap(monkeypatch):
    # Ctrl-C between moving the old directory aside and moving the new one in.
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "m" and Path(src).name.startswith(".m.tmp"):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)


@pytest.mark.parametrize(
    "fail",
    [
        _fail_in_save_file,
        _fail_in_manifest,
        _fail_at_swap,
    ],
    ids=["weights", "manifest", "swap"],
)
def test_failed_save_keeps_previous_dir(tmp_path, monkeypatch, fail):
    old = tiny_lm(seed=0)
    save_model_dir(old, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    fail(monkeypatch)
    with pytest.raises((OSError, KeyboardInterrupt)):
        save_model_dir(tiny_lm(seed=1), tmp_path / "m")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []  # no temp dir, no .m.old
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    loaded, _ = load_model_dir(tmp_path / "m")
    assert torch.equal(loaded.encoder.weight, old.encoder.weight)


def test_save_replaces_existing_dir(tmp_path):
    save_model_dir(tiny_lm(seed=0), tmp_path / "m")
    new = tiny_lm(seed=1)
    save_model_dir(new, tmp_path / "m")
    loaded, _ = load_model_dir(tmp_path / "m")
    assert torch.equal(loaded.decoder.weight, new.decoder.weight)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ measure

# Hand counts for vocab V, hidden H, 2 layers: encoder V*H; each layer ih and hh 4H*H + 4H; decoder V*H + V.
# V=50, H=8: 400 + 4 * 288 + 450 = 2002; tied: the decoder weight is the encoder's, counted once: 1602.
MEASURE_CASES = [
    # tie, dtype, params, bits
    (False, torch.float32, 2002, 2002 * 32),
    (True, torch.float32, 1602, 1602 * 32),
    (False, torch.float16, 2002, 2002 * 16),
    (True, torch.bfloat16, 1602, 1602 * 16),
]


@pytest.mark.parametrize("train", [True, False])
def test_a_state_of_another_batch_is_an_error_not_a_crash(train):
    # torch.lstm on CPU does not check the state's batch against the input's and corrupted the heap (stop 22)
    model = tiny_lm(tie=False).train(train)
    ids = torch.randint(0, 50, (4, 7))  # (T, B) = (4, 7)
    with pytest.raises(LmshrinkError, match=r"needs a state of \(B, H\) = \(7, "):
        model(ids, model.init_state(4))
    logits, state = model(ids, model.init_state(7))
    assert logits.shape == (4, 7, 50) and all(h.shape == (7, model.config["hidden"]) for h, _ in state)


@pytest.mark.parametrize("tie, dtype, params, bits", MEASURE_CASES)
def test_params_and_bits_by_hand(tie, dtype, params, bits):
    model = tiny_lm(tie=tie).to(dtype)
    assert totals(model) == {"params": params, "bits": bits}
    rows = {r["name"]: r for r in layer_rows(model)}
    maps = [f"rnn.layers.{k}.{m}" for k in (0, 1) for m in ("ih", "hh")]
    assert list(rows) == ["encoder", *maps, "decoder"]
    assert rows["encoder"]["params"] == 400
    assert rows["rnn.layers.1.hh"]["params"] == 288
    assert rows["decoder"]["params"] == (50 if tie else 450)
    assert rows["decoder"]["kind"] == ("Linear (tied)" if tie else "Linear")
    for r in rows.values():
        assert r["bytes"] == r["bits"] / 8


def test_bytes_on_disk_match_bits(tmp_path):
    model = tiny_lm(vocab=1000, hidden=32)  # big enough that the safetensors header is well under 2%
    tot = totals(model)
    assert tot["params"] == 1000 * 32 + 4 * (4 * 32 * 32 + 4 * 32) + 1000 * 32 + 1000
    save_model_dir(model, tmp_path / "m")
    size = bytes_on_disk(tmp_path / "m")
    manifest_size = (tmp_path / "m" / "manifest.json").stat().st_size
    assert size == {"weights": (tmp_path / "m" / "model.safetensors").stat().st_size, "manifest": manifest_size,
                    "vocab": 0, "total": size["weights"] + manifest_size}
    expected = tot["bits"] / 8 + manifest_size
    assert abs(size["total"] - expected) / expected < 0.02
    assert size["weights"] >= tot["bits"] / 8  # the file cannot hold fewer bytes than the numbers need


def test_lm_tokens_per_second():
    model = tiny_lm()
    res = lm_tokens_per_second(model, 50, batch_size=2, seq_len=5, warmup=1, repeats=3)
    assert set(res) == {"tokens_per_s", "ms_per_token", "batch_size", "seq_len", "device", "repeats", "threads", "fused"}
    assert res["tokens_per_s"] > 0 and res["ms_per_token"] > 0
    assert res["tokens_per_s"] * res["ms_per_token"] == pytest.approx(1000, rel=1e-9)
    assert (res["batch_size"], res["seq_len"], res["device"], res["repeats"], res["threads"]) == (2, 5, "cpu", 3, 1)


# ----------------------------------------------------------------------------------------------- training


def test_training_reduces_loss(pattern_corpus):
    c = pattern_corpus
    model = lm_for(c)
    before = evaluate_ppl(model, c.train, TINY_RECIPE.batch_size, TINY_RECIPE.bptt)
    res = quiet_train(model, c)
    after = evaluate_ppl(res["model"], c.train, TINY_RECIPE.batch_size, TINY_RECIPE.bptt)
    assert res["steps"] == 6 * STEPS_PER_EPOCH and res["epochs"] == 6
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3, 4, 5, 6]
    assert [h["lr"] for h in res["history"]] == [2.0, 2.0, 2.0, 2.0, 1.0, 0.5]  # Zaremba: halve after epoch 4
    assert before > 0.8 * len(c.vocab)  # an untrained model is near uniform (13 words)
    assert after < 0.25 * before, (before, after)  # the pattern is nearly deterministic: about 13 -> 1.3


def test_max_steps_cuts_the_run(pattern_corpus):
    res = quiet_train(lm_for(pattern_corpus), pattern_corpus, max_steps=4)
    assert res["steps"] == 4 and res["epochs"] == 1


class Interrupt:
    """Wraps ``hooks.after_step``: records global steps and raises KeyboardInterrupt after step ``at``."""

    def __init__(self, at: int | None = None):
        self.at, self.steps = at, []
        self.real = hooks_mod.after_step

    def __call__(self, model, step, total_steps):
        self.real(model, step, total_steps)
        self.steps.append(step)
        if step == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_checkpoints_and_resume_matches_uninterrupted(pattern_corpus, tmp_path, monkeypatch):
    c = pattern_corpus
    straight = quiet_train(lm_for(c), c)  # dropout 0 and stateless SGD: resuming must be bit-exact

    out = tmp_path / "run"
    first = Interrupt(at=2 * STEPS_PER_EPOCH + 7)  # window 7 of epoch 3
    monkeypatch.setattr(hooks_mod, "after_step", first)
    with pytest.raises(KeyboardInterrupt):
        quiet_train(lm_for(c), c, out_dir=out)
    ckpt = Path(str(out) + ".checkpoint")
    assert (ckpt / "model" / "manifest.json").is_file() and (ckpt / "state.safetensors").is_file()
    trainer = json.loads((ckpt / "trainer.json").read_text())
    assert (trainer["global_step"], trainer["epoch"], trainer["step_in_epoch"]) == (37, 2, 7)
    assert [h["epoch"] for h in trainer["history"]] == [1, 2]

    second, logs = Interrupt(), []
    monkeypatch.setattr(hooks_mod, "after_step", second)
    resumed = quiet_train(lm_for(c, seed=123), c, out_dir=out, log=logs.append)  # a different init: replaced
    assert any(line.startswith("resuming from") and "epoch 3, step 7" in line for line in logs), logs
    assert second.steps == list(range(38, 91))  # the global step continues
    assert resumed["steps"] == straight["steps"] == 90
    ref, got = straight["model"].state_dict(), resumed["model"].state_dict()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert [h["valid_ppl"] for h in resumed["history"]] == [h["valid_ppl"] for h in straight["history"]]


def test_ctrl_c_during_validation_keeps_history(pattern_corpus, tmp_path, monkeypatch):
    c = pattern_corpus
    straight = quiet_train(lm_for(c), c)
    calls = []
    real = lm_mod.evaluate_ppl

    def interrupted_eval(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(lm_mod, "evaluate_ppl", interrupted_eval)
    with pytest.raises(KeyboardInterrupt):
        quiet_train(lm_for(c), c, out_dir=tmp_path / "run")
    resumed = quiet_train(lm_for(c), c, out_dir=tmp_path / "run")
    for k, v in straight["model"].state_dict().items():
        assert torch.equal(resumed["model"].state_dict()[k], v), k
    assert [h["epoch"] for h in resumed["history"]] == [h["epoch"] for h in straight["history"]]
    assert resumed["history"][0]["train_ppl"] == pytest.approx(straight["history"][0]["train_ppl"], rel=1e-6)


def _inf_weights(model, recipe):
    with torch.no_grad():
        model.encoder.weight.fill_(float("inf"))
    return recipe


def _huge_lr(model, recipe):
    return Preset(**{**recipe.__dict__, "lr": 1e30})


@pytest.mark.parametrize("break_it", [_inf_weights, _huge_lr], ids=["inf-weights", "lr-1e30"])
def test_nan_loss_is_an_error(pattern_corpus, break_it):
    model = lm_for(pattern_corpus)
    recipe = break_it(model, TINY_RECIPE)
    with pytest.raises(LmshrinkError, match="NaN"):
        train_lm(model, pattern_corpus, recipe, device="cpu", precision="fp32", progress=False, log=lambda *_: None)


def test_evaluate_huge_loss_is_not_a_crash():
    model = tiny_lm()
    with torch.no_grad():
        model.decoder.weight.mul_(1e5)  # finite weights, cross-entropy in the thousands
    ids = torch.randint(0, 50, (200,), generator=torch.Generator().manual_seed(0))
    try:
        ppl = evaluate_ppl(model, ids, 2, 5)
    except LmshrinkError:
        return
    assert ppl == math.inf


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lmshrink {command}")


@pytest.fixture
def corrupt_model_dir(tmp_path):
    save_model_dir(tiny_lm(), tmp_path / "corrupt")
    _flip_data(tmp_path / "corrupt")
    return tmp_path / "corrupt"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--data", "{tmp}/nope", "--preset", "tiny", "--out", "{tmp}/m"], "does not exist"),
        (["train", "--corpus", "ptb9", "--data", "{tmp}", "--preset", "tiny", "--out", "{tmp}/m"], "unknown corpus"),
        (["train", "--data", "{tmp}", "--preset", "huge", "--out", "{tmp}/m"], "unknown preset"),
        (["train", "--data", "{tmp}", "--preset", "tiny", "--out", "{tmp}/corrupt"], "already holds a model"),
        (["eval", "{tmp}/corrupt", "--data", "{tmp}"], "sha256"),
        (["eval", "{tmp}/nope", "--data", "{tmp}"], "does not exist"),
        (["info", "{tmp}/corrupt"], "sha256"),
        (["download", "ptb9", "--data", "{tmp}"], "unknown corpus"),
    ],
    ids=["missing-data", "unknown-corpus", "unknown-preset", "out-exists", "eval-corrupt", "eval-missing",
         "info-corrupt", "download-unknown"],
)
def test_cli_user_errors(tmp_path, corrupt_model_dir, capsys, argv, fragment):
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "train":
        argv += ["--device", "cpu", "--no-progress"]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lmshrink {argv[0]}: error:")
    assert fragment in lines[0]
    assert "Traceback" not in err + out


def test_cli_train_eval_info_round_trip(tmp_path, monkeypatch, capsys):
    # `train` and `eval` verify the corpus against CORPORA (the real PTB digests; there is no option to skip
    # verification), so the test pins its own tiny files' digests there.
    root = write_corpus(tmp_path / "data", train=pattern_text(40), valid=pattern_text(10), test=pattern_text(10))
    monkeypatch.setitem(CORPORA, "ptb", spec_for(root / "ptb"))
    m = tmp_path / "m"
    rc, out, err = run_cli(capsys, "train", "--corpus", "ptb", "--data", root, "--preset", "tiny", "--max-steps", 5,
                           "--out", m, "--device", "cpu", "--no-progress", "--json")
    assert rc == 0, err
    metrics = json.loads(out)
    V = 13  # w0..w11 and <eos>
    params = V * 32 + 2 * 2 * (4 * 32 * 32 + 4 * 32) + V * 32 + V
    assert metrics["steps"] == 5 and metrics["params"] == params and metrics["bits"] == 32 * params
    assert metrics["bytes_on_disk"] == bytes_on_disk(m)["total"]
    assert 1 < metrics["test_ppl"] < 2 * V and math.isfinite(metrics["valid_ppl"])
    assert not Path(str(m) + ".checkpoint").exists()
    manifest = read_manifest(m)
    assert manifest["corpus"] == "ptb" and manifest["config"]["preset"] == "tiny"
    assert manifest["data_checksums"] == {f: sha((root / "ptb" / f).read_bytes()) for f in PTB_FILES.values()}

    rc, out, err = run_cli(capsys, "eval", m, "--data", root, "--split", "both", "--device", "cpu", "--json")
    assert rc == 0, err
    ev = json.loads(out)
    assert {"valid_ppl", "test_ppl", "params", "bytes_on_disk"} <= set(ev)
    assert ev["test_ppl"] == pytest.approx(metrics["test_ppl"], rel=1e-6)  # same weights, batch 1, bptt 10
    assert ev["valid_ppl"] == pytest.approx(metrics["valid_ppl"], rel=1e-6)
    assert (ev["params"], ev["bytes_on_disk"]) == (params, metrics["bytes_on_disk"])
    assert "cell_clip" not in ev
    # a clamp far above the cells' range changes nothing; a tight one changes the perplexity and is recorded
    far = json.loads(run_cli(capsys, "eval", m, "--data", root, "--device", "cpu", "--json", "--cell-clip", "1e6")[1])
    tight = json.loads(run_cli(capsys, "eval", m, "--data", root, "--device", "cpu", "--json", "--cell-clip", "1e-4")[1])
    assert far["test_ppl"] == ev["test_ppl"] and far["cell_clip"] == 1e6
    assert tight["test_ppl"] != ev["test_ppl"] and tight["cell_clip"] == 1e-4
    rc, out, err = run_cli(capsys, "eval", m, "--data", root, "--device", "cpu", "--cell-clip", "0")
    assert rc != 0 and "--cell-clip must be a positive number" in err and out == ""
    # speed at one token per call (generation) beside the default 35-token windows; a window under 1 refused
    gen = json.loads(run_cli(capsys, "eval", m, "--data", root, "--device", "cpu", "--json", "--speed",
                             "--speed-window", "1")[1])
    assert gen["speed"]["seq_len"] == 1 and gen["speed"]["batch_size"] == 1 and gen["tokens_per_s"] > 0
    rc, out, err = run_cli(capsys, "eval", m, "--data", root, "--device", "cpu", "--speed")
    assert rc == 0 and "35 token(s) a call" in out
    rc, out, err = run_cli(capsys, "eval", m, "--data", root, "--device", "cpu", "--speed", "--speed-window", "0")
    assert rc != 0 and "--speed-window must be a whole number of tokens >= 1" in err and out == ""

    rc, out, err = run_cli(capsys, "info", m, "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["total"] == {"params": params, "bits": 32 * params}
    rows = info["layers"]
    assert [r["name"] for r in rows][0] == "encoder" and rows[-1]["name"] == "decoder"
    for r in rows:
        assert set(r) == {"name", "kind", "params", "bits", "bytes"}
        assert r["bits"] == 32 * r["params"] and r["bytes"] == r["bits"] / 8
    assert sum(r["params"] for r in rows) == params
    assert info["bytes_on_disk"]["total"] == metrics["bytes_on_disk"]


def test_cli_compress_then_eval_and_info_show_the_dense_source(tmp_path, monkeypatch, capsys):
    root = write_corpus(tmp_path / "data", train=pattern_text(40), valid=pattern_text(10), test=pattern_text(10))
    monkeypatch.setitem(CORPORA, "ptb", spec_for(root / "ptb"))
    m, c, p = tmp_path / "m", tmp_path / "c", tmp_path / "p"
    assert run_cli(capsys, "train", "--corpus", "ptb", "--data", root, "--preset", "tiny", "--max-steps", 5,
                   "--out", m, "--device", "cpu", "--no-progress", "--json")[0] == 0
    dense = json.loads(run_cli(capsys, "eval", m, "--data", root, "--device", "cpu", "--json")[1])

    rc, out, err = run_cli(capsys, "compress", m, "--method", "svd", "--ratio", 2, "--out", c, "--data", root,
                           "--device", "cpu", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert {r["module"] for r in res["report"]} == {"encoder", "decoder"}
    side = res["side_by_side"]
    assert side["dense"]["test_ppl"] == pytest.approx(dense["test_ppl"], rel=1e-6)
    assert side["compressed"]["bits"] < side["dense"]["bits"] and side["compressed"]["bytes_on_disk"] == bytes_on_disk(c)["total"]
    assert side["dense"]["tokens_per_s"] > 0 and side["compressed"]["tokens_per_s_vs_dense"] > 0  # timed in paired rounds

    ev = json.loads(run_cli(capsys, "eval", c, "--data", root, "--device", "cpu", "--json")[1])
    assert ev["dense"]["test_ppl"] == pytest.approx(dense["test_ppl"], rel=1e-6)
    assert ev["test_ppl"] == pytest.approx(side["compressed"]["test_ppl"], rel=1e-6)
    info = json.loads(run_cli(capsys, "info", c, "--json")[1])
    assert info["dense"]["bits"] == side["dense"]["bits"]
    assert {r["name"]: r["kind"] for r in info["layers"]}["decoder"] == "low_rank_linear"
    rc, out, _ = run_cli(capsys, "info", c)
    assert rc == 0 and "this/dense" in out
    assert f"vocabulary {(Path(c) / 'vocab.txt.gz').stat().st_size:,})" in out  # the footer counts every file

    # a TOML plan; then plans that must be refused without leaving an output behind
    plan = tmp_path / "plan.toml"
    plan.write_text('[layers."rnn.layers.*.hh"]\nmethod = "svd"\nratio = 2\n')
    rc, out, err = run_cli(capsys, "compress", m, "--plan", plan, "--out", p, "--data", root, "--device", "cpu", "--json")
    assert rc == 0, err
    assert sorted(r["module"] for r in json.loads(out)["report"]) == ["rnn.layers.0.hh", "rnn.layers.1.hh"]
    for bad, message in (('[layers."nothing.here"]\nmethod = "svd"\nratio = 2\n', "matches no"),
                         ('[layers."encoder"]\nmethod = "nope"\n', "unknown method"),
                         ('[layers."encoder"]\nmethod = "svd"\nratio = 0.5\n', "ratio")):
        plan.write_text(bad)
        rc, out, err = run_cli(capsys, "compress", m, "--plan", plan, "--out", tmp_path / "bad", "--data", root,
                               "--device", "cpu")
        assert rc == 2 and err.count("\n") == 1 and err.startswith("lmshrink compress: error:"), err
        assert message in err, err
        assert not (tmp_path / "bad").exists() and leftovers(tmp_path) == []


def test_manifest_json_is_readable_and_compact(tmp_path):
    from lmshrink.io import dumps_readable

    data = {"words": ["the", "é", '"q"'], "counts": [3, 2, 1], "nested": {"curve": [1.5, 2.5], "rows": [{"a": 1}, {"b": []}]},
            "empty": {}, "none": None, "tensor": torch.tensor([1, 2]), "path": Path("/x")}
    text = dumps_readable(data)
    back = json.loads(text)
    assert back == {**data, "tensor": [1, 2], "path": "/x"}
    lines = text.splitlines()
    assert ' "words": ["the", "\\u00e9", "\\"q\\""],' in lines and ' "counts": [3, 2, 1],' in lines  # one line each
    assert '  "rows": [' in lines and '   {' in lines  # lists of objects stay indented
    model = tiny_lm()
    save_model_dir(model, tmp_path / "m", vocab=Vocabulary.from_tokens([f"w{i % 50}" for i in range(500)]))
    manifest = (tmp_path / "m" / "manifest.json").read_text()
    assert "w49" not in manifest  # the words live in vocab.txt.gz, not in the manifest
    assert manifest.count("\n") < 200


def test_train_and_save_initialises_from_its_seed_whatever_ran_before(tmp_path, monkeypatch):
    # the initial weights must follow --seed, not the state of the global RNG when training was called
    import lmshrink.workflows as wf

    real = wf.load_corpus
    monkeypatch.setattr(wf, "load_corpus", lambda name, data, verify=True: real(name, data, verify=False))  # made-up corpus
    root = write_corpus(tmp_path / "data", train=pattern_text(), valid=pattern_text(12), test=pattern_text(12))
    weights = []
    for k, noise in enumerate((1, 12345)):
        torch.manual_seed(noise)  # someone drew random numbers before
        torch.rand(7)
        wf.train_and_save("ptb", root, "tiny", tmp_path / f"m{k}", max_steps=2, device="cpu", precision="fp32",
                          seed=3, progress=False, log=lambda *_: None)
        weights.append(load_model_dir(tmp_path / f"m{k}")[0].state_dict())
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def test_finetune_starts_at_the_given_rate_and_divides_it_by_ten_when_validation_worsens(pattern_corpus):
    """Retraining's schedule (GroupReduce Sec. 3.4): the first rate is ``lr`` (default recipe lr / 10); an epoch
    that does not improve validation perplexity is undone and the rate divided by 10."""
    model = lm_for(pattern_corpus)
    quiet = dict(device="cpu", progress=False, log=lambda *_: None)
    out = lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 2, lr=0.5, **quiet)
    h = out["history"]
    assert [x.get("lr") for x in h] == [None, 0.5, 0.5 if h[1]["valid_ppl"] < h[0]["valid_ppl"] else 0.05]
    # a rate so high that the epoch diverges: its weights are dropped and the best seen are kept
    model = lm_for(pattern_corpus)
    before = lm_mod.evaluate_ppl(model, pattern_corpus.splits["valid"], TINY_RECIPE.batch_size, TINY_RECIPE.bptt)
    out = lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 2, lr=1e4, **quiet)
    assert out["history"][1] == {"epoch": 1, "lr": 1e4, "valid_ppl": None, "diverged": True}
    assert out["history"][2]["lr"] == pytest.approx(1e3)
    assert out["valid_ppl"] <= before
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(LmshrinkError, match="learning rate"):
            lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 1, lr=bad, **quiet)


def test_finetune_patience_goes_on_from_worse_epochs_before_the_rate_drops(pattern_corpus, monkeypatch, tmp_path):
    """``patience=1``: one epoch that does not improve is kept (training goes on from its weights at the same rate);
    a second in a row divides the rate and training goes on from its weights too (ReduceLROnPlateau-style); a
    diverged epoch divides it and returns to the best weights at once. With 0 (the paper's rule) every epoch that
    does not improve is undone and divides the rate. The best weights are returned. A cut within patience resumes
    from the worse epoch's weights, not the best; a bad patience is refused."""
    script = iter(())
    started = []  # (rate, the weights each epoch started from: the marker the epoch before left)

    def fake_train(model, *a, lr_fn, **k):
        w = next(model.parameters())
        started.append((lr_fn(0), float(w.detach().view(-1)[0])))
        epoch, v = next(script)
        with torch.no_grad():
            w.fill_(epoch)  # this epoch's weights
        return {"valid_ppl": v}

    monkeypatch.setattr(lm_mod, "train_lm", fake_train)
    monkeypatch.setattr(lm_mod, "evaluate_ppl", lambda *a, **k: 100.0)
    quiet = {"device": "cpu", "progress": False, "log": lambda *_: None}

    def run(patience, valid, **kw):
        nonlocal script
        script = iter(enumerate(valid, start=1))
        started.clear()
        model = lm_for(pattern_corpus)
        with torch.no_grad():
            next(model.parameters()).fill_(0)
        out = lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, len(valid), lr=1.0, patience=patience, **kw)
        return out, list(started)

    out, seen = run(1, [90, 95, 93, 80], **quiet)
    assert seen == [(1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (pytest.approx(0.1), 3.0)]
    assert out["valid_ppl"] == 80 and float(next(out["model"].parameters()).detach().view(-1)[0]) == 4.0
    out, seen = run(1, [90, 95, 96], **quiet)  # the best weights (epoch 1's) are what comes back
    assert out["valid_ppl"] == 90 and float(next(out["model"].parameters()).detach().view(-1)[0]) == 1.0
    out, seen = run(2, [90, math.inf, 85], **quiet)  # diverged: back to the best weights, rate divided at once
    assert seen == [(1.0, 0.0), (1.0, 1.0), (pytest.approx(0.1), 1.0)] and out["history"][2]["diverged"]
    out, seen = run(0, [90, 95, 93, 80], **quiet)
    assert seen == [(1.0, 0.0), (1.0, 1.0), (pytest.approx(0.1), 1.0), (pytest.approx(0.01), 1.0)]
    # cut after epoch 2 (a worse epoch within patience): the resumed epoch 3 starts from epoch 2's weights
    ckpt = tmp_path / "ft"

    def stop_in_epoch_3(msg):
        if msg.startswith("finetune epoch 3/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(1, [90, 95, 93, 80], device="cpu", progress=False, log=stop_in_epoch_3, checkpoint_dir=ckpt)
    assert json.loads((ckpt / "finetune.json").read_text())["bad_epochs"] == 1 and (ckpt / "current.safetensors").exists()
    script = iter([(3, 93), (4, 80)])
    started.clear()
    model = lm_for(pattern_corpus)
    lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 4, lr=1.0, patience=1, checkpoint_dir=ckpt, **quiet)
    assert started == [(1.0, 2.0), (pytest.approx(0.1), 3.0)]
    for bad in (-1, 1.5, True):
        with pytest.raises(LmshrinkError, match="finetune patience"):
            lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 1, lr=0.5, patience=bad, **quiet)


def test_finetune_dropout_drops_while_retraining_only(pattern_corpus, monkeypatch):
    """``dropout``: every nn.Dropout runs at that rate in the retraining epochs (a different result from no
    dropout), evaluation never drops, and the model leaves with its own rate back; a bad rate is refused."""
    quiet = {"device": "cpu", "progress": False, "precision": "fp32", "log": lambda *_: None}
    seen = []
    real = lm_mod.train_lm

    def spy(model, *a, **k):
        seen.append(model.drop.p)
        return real(model, *a, **k)

    monkeypatch.setattr(lm_mod, "train_lm", spy)
    plain = lm_mod.finetune_lm(lm_for(pattern_corpus), pattern_corpus, TINY_RECIPE, 2, lr=0.5, **quiet)
    assert seen == [0.0, 0.0]
    seen.clear()
    model = lm_for(pattern_corpus)
    dropped = lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 2, lr=0.5, dropout=0.3, **quiet)
    assert seen == [0.3, 0.3] and model.drop.p == 0.0
    assert dropped["history"][1]["valid_ppl"] != pytest.approx(plain["history"][1]["valid_ppl"], rel=1e-6)
    for bad in (-0.1, 1.0, True):
        with pytest.raises(LmshrinkError, match="finetune dropout"):
            lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 1, lr=0.5, dropout=bad, **quiet)


def test_finetune_cut_after_an_epoch_resumes_there_and_ends_as_one_uninterrupted_call(pattern_corpus, tmp_path):
    """A retraining cut by a time limit (vocab.py's runs on lent GPUs) resumes after its last finished epoch, from
    the saved weights, best weights and rate: the result equals an uninterrupted run's, and the folder goes."""
    quiet = dict(device="cpu", progress=False, precision="fp32")
    whole = lm_mod.finetune_lm(lm_for(pattern_corpus), pattern_corpus, TINY_RECIPE, 3, lr=0.5, log=lambda *_: None,
                               **quiet)

    def stop_in_epoch_2(msg):
        if msg.startswith("finetune epoch 2/"):
            raise KeyboardInterrupt  # the time limit, after epoch 2 ran but before its state was kept

    ckpt = tmp_path / "ft"
    with pytest.raises(KeyboardInterrupt):
        lm_mod.finetune_lm(lm_for(pattern_corpus), pattern_corpus, TINY_RECIPE, 3, lr=0.5, log=stop_in_epoch_2,
                           checkpoint_dir=ckpt, **quiet)
    assert json.loads((ckpt / "finetune.json").read_text())["epochs_done"] == 1
    said = []
    resumed = lm_mod.finetune_lm(lm_for(pattern_corpus), pattern_corpus, TINY_RECIPE, 3, lr=0.5, log=said.append,
                                 checkpoint_dir=ckpt, **quiet)
    assert said[0].startswith("finetune: resuming after epoch 1/3")
    assert resumed["history"] == whole["history"]
    a, b = whole["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not ckpt.exists()
    # a checkpoint of other settings or of another model is refused in one line, not loaded half-way
    ckpt.mkdir()
    settings = {"lr": 0.5, "epochs": 3, "seed": 0}
    lm_mod._FinetuneCheckpoint(ckpt).save(lm_for(pattern_corpus).state_dict(), {"settings": settings, "epochs_done": 1})
    with pytest.raises(LmshrinkError, match="made with other settings"):
        lm_mod.finetune_lm(lm_for(pattern_corpus), pattern_corpus, TINY_RECIPE, 3, lr=0.05, log=lambda *_: None,
                           checkpoint_dir=ckpt, **quiet)
    other = LSTMLanguageModel(len(pattern_corpus.vocab), 8, 1)
    with pytest.raises(LmshrinkError, match="does not fit this model"):
        lm_mod.finetune_lm(other, pattern_corpus, TINY_RECIPE, 3, lr=0.5, log=lambda *_: None, checkpoint_dir=ckpt,
                           **quiet)


def test_finetune_under_a_cuda_graph_needs_cuda_and_fp32(pattern_corpus):
    """``finetune_lm(cuda_graph=True)`` refuses a CPU device or autocast in one clear error before any training
    (the GPU equality of graph-replayed and eager steps is in tests/test_gpu_graph_training.py)."""
    model = lm_for(pattern_corpus)
    with pytest.raises(LmshrinkError, match="needs a CUDA device"):
        lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 1, lr=0.5, device="cpu", precision="fp32",
                           progress=False, log=lambda *_: None, cuda_graph=True)


def test_graph_ready_names_layers_a_cuda_graph_cannot_capture():
    """CSR-stored pruned layers train eagerly under ``--cuda-graph`` (asked up front, not tried and failed)."""
    from lmshrink.compress import Plan, compress, make_config
    from lmshrink.train.graphed import graph_ready

    torch.manual_seed(0)
    model = LSTMLanguageModel(50, 8, 1)
    assert graph_ready(model) is None
    compress(model, Plan({"decoder": make_config("prune", density=0.3)}))
    assert "SparseLinear" in graph_ready(model)


def test_finetune_of_a_pruned_model_trains_it_in_its_training_form_and_returns_it_csr(pattern_corpus):
    """finetune_lm retrains CSR layers as dense x fixed pattern (graph-capturable) and hands them back CSR, with
    the same non-zero count and a lower validation perplexity than before retraining."""
    from lmshrink.compress import Plan, compress, make_config
    from lmshrink.layers.sparse import SparseLinear

    model = lm_for(pattern_corpus)
    compress(model, Plan({"decoder": make_config("prune", density=0.3)}))
    nnz, pattern = model.decoder.nnz, model.decoder.pattern().clone()
    seen = []
    out = lm_mod.finetune_lm(model, pattern_corpus, TINY_RECIPE, 2, lr=0.5, device="cpu", progress=False,
                             precision="fp32", log=seen.append)
    assert out["model"] is model and isinstance(model.decoder, SparseLinear)
    assert model.decoder.nnz == nnz and torch.equal(model.decoder.pattern(), pattern)
    assert out["valid_ppl"] < out["history"][0]["valid_ppl"]


def test_baselines_counts_other_gpu_processes_and_says_so_only_when_nvidia_smi_can_tell(tmp_path, monkeypatch,
                                                                                         bench_module):
    """A baseline trained beside another script's processes (vocab.py on the same GPU) ran slower: baselines.py
    counts them from nvidia-smi, and says 'unknown' where nvidia-smi does not list our own runs (a container)."""
    import os

    from lmshrink.measure import other_gpu_processes

    bl = bench_module("baselines")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    fake.write_text("#!/bin/sh\nprintf '101\\n202\\n303\\n'\n")
    fake.chmod(0o755)
    assert other_gpu_processes({101}) == 2
    assert other_gpu_processes({999}) is None  # our own run is not listed: nvidia-smi cannot see our ids
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert other_gpu_processes({101}) is None
    run = {"concurrent_runs": ["a", "b"]}
    assert bl._beside("a", run) == "b"
    assert bl._beside("a", {**run, "other_gpu_processes": 3}) == "b, up to 3 other GPU process(es)"
    assert bl._beside("a", {"concurrent_runs": ["a"], "other_gpu_processes": 0}) == "nothing"
    assert bl._beside("a", {"concurrent_runs": ["a"], "other_gpu_processes": None}) == "other GPU processes: unknown"
    assert bl._beside("a", {}) == "?"


def test_cli_compress_with_pruning_and_retraining_saves_csr_layers(tmp_path, monkeypatch, capsys):
    """``lmshrink compress --method prune --finetune-epochs 1``: the retraining runs on the training form and the
    saved model holds CSR layers again, which eval and info read back; a result no smaller than dense is warned of."""
    root = write_corpus(tmp_path / "data", train=pattern_text(40), valid=pattern_text(10), test=pattern_text(10))
    monkeypatch.setitem(CORPORA, "ptb", spec_for(root / "ptb"))
    m, c = tmp_path / "m", tmp_path / "c"
    assert run_cli(capsys, "train", "--corpus", "ptb", "--data", root, "--preset", "tiny", "--max-steps", 5,
                   "--out", m, "--device", "cpu", "--no-progress", "--json")[0] == 0
    rc, out, err = run_cli(capsys, "compress", m, "--method", "prune", "--ratio", 2, "--finetune-epochs", 1, "--out", c,
                           "--data", root, "--device", "cpu", "--json")
    assert rc == 0, err
    res = json.loads(out)
    side = res["side_by_side"]
    # this tiny model's vocabulary layers are a small share of it, and the manifest grows more than pruning saves:
    # the result is not smaller on disk, and the command says so on stderr (and in the JSON), not silently
    assert side["compressed"]["bytes_on_disk"] >= side["dense"]["bytes_on_disk"]
    assert "not smaller on disk" in res["warnings"][0]  # a speed warning may follow: timing is not asserted here
    assert "lmshrink compress: warning: the compressed model is not smaller on disk" in err
    kinds = {r["name"]: r["kind"] for r in json.loads(run_cli(capsys, "info", c, "--json")[1])["layers"]}
    assert kinds["encoder"] == "sparse_embedding" and kinds["decoder"] == "sparse_linear"
    ev = json.loads(run_cli(capsys, "eval", c, "--data", root, "--device", "cpu", "--json")[1])
    assert ev["test_ppl"] == pytest.approx(side["compressed"]["test_ppl"], rel=1e-6)
    # retraining against the dense source (--distill) runs and is recorded in the manifest
    d = tmp_path / "d"
    rc, out, err = run_cli(capsys, "compress", m, "--method", "svd", "--ratio", 2, "--finetune-epochs", 1, "--distill",
                           1, "--finetune-patience", 1, "--out", d, "--data", root, "--device", "cpu", "--json")
    assert rc == 0, err
    finetune = json.loads((d / "manifest.json").read_text())["compression"]["finetune"]
    assert finetune["distill"] == 1.0 and finetune["patience"] == 1 and len(finetune["history"]) == 2
    rc, out, err = run_cli(capsys, "compress", m, "--method", "svd", "--ratio", 2, "--finetune-epochs", 1,
                           "--finetune-patience", -1, "--out", tmp_path / "never", "--data", root, "--device", "cpu")
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "finetune patience" in err
    assert not (tmp_path / "never").exists()


def test_shrink_warnings_name_a_model_that_is_not_smaller_or_clearly_slower():
    from lmshrink.workflows import shrink_warnings

    side = {"dense": {"bytes_on_disk": 1000, "tokens_per_s": 100.0}, "compressed": {"bytes_on_disk": 400, "tokens_per_s": 95.0}}
    assert shrink_warnings(side) == []  # smaller, and 0.95x is within timing noise
    side["compressed"].update(bytes_on_disk=1000, tokens_per_s=80.0)
    w = shrink_warnings(side, "cuda")
    assert len(w) == 2 and "not smaller on disk" in w[0] and "(1,000 vs 1,000 bytes)" in w[0]
    assert "0.80x its dense source's tokens/s on cuda" in w[1]
    assert shrink_warnings({"dense": {}, "compressed": {"bytes_on_disk": 5}}) == []  # nothing measured: no verdict
    # the paired ratio of interleaved rounds, where `compress` measured one, decides over the two medians
    paired = {"dense": {"tokens_per_s": 100.0}, "compressed": {"tokens_per_s": 100.0, "tokens_per_s_vs_dense": 0.85}}
    want = ("the compressed model ran at 0.85x its dense source's tokens/s on cpu here "
            "(median of interleaved rounds; `benchmarks/speed.py` times methods side by side)")
    assert shrink_warnings(paired) == [want]
    paired["compressed"]["tokens_per_s_vs_dense"] = 0.95
    assert shrink_warnings(paired) == []


def test_finetune_of_a_pruned_model_resumes_from_its_training_form_checkpoint(pattern_corpus, tmp_path):
    """The epoch checkpoints of a pruned model hold its training form (dense x pattern); a cut retraining resumes
    from them and ends as an uninterrupted one, CSR again."""
    from lmshrink.compress import Plan, compress, make_config
    from lmshrink.layers.sparse import SparseLinear

    def pruned():
        model = lm_for(pattern_corpus)
        compress(model, Plan({"decoder": make_config("prune", density=0.3)}))
        return model

    quiet = {"device": "cpu", "progress": False, "precision": "fp32"}
    whole = lm_mod.finetune_lm(pruned(), pattern_corpus, TINY_RECIPE, 3, lr=0.5, log=lambda *_: None, **quiet)

    def stop_in_epoch_2(msg):
        if msg.startswith("finetune epoch 2/"):
            raise KeyboardInterrupt

    ckpt = tmp_path / "ft"
    cut = pruned()
    with pytest.raises(KeyboardInterrupt):
        lm_mod.finetune_lm(cut, pattern_corpus, TINY_RECIPE, 3, lr=0.5, log=stop_in_epoch_2, checkpoint_dir=ckpt, **quiet)
    assert isinstance(cut.decoder, SparseLinear)  # even a cut retraining hands the model back in its stored form
    resumed = lm_mod.finetune_lm(pruned(), pattern_corpus, TINY_RECIPE, 3, lr=0.5, log=lambda *_: None,
                                 checkpoint_dir=ckpt, **quiet)
    assert resumed["history"] == whole["history"]
    assert isinstance(resumed["model"].decoder, SparseLinear)
    assert torch.equal(resumed["model"].decoder.dense_weight(), whole["model"].decoder.dense_weight())
