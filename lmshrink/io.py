"""Model directories: ``model.safetensors`` + ``manifest.json``, written atomically, loaded without pickles.

The manifest holds the architecture, every compressed layer's type and constructor spec, the sha256 and
size of the weights file and of the vocabulary file (``vocab.txt.gz``: the words in id order and their
counts), versions, and whatever the caller adds (config, data checksums, metrics). Loading rebuilds the dense skeleton, swaps in empty compressed
layers from their specs, then fills every tensor from safetensors with ``strict`` checking, after
verifying the weights file's digest: a corrupt or truncated file is reported, never half-loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import shutil
import tempfile
import zlib
from pathlib import Path

import torch
import torch.nn as nn

from .errors import LmshrinkError, check

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
VOCAB = "vocab.txt.gz"
VOCAB_MAX_BYTES = 1 << 30  # decompressed; all 400k GloVe words with counts are ~5 MB: a larger one is not ours
FORMAT = "lmshrink-model/1"


def versions() -> dict:
    import numpy

    from . import __version__

    return {"lmshrink": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _umask() -> int:
    # POSIX can only read the umask by setting it; the window is two system calls, and lmshrink writes files
    # from one thread
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, directory: bool = False) -> None:
    """Give a file or directory made by ``tempfile`` the permissions a plain ``open``/``mkdir`` would have.

    Why: mkstemp and mkdtemp create 0600 files and 0700 directories, and renaming keeps them, so every model
    directory was readable by its owner only (a model shared on a multi-user machine could not be loaded).
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it over ``path``: a reader sees the old file or
    the new one, never half of one, and a failure leaves no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        _usual_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data) -> None:
    write_atomic(path, dumps_readable(data) + "\n")


def dumps_readable(data, indent: int = 1, _level: int = 0) -> str:
    """JSON indented for people, except lists of plain values (a vocabulary, counts, a curve), which stay on one
    line: one word per line would make a 10k-word manifest 40% larger for nothing."""
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(data, (torch.Tensor, Path)):
        data = _json_default(data)
    if isinstance(data, dict) and data:
        items = [f"{inner}{json.dumps(str(k))}: {dumps_readable(v, indent, _level + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(data, (list, tuple)) and data and any(isinstance(v, (dict, list, tuple)) for v in data):
        return "[\n" + ",\n".join(inner + dumps_readable(v, indent, _level + 1) for v in data) + "\n" + pad + "]"
    return json.dumps(data, default=_json_default)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serializable: {type(o).__name__}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, each stored once: a weight shared by tied modules keeps its first name."""
    seen: dict[tuple, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        out[name] = t.detach().to("cpu").contiguous()
    return out


def compressed_layers(model: nn.Module) -> dict[str, dict]:
    from .layers import CompressedLayer

    return {n: {"type": m.layer_type, "spec": m.spec(), "config": getattr(m, "method_config", None)}
            for n, m in model.named_modules() if isinstance(m, CompressedLayer)}


def save_model_dir(model: nn.Module, out_dir: str | Path, vocab=None, extra: dict | None = None) -> dict:
    """Write ``out_dir`` atomically (a temp dir beside it, then rename). Returns the manifest."""
    check(hasattr(model, "arch"), f"model {type(model).__name__} has no arch(); register it with lmshrink.models")
    fields = {"architecture": model.arch(), "compressed_layers": compressed_layers(model)}
    words = None if vocab is None else (vocab.words, vocab.counts)
    return write_dir_atomic(out_dir, state_for_saving(model), fields, extra, vocab=words)


def vocab_fingerprint(words: list[str]) -> str:
    """sha256 of the words in id order, joined by line breaks: two models share ids exactly when it matches."""
    return hashlib.sha256("\n".join(words).encode()).hexdigest()


def vocab_file_bytes(words: list[str], counts: list[int] | None = None) -> bytes:
    """The vocabulary file: gzip'd UTF-8 text, one word per line in id order, ``word<TAB>count`` where counts
    are kept, every line ending in a line break.

    Why a file and not JSON lists in the manifest: as JSON a word costs about 15 bytes (quotes, separators,
    escapes, its count in digits), and a compressed text classifier's 19k-word vocabulary outweighed its
    weights (MR, 10% of the embedding kept: 429 KB of weights, 404 KB of manifest). Gzip'd text costs a
    third of that, and ``zcat vocab.txt.gz | head`` still shows it. mtime 0: the same words give the same bytes.
    """
    check(counts is None or len(counts) == len(words), f"{len(counts or [])} counts for {len(words)} words")
    bad = next((w for w in words if not isinstance(w, str) or "\t" in w or "\n" in w or "\r" in w), None)
    check(bad is None, f"vocabulary word {bad!r} is not a string without tabs and line breaks, which the "
                       f"vocabulary file ({VOCAB}) needs")
    lines = words if counts is None else [f"{w}\t{int(c)}" for w, c in zip(words, counts)]
    return gzip.compress("".join(f"{line}\n" for line in lines).encode("utf-8"), compresslevel=9, mtime=0)


def read_vocab(model_dir: str | Path, manifest: dict, verify: bool = True) -> tuple[list[str], list[int] | None] | None:
    """``(words, counts or None)`` of a model directory, or None where it has no vocabulary.

    Reads the vocabulary file, its size and sha256 checked against the manifest (``verify``), or, in directories
    written before the file existed, the JSON lists inline in the manifest. Either way the words must match
    ``vocab_sha256``: a wrong vocabulary would silently map every id to another word.
    """
    entry = manifest.get("vocab")
    if entry is None:
        return None
    d = Path(model_dir)
    check(isinstance(entry, dict), f"{d / MANIFEST}: 'vocab' is not an object")
    if "file" in entry:
        name = entry["file"]
        check(isinstance(name, str) and name == Path(name).name and name not in ("", ".", ".."),
              f"{d / MANIFEST}: vocabulary file {name!r} must be a file name inside the model directory")
        path = d / name
        check(path.is_file(), f"{path} is missing")
        raw = path.read_bytes()
        if verify:
            check(len(raw) == entry.get("bytes"),
                  f"{path} has {len(raw)} bytes, manifest says {entry.get('bytes')} (truncated or corrupt)")
            check(hashlib.sha256(raw).hexdigest() == entry.get("sha256"),
                  f"{path} does not match the sha256 in its manifest (corrupt file)")
        words, counts = _parse_vocab_file(path, raw, with_counts=bool(entry.get("counts")))
        check(len(words) == entry.get("size"), f"{path} holds {len(words)} words, manifest says {entry.get('size')}")
    else:  # inline, as written before the vocabulary file
        words, counts = entry.get("words"), entry.get("counts")
        check(isinstance(words, list) and all(isinstance(w, str) for w in words),
              f"{d / MANIFEST}: vocabulary words are not a list of strings")
        check(counts is None or (isinstance(counts, list) and len(counts) == len(words)),
              f"{d / MANIFEST}: vocabulary counts do not match its {len(words)} words")
        counts = None if counts is None else [int(c) for c in counts]
    if "vocab_sha256" in manifest:
        check(vocab_fingerprint(words) == manifest["vocab_sha256"],
              f"{d}: the vocabulary does not match vocab_sha256 in its manifest (corrupt or edited)")
    return list(words), counts


def _parse_vocab_file(path: Path, raw: bytes, with_counts: bool) -> tuple[list[str], list[int] | None]:
    dec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip container
    try:
        # bounded: a small crafted file must not expand to gigabytes in memory
        data = dec.decompress(raw, VOCAB_MAX_BYTES)
        check(not dec.unconsumed_tail, f"{path} expands to more than {VOCAB_MAX_BYTES:,} bytes; not a vocabulary file")
        check(dec.eof, f"{path} is truncated (its gzip stream ends early)")
        text = data.decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as e:
        raise LmshrinkError(f"{path} is not a readable vocabulary file ({e})") from None
    lines = text.split("\n")
    check(lines[-1] == "", f"{path}: the last line has no line break (truncated file)")
    lines.pop()
    if not with_counts:
        return lines, None
    words, counts = [], []
    for i, line in enumerate(lines, 1):
        word, tab, count = line.rpartition("\t")
        check(tab and count.isascii() and count.isdigit(), f"{path}, line {i}: expected WORD<TAB>COUNT, got {line[:60]!r}")
        words.append(word)
        counts.append(int(count))
    return words, counts


def write_dir_atomic(out_dir: str | Path, tensors: dict[str, torch.Tensor], fields: dict,
                     extra: dict | None = None, vocab: tuple[list[str], list[int] | None] | None = None) -> dict:
    """Write ``model.safetensors`` + ``manifest.json`` (+ ``vocab.txt.gz`` where ``vocab`` = (words, counts or
    None) is given) into a temp dir beside ``out_dir``, then rename it into place.

    The manifest holds ``fields``, the vocabulary file's entry and fingerprint, the tensors' shapes and dtypes,
    the weights' sha256 and the versions, then ``extra``. A failure at any point leaves the previous ``out_dir``
    (if any) as it was and no temp dir behind.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    check(not out_dir.exists() or out_dir.is_dir(), f"{out_dir} exists and is not a directory")
    vocab_blob = None if vocab is None else vocab_file_bytes(*vocab)  # bad words refused before anything is written
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        _usual_mode(tmp, directory=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        _usual_mode(tmp / WEIGHTS)  # safetensors may create it private, as tempfile does
        if vocab_blob is not None:
            (tmp / VOCAB).write_bytes(vocab_blob)
            fields = {**fields, "vocab": {"file": VOCAB, "size": len(vocab[0]), "counts": vocab[1] is not None,
                                          "sha256": hashlib.sha256(vocab_blob).hexdigest(), "bytes": len(vocab_blob)},
                      "vocab_sha256": vocab_fingerprint(vocab[0])}
        manifest = {
            "format": FORMAT,
            **fields,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()},
            "weights": {"file": WEIGHTS, "sha256": _sha256(tmp / WEIGHTS), "bytes": (tmp / WEIGHTS).stat().st_size},
            "versions": versions(),
        }
        manifest.update(extra or {})
        write_json_atomic(tmp / MANIFEST, manifest)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old, out_dir)  # interrupted between the two renames: the previous model goes back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(model_dir: str | Path, vocab: bool = False, verify: bool = True) -> dict:
    """The manifest of a model directory. With ``vocab``, its ``"vocab"`` entry is the vocabulary itself,
    ``{"words": [...], "counts": [...]}`` (counts where kept), read by :func:`read_vocab`, whichever way the
    directory stores it; without, the entry as written (what :func:`update_manifest` must write back)."""
    d = Path(model_dir)
    check(d.is_dir(), f"model directory {d} does not exist")
    path = d / MANIFEST
    check(path.is_file(), f"{path} is missing: {d} is not an lmshrink model directory")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmshrinkError(f"{path} is corrupt (not valid JSON: {e})") from None
    check(isinstance(manifest, dict) and manifest.get("format") == FORMAT,
          f"{path} is not an lmshrink manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if vocab and manifest.get("vocab") is not None:
        words, counts = read_vocab(d, manifest, verify=verify)
        manifest["vocab"] = {"words": words, **({} if counts is None else {"counts": counts})}
    return manifest


def update_manifest(model_dir: str | Path, **fields) -> dict:
    manifest = read_manifest(model_dir)
    manifest.update(fields)
    write_json_atomic(Path(model_dir) / MANIFEST, manifest)
    return manifest


def load_model_dir(model_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True):
    """Rebuild the model saved in ``model_dir``. Returns ``(model, manifest)``; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .compress import rebind_tied
    from .layers import LAYER_TYPES
    from .models import build_model

    d = Path(model_dir)
    manifest = read_manifest(d, vocab=True, verify=verify)
    wpath = d / manifest.get("weights", {}).get("file", WEIGHTS)
    check(wpath.is_file(), f"{wpath} is missing")
    if verify:
        expected = manifest["weights"].get("sha256")
        size = wpath.stat().st_size
        if size != manifest["weights"].get("bytes"):
            raise LmshrinkError(f"{wpath} has {size} bytes, manifest says {manifest['weights'].get('bytes')} (truncated or corrupt)")
        if _sha256(wpath) != expected:
            raise LmshrinkError(f"{wpath} does not match the sha256 in its manifest (corrupt file)")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise LmshrinkError(f"{wpath} is not a readable safetensors file: {e}") from None
    with torch.device("meta"):
        model = build_model(manifest["architecture"])
    for name, entry in manifest.get("compressed_layers", {}).items():
        cls = LAYER_TYPES.get(entry["type"])
        if cls is None:
            _import_all_layers()
            cls = LAYER_TYPES.get(entry["type"])
        check(cls is not None, f"{d}: unknown compressed layer type {entry['type']!r} for {name!r} (newer lmshrink?)")
        with torch.device("meta"):
            layer = cls.from_spec(entry["spec"])
        if entry.get("config") is not None:
            layer.method_config = entry["config"]
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    model = model.to_empty(device="cpu")
    _retie_dense(model)
    rebind_tied(model)
    missing, unexpected = _load_state(model, tensors)
    check(not unexpected, f"{wpath}: unexpected tensors {', '.join(sorted(unexpected)[:5])}")
    check(not missing, f"{wpath}: missing tensors {', '.join(sorted(missing)[:5])} (truncated or mismatched file)")
    model.eval()
    return model.to(device), manifest


def _retie_dense(model: nn.Module) -> None:
    if getattr(model, "config", {}).get("tie_weights") and isinstance(getattr(model, "decoder", None), nn.Linear) \
            and isinstance(getattr(model, "encoder", None), nn.Embedding):
        model.decoder.weight = model.encoder.weight


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor]):
    expected = model.state_dict(keep_vars=True)
    unexpected = [k for k in tensors if k not in expected]
    ptr_of = {}
    missing = []
    with torch.no_grad():
        for k, t in expected.items():
            if k in tensors:
                src = tensors[k]
                if tuple(src.shape) != tuple(t.shape):
                    raise LmshrinkError(f"tensor {k}: file has shape {tuple(src.shape)}, model expects {tuple(t.shape)}")
                t.copy_(src.to(t.dtype) if t.dtype.is_floating_point == src.dtype.is_floating_point else src)
                ptr_of[t.data_ptr()] = k
            elif t.data_ptr() not in ptr_of:  # a tied alias is filled through its first name
                missing.append(k)
    return missing, unexpected


def _import_all_layers() -> None:
    from . import methods  # noqa: F401 - method modules import their layer modules
